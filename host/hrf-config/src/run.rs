//! `hrf run` pipelines (docs/ALGORITHM.md; docs/ARCHITECTURE.md §7): the YAML as written
//! (`RunFile`, unknown keys refused), `--set key.path=value` overrides, and the validated
//! `RunPipeline` (paths resolved against the YAML's folder, defaults filled, cross-field rules
//! checked, every problem reported at once). `run_schema` is the JSON Schema of the file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ddpo::{
    AdvantageMode, AdvantageSettings, HrfSettings, Method, SamplingSettings, StartIndex,
    StepReduction, TrainingSettings, WindowCluster,
};
use crate::limits::{self, canonical, ModelShape, RunSizes};
use crate::model::{ModelSource, ModelSpec, ModelSpecRaw};
use crate::pretrain::AdamWSettings;
use crate::reward::{ImageInput, StageSpec};
use crate::{ConfigError, ConfigErrors};

// ---------------------------------------------------------------------------------------------
// The file as written.

/// A run pipeline as written in YAML.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "hrf run pipeline")]
pub struct RunFile {
    /// The UNet to fine-tune: a diffusers folder (`weights`) or a named architecture (`config`),
    /// and the device.
    pub model: ModelSpecRaw,
    /// diffusers scheduler fields (scheduler_config.json's), used when the model folder has no
    /// scheduler_config.json.
    #[serde(default)]
    pub scheduler: Option<Map<String, Value>>,
    /// The DDIM chain and the epoch's samples: steps, η, guidance, batch size, batches per epoch.
    #[serde(default)]
    pub sampling: SamplingSettings,
    /// The update: method, epochs, AdamW, clipping, train batches; HRF's settings in `hrf`.
    #[serde(default)]
    pub training: TrainingRaw,
    /// Default: `group` for hrf and hrf-d; else `per-prompt` when prompts are given, else `epoch`.
    #[serde(default)]
    pub advantages: Option<AdvantagesRaw>,
    /// A list of prompts, or `{file: prompts.txt}` (one per line; blank lines and `#` comments
    /// skipped; relative to the YAML file). Omitted: unconditional sampling.
    #[serde(default)]
    pub prompts: Option<PromptsRaw>,
    /// At least one; the training reward is their weighted sum.
    pub rewards: Vec<RewardRaw>,
    /// Fixed-seed evaluations during training and at the end, and how the best checkpoint is
    /// chosen.
    #[serde(default)]
    pub evaluation: EvaluationRaw,
    /// The run's name, output folder, seed and checkpoints.
    pub run: RunSettingsRaw,
}

/// `training:` as written. Fields left out take the method's defaults (docs/ALGORITHM.md §6).
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingRaw {
    /// `ddpo-is`, `ddpo-sf`, `hrf` or `hrf-d`.
    pub method: Method,
    /// Epochs to train (at most 1,000,000; epochs × samples per epoch at most 1,000,000,000).
    pub epochs: usize,
    /// AdamW's settings.
    pub optimizer: OptimizerRaw,
    /// Gradient-norm clip (pre-clip norm is logged).
    pub max_grad_norm: f64,
    /// Passes over the epoch's samples (ddpo-is; ddpo-sf takes 1).
    pub inner_epochs: usize,
    /// Samples per train batch (one optimiser step per `grad_accum` of them); at most 65,536,
    /// and the batch's activations must fit the memory estimate (see `sampling.batch_size`).
    pub batch_size: usize,
    /// Train batches whose gradients add up to one optimiser step.
    pub grad_accum: usize,
    /// Advantage clip. Default: 5 for ddpo-*, 2.5 for hrf/hrf-d (there multiplied by the
    /// window fraction f).
    pub adv_clip: Option<f64>,
    /// PPO ratio clip range (hrf/hrf-d: multiplied by f).
    pub clip_range: f64,
    /// Fraction of each sample's trainable steps trained per inner epoch.
    pub timestep_fraction: f64,
    /// Default: `mean` for ddpo-* (ddpo-pytorch), `sum` for hrf/hrf-d (the HRF authors).
    pub step_reduction: Option<StepReduction>,
    /// Weight of the KL-to-base regulariser (0: off).
    pub kl_coef: f64,
    /// ddpo-* ablations: train only steps k..N−1 (`{fixed: k}`) or from a k drawn per sample
    /// and epoch (`uniform`); trajectories still start from pure noise.
    pub start: Option<StartIndex>,
    /// hrf / hrf-d: groups, the window schedule and HRF-D's candidate search.
    pub hrf: Option<HrfRaw>,
}

impl Default for TrainingRaw {
    fn default() -> Self {
        let d = TrainingSettings::default();
        Self {
            method: d.method,
            epochs: d.epochs,
            optimizer: OptimizerRaw {
                lr: d.optimizer.lr,
                weight_decay: None,
                beta1: d.optimizer.beta1,
                beta2: d.optimizer.beta2,
                eps: d.optimizer.eps,
            },
            max_grad_norm: d.max_grad_norm,
            inner_epochs: d.inner_epochs,
            batch_size: d.batch_size,
            grad_accum: d.grad_accum,
            adv_clip: None,
            clip_range: d.clip_range,
            timestep_fraction: d.timestep_fraction,
            step_reduction: None,
            kl_coef: d.kl_coef,
            start: None,
            hrf: None,
        }
    }
}

/// AdamW as written.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerRaw {
    /// Learning rate: positive.
    pub lr: f64,
    /// Default: 1e-4 for ddpo-*, 1e-3 for hrf/hrf-d.
    pub weight_decay: Option<f64>,
    /// Decay of the first moment, in [0, 1).
    pub beta1: f64,
    /// Decay of the second moment, in [0, 1).
    pub beta2: f64,
    /// Added to the second moment's root: positive.
    pub eps: f64,
}

impl Default for OptimizerRaw {
    fn default() -> Self {
        TrainingRaw::default().optimizer
    }
}

/// `training.hrf:` as written.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HrfRaw {
    /// Members per anchor group; the epoch's samples must split into whole groups.
    pub group_size: usize,
    /// The window schedule: clusters of start indices, each active for a fraction of the
    /// epochs (fractions summing to 1) or a number of epochs (summing to `training.epochs`).
    /// Default: [0, N/2) then [N/2, N), half the epochs each.
    pub window: Option<Vec<WindowClusterRaw>>,
    /// HRF-D: candidate starts range(0, N, stride); at least 3 candidates.
    pub stride: usize,
    /// HRF-D: noise copies per anchor (default: group_size).
    pub copies: Option<usize>,
    /// HRF-D: weight of the diversity loss D in the choice of k.
    pub beta: f64,
}

impl Default for HrfRaw {
    fn default() -> Self {
        Self {
            group_size: 4,
            window: None,
            stride: 2,
            copies: None,
            beta: 0.5,
        }
    }
}

/// One cluster of the window schedule as written: `range: [a, b]` (half-open) or `steps: [...]`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowClusterRaw {
    /// Start indices a..b (half-open), with b ≤ sampling.steps.
    #[serde(default)]
    pub range: Option<[usize; 2]>,
    /// Start indices as a list, each < sampling.steps.
    #[serde(default)]
    pub steps: Option<Vec<usize>>,
    /// A fraction of the epochs, or a whole number of them.
    pub epochs: f64,
}

/// `advantages:` as written; `mode` defaults by whether there are prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AdvantagesRaw {
    /// `epoch` (standardise over the epoch), `per-prompt` (ddpo-pytorch's per-prompt tracker) or
    /// `group` (HRF's anchor groups). Default: see `advantages`.
    pub mode: Option<AdvantageMode>,
    /// Per-prompt tracker: rewards kept per prompt.
    pub buffer_size: usize,
    /// Per-prompt tracker: below this many, the epoch's statistics are used.
    pub min_count: usize,
}

impl Default for AdvantagesRaw {
    fn default() -> Self {
        let d = AdvantageSettings::default();
        Self {
            mode: None,
            buffer_size: d.buffer_size,
            min_count: d.min_count,
        }
    }
}

#[derive(Debug, Clone, PartialEq, JsonSchema)]
#[serde(untagged)]
pub enum PromptsRaw {
    List(Vec<String>),
    File(PromptsFile),
}

// By hand rather than `untagged`, whose error ("did not match any variant") says nothing, and
// which would buffer the value and lose the place of errors inside it.
impl<'de> Deserialize<'de> for PromptsRaw {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = PromptsRaw;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of prompts or {file: path}")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<PromptsRaw, A::Error> {
                Deserialize::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(PromptsRaw::List)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<PromptsRaw, A::Error> {
                Deserialize::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(PromptsRaw::File)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PromptsFile {
    /// A text file, one prompt per line, relative to the YAML file.
    pub file: String,
}

/// The reward kinds: the built-ins by name, and `onnx` for a model chain given by path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RewardKindName {
    /// JPEG (q95) size in kB, negated: smaller files score higher.
    JpegCompressibility,
    /// JPEG (q95) size in kB.
    JpegIncompressibility,
    /// The testbed's aesthetic head on the reward classifier's features.
    Aesthetic,
    /// The reward classifier's probability of the prompted class (needs prompts).
    PromptAlignment,
    /// A chain of ONNX models (`stages`), their input preparation (`input`) and the score taken
    /// from the last output (`score`).
    Onnx,
    /// A WebAssembly component implementing `hrf:reward` (wit/reward.wit), run sandboxed.
    Wasm,
    /// A shared library implementing plugins/native/include/hrf_reward.h; runs with hrf's
    /// rights, so it needs `trust: native` here and `--allow-native` on the command line.
    Native,
    /// A long-lived child process speaking hrf's framing over stdin/stdout (e.g. Python with
    /// torch); the same two opt-ins as `native`.
    Process,
}

impl RewardKindName {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::JpegCompressibility => "jpeg-compressibility",
            Self::JpegIncompressibility => "jpeg-incompressibility",
            Self::Aesthetic => "aesthetic",
            Self::PromptAlignment => "prompt-alignment",
            Self::Onnx => "onnx",
            Self::Wasm => "wasm",
            Self::Native => "native",
            Self::Process => "process",
        }
    }
}

/// One entry of `rewards:` as written.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RewardRaw {
    /// A built-in reward, or `onnx`, `wasm`, `native`, `process`.
    pub kind: RewardKindName,
    /// Required for `onnx`; built-ins default to their kind. Unique, [A-Za-z0-9._-]+.
    #[serde(default)]
    pub name: Option<String>,
    /// Weight in the combined reward: finite, non-zero.
    #[serde(default = "one")]
    pub weight: f64,
    /// `onnx` only: the models, in order; paths relative to the YAML file.
    #[serde(default)]
    pub stages: Option<Vec<StageSpec>>,
    /// `onnx` only: how images become the first model's input.
    #[serde(default)]
    pub input: Option<ImageInput>,
    /// `onnx` only: `{column: N}` (default column 0) or `prompted-class`.
    #[serde(default)]
    pub score: Option<ScoreRaw>,
    /// `onnx` with `score: prompted-class`: the class names of the output columns; default: the
    /// model folder's classes.json.
    #[serde(default)]
    pub classes: Option<Vec<String>>,
    /// Images per reward call (at most 65,536).
    #[serde(default = "default_reward_batch")]
    pub batch_size: usize,
    /// `wasm` and `native`: the plugin file, relative to the YAML file.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// `wasm` and `native`: handed to the plugin (`configure` / `create`) as JSON (default `{}`).
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Value>")]
    pub config: Option<serde_json::Value>,
    /// `wasm` only: seconds one call may take before it is stopped (default 5).
    #[serde(default)]
    pub timeout_s: Option<f64>,
    /// `wasm` only: the plugin's memory cap in MiB (default 256); growing past it traps.
    #[serde(default)]
    pub memory_mb: Option<u64>,
    /// `wasm` only: fuel (≈ instructions) per call; default unlimited.
    #[serde(default)]
    pub fuel: Option<u64>,
    /// `wasm` only: the sha256 (hex) the component file must have.
    #[serde(default)]
    pub sha256: Option<String>,
    /// `wasm` only: ONNX models the plugin may run through the host (`name: path`, paths
    /// relative to the YAML file), for plugins of the `reward-plugin-onnx` world.
    #[serde(default)]
    pub models: Option<BTreeMap<String, PathBuf>>,
    /// `native` and `process`: must be `native`, the pipeline's half of the two opt-ins.
    #[serde(default)]
    pub trust: Option<String>,
    /// `process` only: the program and its arguments, run in the YAML file's folder.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// What a failure of this reward does: `fail` (default) stops the run with the error;
    /// `skip` leaves out of training the samples it could not score (a failed call skips the
    /// call's samples, a NaN or infinite value its sample) and logs why.
    #[serde(default)]
    pub on_error: OnError,
    /// `log` trains on ln(score) instead of the score: for a probability (prompt alignment,
    /// an `onnx` classifier) that is the log-likelihood, which still separates samples where
    /// the probability saturates near 1. Scores must be ≥ 0; below 1e-6 they count as 1e-6.
    #[serde(default)]
    pub transform: Transform,
}

/// How a reward's scores are turned before they are weighted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Transform {
    /// The score as the reward gives it.
    #[default]
    Identity,
    /// ln(max(score, 1e-6)); a negative score is an error.
    Log,
}

/// What a failing reward does to the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Stop with the error (nothing is trained on the failed batch).
    #[default]
    Fail,
    /// Skip the samples the reward could not score.
    Skip,
}

fn one() -> f64 {
    1.0
}

fn default_reward_batch() -> usize {
    256
}

/// What an ONNX reward scores: a fixed output column, or the column of the prompted class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum ScoreRaw {
    /// The score is this column of the last model's output.
    Column(usize),
    /// The score is the column of the class the sample's prompt names.
    PromptedClass,
}

/// `evaluation:` as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EvaluationRaw {
    /// Evaluate every this many epochs; 0: only the final evaluation.
    pub every: usize,
    /// Seed of the fixed evaluation noise (the same for every run compared).
    pub seed: u64,
    /// Samples per evaluation during training.
    pub samples: usize,
    /// Samples of the final evaluation.
    pub final_samples: usize,
    /// Images per evaluation sampling batch (at most 65,536; see `sampling.batch_size` for the
    /// tensor and memory checks).
    pub batch_size: usize,
    /// DDIM η of evaluation sampling.
    pub eta: f64,
    /// Guidance weight; default: sampling.guidance.
    pub guidance: Option<f64>,
    /// How the best checkpoint is chosen.
    pub best_by: BestBy,
}

impl Default for EvaluationRaw {
    fn default() -> Self {
        Self {
            every: 5,
            seed: 1234,
            samples: 128,
            final_samples: 1000,
            batch_size: 64,
            eta: 0.0,
            guidance: None,
            best_by: BestBy::Reward,
        }
    }
}

/// The rule that picks the best checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum BestBy {
    /// The highest evaluation reward.
    #[default]
    Reward,
    /// The highest evaluation reward among evaluations whose Vendi score is at least
    /// `min_vendi_ratio` × the base model's.
    #[serde(rename = "reward-with-diversity")]
    RewardAndDiversity {
        /// The least Vendi score kept, as a fraction of the base model's (≥ 0).
        min_vendi_ratio: f64,
    },
}

/// `run:` as written.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunSettingsRaw {
    /// The run's name, [A-Za-z0-9._-]+; its folder is `<output>/<name>-YYYYMMDD-HHMMSS`, a
    /// file name of at most 255 bytes (NAME_MAX), so the name has at most 239.
    pub name: String,
    /// Where run folders go, relative to the YAML file. The folder's path, the run folder and
    /// 128 bytes for the files in it must fit 4,096 bytes (PATH_MAX), each part 255.
    #[serde(default = "default_output")]
    pub output: String,
    /// Seed of the training noise and shuffles.
    #[serde(default)]
    pub seed: u64,
    /// Save a checkpoint every this many epochs.
    #[serde(default = "default_save_every")]
    pub save_every: usize,
    /// Checkpoints kept (best/ and final/ apart).
    #[serde(default = "default_keep")]
    pub keep: usize,
}

fn default_output() -> String {
    "runs".into()
}

fn default_save_every() -> usize {
    5
}

fn default_keep() -> usize {
    2
}

// ---------------------------------------------------------------------------------------------
// The validated pipeline.

/// A validated run pipeline: paths resolved (absolute), every default filled.
#[derive(Debug, Clone, PartialEq)]
pub struct RunPipeline {
    /// The YAML file, as given.
    pub file: PathBuf,
    /// Its text, as given (before `--set` overrides).
    pub text: String,
    pub model: ModelSpec,
    /// A mapping of diffusers scheduler fields, when the YAML gives one.
    pub scheduler: Option<Value>,
    pub sampling: SamplingSettings,
    /// `seed` is `run.seed`.
    pub training: TrainingSettings,
    pub advantages: AdvantageSettings,
    /// Empty: unconditional.
    pub prompts: Vec<String>,
    pub rewards: Vec<RewardSpec>,
    pub evaluation: EvaluationSettings,
    pub run: RunSettings,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RewardSpec {
    pub name: String,
    pub weight: f64,
    pub kind: RewardKind,
    pub batch_size: usize,
    pub on_error: OnError,
    pub transform: Transform,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RewardKind {
    /// A built-in reward, by its kind (`jpeg-compressibility`, `aesthetic`, …).
    Builtin(String),
    Onnx {
        /// Model paths resolved against the YAML's folder.
        stages: Vec<StageSpec>,
        input: ImageInput,
        score: ScoreSpec,
    },
    Wasm(WasmSpec),
    Native(NativeSpec),
    Process(ProcessSpec),
}

/// A `kind: process` reward, validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessSpec {
    pub command: Vec<String>,
    /// The folder it runs in: the YAML file's.
    pub dir: PathBuf,
    pub config: serde_json::Value,
    pub timeout_s: f64,
    pub trust: Option<String>,
}

/// A `kind: native` reward, validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NativeSpec {
    /// Resolved against the YAML's folder.
    pub path: PathBuf,
    pub config: serde_json::Value,
    /// `trust: native` was given.
    pub trust: Option<String>,
}

/// A `kind: wasm` reward, validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WasmSpec {
    /// Resolved against the YAML's folder.
    pub path: PathBuf,
    pub config: serde_json::Value,
    pub timeout_s: f64,
    pub memory_mb: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Resolved against the YAML's folder.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ScoreSpec {
    Column(usize),
    /// The prompted class's column; the class names when the YAML gives them, else the model
    /// folder's classes.json.
    PromptedClass(Option<Vec<String>>),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvaluationSettings {
    pub every: usize,
    pub seed: u64,
    pub samples: usize,
    pub final_samples: usize,
    pub batch_size: usize,
    pub eta: f64,
    pub guidance: f64,
    pub best_by: BestBy,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSettings {
    pub name: String,
    /// Resolved against the YAML's folder.
    pub output: PathBuf,
    pub seed: u64,
    pub save_every: usize,
    pub keep: usize,
}

impl RunPipeline {
    /// The pipeline with every default filled, in the YAML's shape (written to the run folder
    /// as pipeline.resolved.*). It is itself a valid pipeline: loading it gives this one back.
    /// `Serialize` writes the same, with the sections in the file's order.
    pub fn resolved(&self) -> Value {
        serde_json::to_value(self).expect("plain data")
    }

    /// The resolved pipeline as YAML text: what a run folder keeps as pipeline.resolved.yaml.
    pub fn resolved_yaml(&self) -> String {
        let mut text = serde_saphyr::to_string(self).expect("plain data");
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text
    }
}

/// A run folder's resolved pipeline (pipeline.resolved.yaml) as a tree. Older hrf wrote it as
/// JSON, which reads as YAML too.
pub fn read_resolved(path: &Path) -> Result<Value, ConfigErrors> {
    crate::read_yaml(path)
}

/// The serialized shape of a `RunPipeline`: the YAML's, every default written out.
#[derive(Serialize)]
struct Resolved<'a> {
    model: ResolvedModel<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scheduler: Option<&'a Value>,
    sampling: &'a SamplingSettings,
    training: &'a TrainingSettings,
    advantages: &'a AdvantageSettings,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    prompts: &'a [String],
    rewards: Vec<ResolvedReward<'a>>,
    evaluation: &'a EvaluationSettings,
    run: &'a RunSettings,
}

#[derive(Serialize)]
struct ResolvedModel<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    weights: Option<&'a Path>,
    #[serde(skip_serializing_if = "Option::is_none")]
    config: Option<&'a str>,
    device: &'a str,
}

#[derive(Serialize)]
struct ResolvedReward<'a> {
    kind: &'a str,
    name: &'a str,
    weight: f64,
    batch_size: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    stages: Option<&'a [StageSpec]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    input: Option<&'a ImageInput>,
    #[serde(skip_serializing_if = "Option::is_none")]
    score: Option<ScoreRaw>,
    #[serde(skip_serializing_if = "Option::is_none")]
    classes: Option<&'a [String]>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    wasm: Option<&'a WasmSpec>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    native: Option<&'a NativeSpec>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    process: Option<&'a ProcessSpec>,
}

impl Serialize for RunPipeline {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (weights, config) = match &self.model.source {
            ModelSource::Folder(p) => (Some(p.as_path()), None),
            ModelSource::Named(n) => (None, Some(n.as_str())),
        };
        let rewards = self
            .rewards
            .iter()
            .map(|r| {
                let mut out = ResolvedReward {
                    kind: "onnx",
                    name: &r.name,
                    weight: r.weight,
                    batch_size: r.batch_size,
                    stages: None,
                    input: None,
                    score: None,
                    classes: None,
                    wasm: None,
                    native: None,
                    process: None,
                };
                match &r.kind {
                    RewardKind::Builtin(kind) => out.kind = kind,
                    RewardKind::Wasm(w) => {
                        out.kind = "wasm";
                        out.wasm = Some(w);
                    }
                    RewardKind::Native(n) => {
                        out.kind = "native";
                        out.native = Some(n);
                    }
                    RewardKind::Process(pr) => {
                        out.kind = "process";
                        out.process = Some(pr);
                    }
                    RewardKind::Onnx {
                        stages,
                        input,
                        score,
                    } => {
                        out.stages = Some(stages);
                        out.input = Some(input);
                        match score {
                            ScoreSpec::Column(c) => out.score = Some(ScoreRaw::Column(*c)),
                            ScoreSpec::PromptedClass(classes) => {
                                out.score = Some(ScoreRaw::PromptedClass);
                                out.classes = classes.as_deref();
                            }
                        }
                    }
                }
                out
            })
            .collect();
        Resolved {
            model: ResolvedModel {
                weights,
                config,
                device: &self.model.device,
            },
            scheduler: self.scheduler.as_ref(),
            sampling: &self.sampling,
            training: &self.training,
            advantages: &self.advantages,
            prompts: &self.prompts,
            rewards,
            evaluation: &self.evaluation,
            run: &self.run,
        }
        .serialize(s)
    }
}

// ---------------------------------------------------------------------------------------------
// Loading.

/// Reads, overrides (`--set key.path=value`, applied in order) and validates a run pipeline.
/// Every problem comes back at once, with line:column where the value is in the file.
pub fn load_with_overrides(file: &Path, sets: &[String]) -> Result<RunPipeline, ConfigErrors> {
    let text = crate::read_text(file)?;
    parse(file, &text, sets)
}

/// Reads and validates a run pipeline.
pub fn load(file: &Path) -> Result<RunPipeline, ConfigErrors> {
    load_with_overrides(file, &[])
}

/// `load_with_overrides` on text already read from `file` (relative paths resolve against
/// `file`'s folder).
pub fn parse(file: &Path, text: &str, sets: &[String]) -> Result<RunPipeline, ConfigErrors> {
    let schema = run_schema();
    crate::overrides::parse_validated(file, text, sets, Some(&schema), |raw: RunFile| {
        raw.validate(file, text.to_string())
    })
}

/// Problems found so far, each naming its field.
struct Problems<'a> {
    file: &'a Path,
    list: Vec<ConfigError>,
}

impl Problems<'_> {
    fn push(&mut self, field: impl AsRef<str>, message: impl Into<String>) {
        self.list
            .push(ConfigError::field(self.file, field.as_ref(), message));
    }

    /// `v` must be finite and satisfy `ok`; `rule` says what is expected.
    fn real(&mut self, field: impl AsRef<str>, v: f64, ok: impl Fn(f64) -> bool, rule: &str) {
        if !(v.is_finite() && ok(v)) {
            self.push(field, format!("must be {rule}, got {v}"));
        }
    }

    /// `v` must be at most `max`; `what` says what it counts. False when it is not.
    fn at_most(&mut self, field: impl AsRef<str>, v: usize, max: usize, what: &str) -> bool {
        if v > max {
            self.push(
                field,
                format!(
                    "must be ≤ {} ({what}), got {}",
                    crate::thousands(max as u64),
                    crate::thousands(v as u64)
                ),
            );
        }
        v <= max
    }

    fn at_least(&mut self, field: impl AsRef<str>, v: usize, min: usize) {
        if v < min {
            let rule = if min == 1 {
                "positive".to_string()
            } else {
                format!("≥ {min}")
            };
            self.push(field, format!("must be {rule}, got {v}"));
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl RunFile {
    /// Checks the pipeline read from `file` (relative paths resolve against its folder) and
    /// fills its defaults. Errors name their field; `load` adds their line:column.
    pub fn validate(self, file: &Path, text: String) -> Result<RunPipeline, ConfigErrors> {
        let mut p = Problems {
            file,
            list: Vec::new(),
        };
        // Resolved paths are absolute so that the resolved pipeline stands on its own.
        // One spelling per path (`configs/../models/x` is `models/x`), so that runs of one
        // pipeline started from different folders compare alike.
        let abs_file = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
        let base = canonical(abs_file.parent().unwrap_or(Path::new(".")));
        let at_base = |rel: &Path| canonical(&base.join(rel));

        let model = match self.model.validate(&abs_file) {
            Ok(mut m) => {
                if let ModelSource::Folder(dir) = &m.source {
                    m.source = ModelSource::Folder(canonical(dir));
                }
                Some(m)
            }
            Err(e) => {
                for mut err in e.0 {
                    err.file = file.to_path_buf();
                    p.list.push(err);
                }
                None
            }
        };

        let s = &self.sampling;
        if s.steps < 2 {
            p.push("sampling.steps", format!("must be ≥ 2, got {}", s.steps));
        }
        p.at_least("sampling.batch_size", s.batch_size, 1);
        p.at_least("sampling.batches_per_epoch", s.batches_per_epoch, 1);
        p.real(
            "sampling.eta",
            s.eta,
            |v| (0.0..=1.0).contains(&v),
            "in [0, 1]",
        );
        p.real("sampling.guidance", s.guidance, |v| v >= 0.0, "≥ 0");
        p.real("sampling.sigma_min", s.sigma_min, |v| v >= 0.0, "≥ 0");

        let t = &self.training;
        p.at_least("training.epochs", t.epochs, 1);
        p.at_least("training.inner_epochs", t.inner_epochs, 1);
        p.at_least("training.batch_size", t.batch_size, 1);
        p.at_least("training.grad_accum", t.grad_accum, 1);
        let o = &t.optimizer;
        p.real("training.optimizer.lr", o.lr, |v| v > 0.0, "positive");
        if let Some(wd) = o.weight_decay {
            p.real("training.optimizer.weight_decay", wd, |v| v >= 0.0, "≥ 0");
        }
        let unit = |v: f64| (0.0..1.0).contains(&v);
        p.real("training.optimizer.beta1", o.beta1, unit, "in [0, 1)");
        p.real("training.optimizer.beta2", o.beta2, unit, "in [0, 1)");
        p.real("training.optimizer.eps", o.eps, |v| v > 0.0, "positive");
        p.real(
            "training.max_grad_norm",
            t.max_grad_norm,
            |v| v > 0.0,
            "positive",
        );
        let hier = t.method.is_hierarchical();
        let adv_clip = t.adv_clip.unwrap_or(if hier { 2.5 } else { 5.0 });
        p.real("training.adv_clip", adv_clip, |v| v > 0.0, "positive");
        let weight_decay = o.weight_decay.unwrap_or(if hier { 1e-3 } else { 1e-4 });
        let step_reduction = t.step_reduction.unwrap_or(if hier {
            StepReduction::Sum
        } else {
            StepReduction::Mean
        });
        let steps = s.steps.max(0) as usize;
        match t.start {
            Some(_) if hier => p.push(
                "training.start",
                "only ddpo-is and ddpo-sf take a start index; hrf and hrf-d use training.hrf.window",
            ),
            Some(StartIndex::Fixed(k)) if k >= steps => p.push(
                "training.start.fixed",
                format!("must be < sampling.steps ({steps}), got {k}"),
            ),
            _ => {}
        }
        let hrf = match (&t.hrf, hier) {
            (Some(_), false) => {
                p.push("training.hrf", "only methods hrf and hrf-d take `hrf`");
                None
            }
            (h, true) => Some(validate_hrf(
                &mut p,
                h.clone().unwrap_or_default(),
                t.method,
                steps,
                t.epochs,
                s.batch_size.saturating_mul(s.batches_per_epoch),
            )),
            (None, false) => None,
        };
        p.real("training.clip_range", t.clip_range, |v| v > 0.0, "positive");
        p.real(
            "training.timestep_fraction",
            t.timestep_fraction,
            |v| v > 0.0 && v <= 1.0,
            "in (0, 1]",
        );
        p.real("training.kl_coef", t.kl_coef, |v| v >= 0.0, "≥ 0");
        if t.method == Method::DdpoSf && t.inner_epochs != 1 {
            p.push(
                "training.inner_epochs",
                format!(
                    "ddpo-sf takes one optimiser step per epoch: inner_epochs must be 1, got {}",
                    t.inner_epochs
                ),
            );
        }

        let prompts = match &self.prompts {
            None => Vec::new(),
            Some(PromptsRaw::List(list)) => {
                if list.is_empty() {
                    p.push("prompts", "empty: give prompts or leave `prompts` out");
                }
                for (i, prompt) in list.iter().enumerate() {
                    if prompt.trim().is_empty() {
                        p.push(format!("prompts[{i}]"), "empty prompt");
                    }
                }
                list.clone()
            }
            Some(PromptsRaw::File(PromptsFile { file: f })) => {
                let path = at_base(Path::new(f));
                match std::fs::read_to_string(&path) {
                    Ok(text) => {
                        let list: Vec<String> = text
                            .lines()
                            .map(str::trim)
                            .filter(|l| !l.is_empty() && !l.starts_with('#'))
                            .map(str::to_string)
                            .collect();
                        if list.is_empty() {
                            p.push("prompts.file", format!("{} has no prompts", path.display()));
                        }
                        list
                    }
                    Err(e) => {
                        p.push(
                            "prompts.file",
                            format!("cannot read {}: {e}", path.display()),
                        );
                        Vec::new()
                    }
                }
            }
        };
        let conditional = self.prompts.is_some();

        let a = self.advantages.unwrap_or_default();
        let mode = a.mode.unwrap_or(if hier {
            AdvantageMode::Group
        } else if conditional {
            AdvantageMode::PerPrompt
        } else {
            AdvantageMode::Epoch
        });
        if mode == AdvantageMode::PerPrompt && hier {
            p.push(
                "advantages.mode",
                "hrf and hrf-d standardise within anchor groups: use `group` (or `epoch`)",
            );
        }
        if mode == AdvantageMode::PerPrompt && !conditional {
            p.push("advantages.mode", "per-prompt advantages need `prompts`");
        }
        if mode == AdvantageMode::Group && matches!(t.method, Method::DdpoIs | Method::DdpoSf) {
            p.push(
                "advantages.mode",
                "group advantages need method hrf or hrf-d",
            );
        }
        p.at_least("advantages.buffer_size", a.buffer_size, 1);
        p.at_least("advantages.min_count", a.min_count, 1);
        if a.min_count > a.buffer_size {
            p.push(
                "advantages.min_count",
                format!(
                    "must be ≤ buffer_size ({}), got {}",
                    a.buffer_size, a.min_count
                ),
            );
        }

        if self.rewards.is_empty() {
            p.push("rewards", "give at least one reward");
        }
        let mut rewards = Vec::new();
        let mut names = BTreeSet::new();
        for (i, r) in self.rewards.into_iter().enumerate() {
            let at = |f: &str| format!("rewards[{i}].{f}");
            let kind = r.kind.as_str();
            let name = match (&r.name, r.kind) {
                (Some(n), _) => n.clone(),
                (None, RewardKindName::Onnx) => {
                    p.push(at("name"), "an onnx reward needs a name");
                    String::new()
                }
                (None, RewardKindName::Process) => r
                    .command
                    .as_ref()
                    .and_then(|c| c.last())
                    .and_then(|f| std::path::Path::new(f).file_stem())
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_else(|| kind.to_string()),
                (None, RewardKindName::Wasm | RewardKindName::Native) => r
                    .path
                    .as_ref()
                    .and_then(|f| f.file_stem())
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_else(|| kind.to_string()),
                (None, _) => kind.to_string(),
            };
            if !name.is_empty() {
                if !valid_name(&name) {
                    p.push(
                        at("name"),
                        format!("{name:?}: use letters, digits, '.', '_' and '-'"),
                    );
                } else if !names.insert(name.clone()) {
                    p.push(at("name"), format!("duplicate reward name {name:?}"));
                }
            }
            if !(r.weight.is_finite() && r.weight != 0.0) {
                p.push(
                    at("weight"),
                    format!("must be finite and non-zero, got {}", r.weight),
                );
            }
            p.at_least(at("batch_size"), r.batch_size, 1);
            let wasm_fields = [
                ("memory_mb", r.memory_mb.is_some()),
                ("fuel", r.fuel.is_some()),
                ("sha256", r.sha256.is_some()),
                ("models", r.models.is_some()),
            ];
            let onnx_fields = [
                ("stages", r.stages.is_some()),
                ("input", r.input.is_some()),
                ("score", r.score.is_some()),
                ("classes", r.classes.is_some()),
            ];
            let refuse = |p: &mut Problems<'_>, fields: &[(&str, bool)], who: &str| {
                for (field, given) in fields {
                    if *given {
                        p.push(
                            at(field),
                            format!("only {who} rewards take `{field}`; this one is {kind}"),
                        );
                    }
                }
            };
            use RewardKindName::{Native, Process, Wasm};
            if !matches!(r.kind, Wasm | Native) {
                refuse(&mut p, &[("path", r.path.is_some())], "wasm and native");
            }
            if !matches!(r.kind, Wasm | Native | Process) {
                refuse(&mut p, &[("config", r.config.is_some())], "plugin");
            }
            if !matches!(r.kind, Wasm | Process) {
                refuse(
                    &mut p,
                    &[("timeout_s", r.timeout_s.is_some())],
                    "wasm and process",
                );
            }
            if r.kind != Wasm {
                refuse(&mut p, &wasm_fields, "wasm");
            }
            if !matches!(r.kind, Native | Process) {
                refuse(
                    &mut p,
                    &[("trust", r.trust.is_some())],
                    "native and process",
                );
            }
            if r.kind != Process {
                refuse(&mut p, &[("command", r.command.is_some())], "process");
            }
            if let Some(t) = r.trust.as_deref().filter(|t| *t != "native") {
                p.push(at("trust"), format!("{t:?}: the only value is `native`"));
            }
            let timeout_s = r
                .timeout_s
                .unwrap_or(if r.kind == Process { 60.0 } else { 5.0 });
            p.real(
                at("timeout_s"),
                timeout_s,
                |v| v > 0.0 && v <= 3600.0,
                "in (0, 3600]",
            );
            let plugin_path = |p: &mut Problems<'_>| match &r.path {
                Some(rel) => {
                    let path = at_base(rel);
                    if !path.is_file() {
                        p.push(at("path"), format!("{} not found", path.display()));
                    }
                    path
                }
                None => {
                    p.push(
                        at("path"),
                        format!("a {kind} reward needs the plugin file's path"),
                    );
                    PathBuf::new()
                }
            };
            if r.kind != RewardKindName::Onnx {
                refuse(&mut p, &onnx_fields, "onnx");
            }
            let kind = if r.kind == Process {
                let command = r.command.clone().unwrap_or_default();
                if command.first().is_none_or(|c| c.is_empty()) {
                    p.push(
                        at("command"),
                        "give the program and its arguments, e.g. [python3, reward.py]",
                    );
                }
                RewardKind::Process(ProcessSpec {
                    command,
                    dir: base.to_path_buf(),
                    config: r.config.clone().unwrap_or_else(|| serde_json::json!({})),
                    timeout_s,
                    trust: r.trust.clone(),
                })
            } else if r.kind == Native {
                let path = plugin_path(&mut p);
                RewardKind::Native(NativeSpec {
                    path,
                    config: r.config.clone().unwrap_or_else(|| serde_json::json!({})),
                    trust: r.trust.clone(),
                })
            } else if r.kind == RewardKindName::Wasm {
                let path = plugin_path(&mut p);
                let memory_mb = r.memory_mb.unwrap_or(256);
                if !(1..=65_536).contains(&memory_mb) {
                    p.push(
                        at("memory_mb"),
                        format!("must be in 1..=65536, got {memory_mb}"),
                    );
                }
                if r.fuel == Some(0) {
                    p.push(at("fuel"), "must be ≥ 1 (leave it out for no limit)");
                }
                if let Some(h) = &r.sha256 {
                    if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
                        p.push(at("sha256"), format!("{h:?}: 64 hex digits expected"));
                    }
                }
                let models = r
                    .models
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(name, rel)| {
                        let path = at_base(&rel);
                        if !path.is_file() {
                            p.push(
                                at(&format!("models.{name}")),
                                format!("{} not found", path.display()),
                            );
                        }
                        (name, path)
                    })
                    .collect();
                RewardKind::Wasm(WasmSpec {
                    models,
                    path,
                    config: r.config.unwrap_or_else(|| serde_json::json!({})),
                    timeout_s,
                    memory_mb,
                    fuel: r.fuel,
                    sha256: r.sha256.map(|h| h.to_lowercase()),
                })
            } else if r.kind == RewardKindName::Onnx {
                let stages = r.stages.unwrap_or_default();
                if stages.is_empty() {
                    p.push(at("stages"), "an onnx reward needs at least one model");
                }
                let stages: Vec<StageSpec> = stages
                    .into_iter()
                    .enumerate()
                    .map(|(k, mut s)| {
                        s.model = at_base(&s.model);
                        if !s.model.is_file() {
                            p.push(
                                at(&format!("stages[{k}].model")),
                                format!("{} not found", s.model.display()),
                            );
                        }
                        s
                    })
                    .collect();
                let score = match r.score.unwrap_or(ScoreRaw::Column(0)) {
                    ScoreRaw::Column(c) => {
                        if r.classes.is_some() {
                            p.push(at("classes"), "only `score: prompted-class` takes classes");
                        }
                        ScoreSpec::Column(c)
                    }
                    ScoreRaw::PromptedClass => {
                        if !conditional {
                            p.push(at("score"), "prompted-class needs `prompts`");
                        }
                        if r.classes.as_ref().is_some_and(|c| c.is_empty()) {
                            p.push(at("classes"), "empty: give the class names or leave it out");
                        }
                        ScoreSpec::PromptedClass(r.classes)
                    }
                };
                RewardKind::Onnx {
                    stages,
                    input: r.input.unwrap_or_default(),
                    score,
                }
            } else {
                if r.kind == RewardKindName::PromptAlignment && !conditional {
                    p.push(at("kind"), "prompt-alignment needs `prompts`");
                }
                RewardKind::Builtin(kind.to_string())
            };
            rewards.push(RewardSpec {
                name,
                weight: r.weight,
                kind,
                batch_size: r.batch_size,
                on_error: r.on_error,
                transform: r.transform,
            });
        }

        let e = &self.evaluation;
        p.at_least("evaluation.samples", e.samples, 2);
        p.at_least("evaluation.final_samples", e.final_samples, 2);
        p.at_least("evaluation.batch_size", e.batch_size, 1);
        p.real(
            "evaluation.eta",
            e.eta,
            |v| (0.0..=1.0).contains(&v),
            "in [0, 1]",
        );
        let guidance = e.guidance.unwrap_or(s.guidance);
        if let Some(g) = e.guidance {
            p.real("evaluation.guidance", g, |v| v >= 0.0, "≥ 0");
        }
        if let BestBy::RewardAndDiversity { min_vendi_ratio } = e.best_by {
            p.real(
                "evaluation.best_by.reward-with-diversity.min_vendi_ratio",
                min_vendi_ratio,
                |v| v >= 0.0,
                "≥ 0",
            );
        }

        let r = &self.run;
        if let Some(problem) = limits::run_name_problem(&r.name) {
            p.push("run.name", problem);
        } else if !valid_name(&r.name) {
            p.push(
                "run.name",
                format!("{:?}: use letters, digits, '.', '_' and '-'", r.name),
            );
        }
        let output = at_base(Path::new(&r.output));
        if let Some(problem) = limits::output_problem(&output, &r.name) {
            p.push("run.output", problem);
        }

        // Sizes: fixed caps first, then (when they hold) what the model makes of them.
        let mut sizes_ok = true;
        let batch = "images per batch";
        sizes_ok &= p.at_most(
            "sampling.batch_size",
            s.batch_size,
            limits::MAX_BATCH,
            batch,
        );
        sizes_ok &= p.at_most(
            "sampling.batches_per_epoch",
            s.batches_per_epoch,
            limits::MAX_BATCHES_PER_EPOCH,
            "batches per epoch",
        );
        let per_epoch = s.batch_size.saturating_mul(s.batches_per_epoch);
        if sizes_ok {
            sizes_ok &= p.at_most(
                "sampling.batches_per_epoch",
                per_epoch,
                limits::MAX_SAMPLES_PER_EPOCH,
                "samples per epoch, sampling.batch_size × batches_per_epoch",
            );
        }
        sizes_ok &= p.at_most("training.epochs", t.epochs, limits::MAX_EPOCHS, "epochs");
        let run_samples = t.epochs as u128 * per_epoch as u128;
        if sizes_ok && run_samples > limits::MAX_RUN_SAMPLES {
            p.push(
                "training.epochs",
                format!(
                    "{} epochs of {} samples make {} samples, more than a run may sample ({})",
                    t.epochs,
                    crate::thousands(per_epoch as u64),
                    crate::thousands(run_samples as u64),
                    crate::thousands(limits::MAX_RUN_SAMPLES as u64)
                ),
            );
            sizes_ok = false;
        }
        sizes_ok &= p.at_most(
            "training.batch_size",
            t.batch_size,
            limits::MAX_BATCH,
            batch,
        );
        sizes_ok &= p.at_most(
            "evaluation.batch_size",
            e.batch_size,
            limits::MAX_BATCH,
            batch,
        );
        for (field, v) in [
            ("evaluation.samples", e.samples),
            ("evaluation.final_samples", e.final_samples),
        ] {
            sizes_ok &= p.at_most(field, v, limits::MAX_EVAL_SAMPLES, "samples");
        }
        for (i, r) in rewards.iter().enumerate() {
            sizes_ok &= p.at_most(
                format!("rewards[{i}].batch_size"),
                r.batch_size,
                limits::MAX_BATCH,
                "images per reward call",
            );
            if let RewardKind::Onnx {
                input: ImageInput { size: Some(wh), .. },
                ..
            } = &r.kind
            {
                if wh.iter().any(|&v| v == 0 || v > limits::MAX_IMAGE_SIDE) {
                    p.push(
                        format!("rewards[{i}].input.size"),
                        format!(
                            "width and height must be in 1..={}, got [{}, {}]",
                            limits::MAX_IMAGE_SIDE,
                            wh[0],
                            wh[1]
                        ),
                    );
                    sizes_ok = false;
                }
            }
        }
        let shape = model
            .as_ref()
            .filter(|_| sizes_ok)
            .and_then(|m| ModelShape::of(&m.source));
        if let Some(shape) = shape {
            let sizes = run_sizes(
                &shape,
                s,
                (t.batch_size, t.kl_coef),
                (e.batch_size, e.samples.max(e.final_samples), guidance),
                conditional,
                &rewards,
            );
            check_sizes(&mut p, &shape, &sizes, limits::memory_limit());
        }
        p.at_least("run.save_every", r.save_every, 1);
        p.at_least("run.keep", r.keep, 1);

        match model {
            Some(model) if p.list.is_empty() => Ok(RunPipeline {
                file: file.to_path_buf(),
                text,
                model,
                scheduler: self.scheduler.map(Value::Object),
                sampling: self.sampling,
                training: TrainingSettings {
                    method: t.method,
                    epochs: t.epochs,
                    optimizer: AdamWSettings {
                        lr: o.lr,
                        weight_decay,
                        beta1: o.beta1,
                        beta2: o.beta2,
                        eps: o.eps,
                    },
                    max_grad_norm: t.max_grad_norm,
                    inner_epochs: t.inner_epochs,
                    batch_size: t.batch_size,
                    grad_accum: t.grad_accum,
                    adv_clip,
                    clip_range: t.clip_range,
                    timestep_fraction: t.timestep_fraction,
                    step_reduction,
                    kl_coef: t.kl_coef,
                    start: t.start,
                    hrf,
                    seed: self.run.seed,
                },
                advantages: AdvantageSettings {
                    mode,
                    buffer_size: a.buffer_size,
                    min_count: a.min_count,
                },
                prompts,
                rewards,
                evaluation: EvaluationSettings {
                    every: e.every,
                    seed: e.seed,
                    samples: e.samples,
                    final_samples: e.final_samples,
                    batch_size: e.batch_size,
                    eta: e.eta,
                    guidance,
                    best_by: e.best_by,
                },
                run: RunSettings {
                    name: self.run.name,
                    output,
                    seed: self.run.seed,
                    save_every: self.run.save_every,
                    keep: self.run.keep,
                },
            }),
            _ => Err(ConfigErrors(p.list)),
        }
    }
}

/// What the memory estimate needs of a pipeline: the sampling settings, the training batch and
/// KL weight, the evaluation's batch, largest sample count and guidance, whether it has prompts,
/// the rewards.
fn run_sizes(
    shape: &ModelShape,
    s: &SamplingSettings,
    (training_batch, kl_coef): (usize, f64),
    (evaluation_batch, final_samples, eval_guidance): (usize, usize, f64),
    conditional: bool,
    rewards: &[RewardSpec],
) -> RunSizes {
    RunSizes {
        sampling_batch: s.batch_size,
        batches_per_epoch: s.batches_per_epoch,
        steps: s.steps.max(0) as u64,
        training_batch,
        evaluation_batch,
        final_samples,
        guided_sampling: conditional && s.guidance != 1.0,
        guided_evaluation: conditional && eval_guidance != 1.0,
        base_copy: kl_coef > 0.0,
        reward_inputs: rewards
            .iter()
            .map(|r| {
                let elements = match &r.kind {
                    RewardKind::Onnx {
                        input:
                            ImageInput {
                                size: Some([w, h]),
                                channels,
                                ..
                            },
                        ..
                    } => *w as u64 * *h as u64 * channels.unwrap_or(3).max(1) as u64,
                    _ => shape.image_elements().max(1) as u64 * 3,
                };
                (r.batch_size, elements)
            })
            .collect(),
    }
}

impl RunPipeline {
    /// hrf's estimate of the memory the run takes, by part (what validation checks against the
    /// machine's RAM); none when the model's config cannot be read.
    pub fn memory_estimate(&self) -> Option<Vec<limits::Part>> {
        let shape = ModelShape::of(&self.model.source)?;
        let e = &self.evaluation;
        let sizes = run_sizes(
            &shape,
            &self.sampling,
            (self.training.batch_size, self.training.kl_coef),
            (e.batch_size, e.samples.max(e.final_samples), e.guidance),
            !self.prompts.is_empty(),
            &self.rewards,
        );
        Some(limits::memory_estimate(&shape, &sizes))
    }
}

/// The batches' largest tensors against `MAX_TENSOR_ELEMENTS`, and the memory estimate against
/// `limit` (bytes, and what it is).
fn check_sizes(p: &mut Problems<'_>, shape: &ModelShape, sizes: &RunSizes, limit: (u64, String)) {
    let (largest, what) = shape.largest_tensor();
    let image = shape.image_elements();
    let steps = sizes.steps as u128 + 1;
    let mut tensors_ok = true;
    let batches = [
        (
            "sampling.batch_size",
            sizes.sampling_batch,
            sizes.guided_sampling,
        ),
        (
            "training.batch_size",
            sizes.training_batch,
            sizes.guided_sampling,
        ),
        (
            "evaluation.batch_size",
            sizes.evaluation_batch,
            sizes.guided_evaluation,
        ),
    ];
    for (field, batch, guided) in batches {
        let rows = batch as u128 * if guided { 2 } else { 1 };
        let mut candidates = vec![(rows * largest, what.clone())];
        if field == "sampling.batch_size" {
            candidates.push((
                batch as u128 * steps * image,
                format!("the batch's trajectories ({steps} latents each)"),
            ));
        }
        let (elements, what) = candidates.into_iter().max_by_key(|c| c.0).expect("one");
        if elements > limits::MAX_TENSOR_ELEMENTS {
            let guided = if guided { " (doubled by guidance)" } else { "" };
            p.push(
                field,
                format!(
                    "a batch of {batch}{guided} makes {what} one tensor of {} elements, more than \
                     the {} (2³¹ − 1) that libtorch's 32-bit-indexed kernels take",
                    crate::thousands(elements.min(u64::MAX as u128) as u64),
                    crate::thousands(limits::MAX_TENSOR_ELEMENTS as u64)
                ),
            );
            tensors_ok = false;
        }
    }
    if tensors_ok {
        let parts = limits::memory_estimate(shape, sizes);
        if let Some((field, message)) = limits::memory_problem(&parts, limit.0, &limit.1) {
            p.push(field, message);
        }
    }
}

/// Checks `training.hrf` and resolves its window schedule into explicit steps and epoch counts.
fn validate_hrf(
    p: &mut Problems<'_>,
    h: HrfRaw,
    method: Method,
    steps: usize,
    epochs: usize,
    samples_per_epoch: usize,
) -> HrfSettings {
    p.at_least("training.hrf.group_size", h.group_size, 2);
    if h.group_size > 0 && !samples_per_epoch.is_multiple_of(h.group_size) {
        p.push(
            "training.hrf.group_size",
            format!(
                "the epoch's {samples_per_epoch} samples (sampling.batch_size × batches_per_epoch) \
                 must split into whole groups of {}",
                h.group_size
            ),
        );
    }
    let raw = h.window.unwrap_or_else(|| {
        vec![
            WindowClusterRaw {
                range: Some([0, steps / 2]),
                steps: None,
                epochs: 0.5,
            },
            WindowClusterRaw {
                range: Some([steps / 2, steps]),
                steps: None,
                epochs: 0.5,
            },
        ]
    });
    if raw.is_empty() {
        p.push("training.hrf.window", "give at least one cluster");
    }
    let mut clusters = Vec::new();
    for (i, c) in raw.iter().enumerate() {
        let at = format!("training.hrf.window[{i}]");
        let list: Vec<usize> = match (&c.range, &c.steps) {
            (Some([a, b]), None) => {
                if !(a < b && *b <= steps) {
                    p.push(
                        format!("{at}.range"),
                        format!("need a < b ≤ sampling.steps ({steps}), got [{a}, {b})"),
                    );
                }
                (*a..*b).collect()
            }
            (None, Some(list)) => {
                if list.is_empty() {
                    p.push(format!("{at}.steps"), "empty");
                }
                if let Some(bad) = list.iter().find(|&&k| k >= steps) {
                    p.push(
                        format!("{at}.steps"),
                        format!("start indices must be < sampling.steps ({steps}), got {bad}"),
                    );
                }
                let mut l = list.clone();
                l.sort_unstable();
                l.dedup();
                l
            }
            _ => {
                p.push(
                    at.clone(),
                    "give exactly one of `range: [a, b]` or `steps: [...]`",
                );
                Vec::new()
            }
        };
        if !(c.epochs.is_finite() && c.epochs >= 0.0) {
            p.push(
                format!("{at}.epochs"),
                format!("must be ≥ 0, got {}", c.epochs),
            );
        }
        clusters.push(list);
    }
    // Whole numbers summing to the epoch count are counts; otherwise fractions summing to 1.
    let given: Vec<f64> = raw.iter().map(|c| c.epochs).collect();
    let sum: f64 = given.iter().sum();
    let counts: Vec<usize> = if given.iter().all(|e| e.fract() == 0.0) && sum == epochs as f64 {
        given.iter().map(|&e| e as usize).collect()
    } else if (sum - 1.0).abs() <= 1e-6 {
        let mut cum = 0.0;
        let mut prev = 0usize;
        given
            .iter()
            .map(|&e| {
                cum += e;
                let end = ((cum * epochs as f64).round() as usize).min(epochs);
                let n = end - prev;
                prev = end;
                n
            })
            .collect()
    } else {
        if !raw.is_empty() {
            p.push(
                "training.hrf.window",
                format!(
                    "cluster epochs must be fractions summing to 1 or whole numbers summing to \
                     training.epochs ({epochs}); they sum to {sum}"
                ),
            );
        }
        vec![0; raw.len()]
    };
    p.at_least("training.hrf.stride", h.stride, 1);
    if method == Method::HrfD && h.stride > 0 && steps.div_ceil(h.stride) < 3 {
        p.push(
            "training.hrf.stride",
            format!(
                "hrf-d needs at least 3 candidate starts: range(0, {steps}, {}) has {}",
                h.stride,
                steps.div_ceil(h.stride)
            ),
        );
    }
    let copies = h.copies.unwrap_or(h.group_size);
    p.at_least("training.hrf.copies", copies, 1);
    p.at_most(
        "training.hrf.copies",
        copies,
        limits::MAX_BATCH,
        "noise copies per anchor",
    );
    p.real("training.hrf.beta", h.beta, |v| v >= 0.0, "≥ 0");
    HrfSettings {
        group_size: h.group_size,
        window: clusters
            .into_iter()
            .zip(counts)
            .map(|(steps, epochs)| WindowCluster { steps, epochs })
            .collect(),
        stride: h.stride,
        copies,
        beta: h.beta,
    }
}

// ---------------------------------------------------------------------------------------------
// The JSON Schema.

/// The JSON Schema (draft 2020-12) of a run pipeline file.
pub fn run_schema() -> Value {
    let mut s =
        serde_json::to_value(schemars::schema_for!(RunFile)).expect("a schema is plain data");
    describe_variant_keys(&mut s);
    s
}

/// An enum variant with data (`{column: 1}`, `{fixed: 3}`) is an object of one key; schemars
/// puts the variant's doc comment on the object, and this copies it to the key, so that every
/// property of the schema says what it is.
fn describe_variant_keys(v: &mut Value) {
    match v {
        Value::Object(m) => {
            let desc = m.get("description").cloned();
            if let (Some(desc), Some(Value::Object(props))) = (desc, m.get_mut("properties")) {
                if props.len() == 1 {
                    if let Some(Value::Object(p)) = props.values_mut().next() {
                        p.entry("description").or_insert(desc);
                    }
                }
            }
            m.values_mut().for_each(describe_variant_keys);
        }
        Value::Array(items) => items.iter_mut().for_each(describe_variant_keys),
        _ => {}
    }
}

/// `run_schema()` as `hrf schema` prints it and configs/pipeline.schema.json holds it.
pub fn run_schema_text() -> String {
    let mut s = serde_json::to_string_pretty(&run_schema()).expect("plain data");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ddpo::StepReduction;

    /// A folder with a model, an ONNX file and a prompts file; removed on drop.
    struct Fixture(PathBuf);

    impl Fixture {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("hrf-run-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("models/base")).unwrap();
            std::fs::create_dir_all(dir.join("configs")).unwrap();
            std::fs::write(dir.join("models/base/config.json"), "{}").unwrap();
            std::fs::write(dir.join("models/head.onnx"), "onnx").unwrap();
            std::fs::write(
                dir.join("configs/prompts.txt"),
                "# classes\na photo of a shirt\n\n  a photo of a sneaker  \n",
            )
            .unwrap();
            Self(dir)
        }

        /// Writes `configs/p.yaml` and loads it.
        fn load(&self, text: &str, sets: &[&str]) -> Result<RunPipeline, ConfigErrors> {
            let file = self.0.join("configs/p.yaml");
            std::fs::write(&file, text).unwrap();
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            load_with_overrides(&file, &sets)
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const MINIMAL: &str = "\
model: {weights: ../models/base}
rewards:
  - {kind: jpeg-compressibility}
run: {name: ddpo-compressibility}
";

    const FULL: &str = "\
model: {weights: ../models/base, device: cpu}
scheduler: {num_train_timesteps: 1000, beta_schedule: linear}
sampling: {steps: 20, eta: 1.0, guidance: 2.0, batch_size: 8, batches_per_epoch: 4}
training:
  method: ddpo-is
  epochs: 3
  optimizer: {lr: 3.0e-4, weight_decay: 0.0}
  inner_epochs: 2
  step_reduction: sum
advantages: {buffer_size: 64}
prompts: {file: prompts.txt}
rewards:
  - {kind: prompt-alignment, weight: 2}
  - kind: onnx
    name: my-score
    weight: -0.5
    stages:
      - {model: ../models/head.onnx, output: features, l2_normalize: true}
      - {model: ../models/head.onnx}
    input: {layout: nhwc, size: [224, 224]}
    score: prompted-class
    classes: [shirt, sneaker]
    batch_size: 16
evaluation:
  every: 0
  samples: 16
  best_by: {reward-with-diversity: {min_vendi_ratio: 0.8}}
run: {name: full.run_1, output: ../runs, seed: 7, save_every: 1, keep: 3}
";

    fn messages(e: &ConfigErrors) -> String {
        e.to_string()
    }

    #[test]
    fn a_minimal_pipeline_gets_every_default() {
        let fx = Fixture::new("minimal");
        let p = fx.load(MINIMAL, &[]).unwrap();
        assert_eq!(
            p.model.source,
            ModelSource::Folder(canonical(&fx.0.join("models/base")))
        );
        assert_eq!(p.scheduler, None);
        assert_eq!(p.sampling, SamplingSettings::default());
        assert_eq!(p.training, TrainingSettings::default());
        assert_eq!(p.advantages, AdvantageSettings::default());
        assert!(p.prompts.is_empty());
        assert_eq!(
            p.rewards,
            [RewardSpec {
                name: "jpeg-compressibility".into(),
                weight: 1.0,
                kind: RewardKind::Builtin("jpeg-compressibility".into()),
                batch_size: 256,
                on_error: OnError::Fail,
                transform: Transform::Identity,
            }]
        );
        assert_eq!(p.evaluation.every, 5);
        assert_eq!(p.evaluation.guidance, p.sampling.guidance);
        assert_eq!(p.evaluation.best_by, BestBy::Reward);
        assert_eq!(p.run.output, canonical(&fx.0.join("configs/runs")));
        assert_eq!((p.run.seed, p.run.save_every, p.run.keep), (0, 5, 2));
        assert_eq!(p.text, MINIMAL);
    }

    #[test]
    fn a_full_pipeline_parses_and_resolves() {
        let fx = Fixture::new("full");
        let p = fx.load(FULL, &[]).unwrap();
        assert_eq!(p.model.device, "cpu");
        assert_eq!(p.scheduler.as_ref().unwrap()["num_train_timesteps"], 1000);
        assert_eq!(p.sampling.steps, 20);
        assert_eq!(p.sampling.sigma_min, 1e-4);
        assert_eq!(p.training.optimizer.lr, 3e-4);
        assert_eq!(p.training.optimizer.beta2, 0.999);
        assert_eq!(p.training.step_reduction, StepReduction::Sum);
        assert_eq!(p.training.seed, 7, "training.seed is run.seed");
        // Prompts are given, so the advantage mode defaults to the per-prompt tracker.
        assert_eq!(p.advantages.mode, AdvantageMode::PerPrompt);
        assert_eq!((p.advantages.buffer_size, p.advantages.min_count), (64, 16));
        assert_eq!(p.prompts, ["a photo of a shirt", "a photo of a sneaker"]);
        assert_eq!(p.rewards[0].name, "prompt-alignment");
        assert_eq!(p.rewards[0].weight, 2.0);
        let RewardKind::Onnx {
            stages,
            input,
            score,
        } = &p.rewards[1].kind
        else {
            panic!("{:?}", p.rewards[1]);
        };
        assert_eq!(stages[0].model, canonical(&fx.0.join("models/head.onnx")));
        assert_eq!(
            stages[0].output,
            crate::reward::OutputSel::Name("features".into())
        );
        assert!(stages[0].l2_normalize && !stages[1].l2_normalize);
        assert_eq!(input.size, Some([224, 224]));
        assert_eq!(input.mean, [0.5]);
        assert_eq!(
            *score,
            ScoreSpec::PromptedClass(Some(vec!["shirt".into(), "sneaker".into()]))
        );
        assert_eq!(p.rewards[1].batch_size, 16);
        assert_eq!(p.evaluation.guidance, 2.0);
        assert_eq!(
            p.evaluation.best_by,
            BestBy::RewardAndDiversity {
                min_vendi_ratio: 0.8
            }
        );
        assert_eq!(p.run.output, canonical(&fx.0.join("runs")));
    }

    #[test]
    fn the_resolved_pipeline_loads_back_to_the_same_pipeline() {
        let fx = Fixture::new("resolved");
        let tricky = MINIMAL.replace(
            "run:",
            "prompts: ['1', 'yes', 'null', 'a: b', '#x']\nscheduler: {beta_start: 0.0001}\nrun:",
        );
        for text in [MINIMAL, FULL, &tricky] {
            let p = fx.load(text, &[]).unwrap();
            let json = serde_json::to_string_pretty(&p).unwrap();
            let yaml = p.resolved_yaml();
            assert!(yaml.starts_with("model:"), "{yaml}");
            // Read back as a tree, YAML and JSON alike give the same values.
            let file = fx.0.join("tree.yaml");
            std::fs::write(&file, &yaml).unwrap();
            assert_eq!(read_resolved(&file).unwrap(), p.resolved(), "{yaml}");
            std::fs::write(&file, &json).unwrap();
            assert_eq!(read_resolved(&file).unwrap(), p.resolved(), "{json}");
            for (name, resolved) in [("json", json), ("yaml", yaml)] {
                // From another folder: every path in it is absolute.
                let other = fx.0.join(format!("elsewhere/pipeline.resolved.{name}"));
                std::fs::create_dir_all(other.parent().unwrap()).unwrap();
                std::fs::write(&other, &resolved).unwrap();
                let back = load(&other).unwrap_or_else(|e| panic!("{e}\n{resolved}"));
                assert_eq!(
                    RunPipeline {
                        file: p.file.clone(),
                        text: p.text.clone(),
                        ..back
                    },
                    p,
                    "{resolved}"
                );
            }
        }
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        let fx = Fixture::new("unknown");
        let text = MINIMAL.replace("run:", "training:\n  epocs: 3\nrun:");
        let e = fx.load(&text, &[]).unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(e.0[0].line, Some(5), "{e}");
        assert!(messages(&e).contains("epocs"), "{e}");
        // training.seed is run.seed: not a training field.
        let text = MINIMAL.replace("run:", "training: {seed: 3}\nrun:");
        let e = fx.load(&text, &[]).unwrap_err();
        assert_eq!(e.0[0].line, Some(4), "{e}");
    }

    #[test]
    fn wrong_types_are_refused_with_their_line() {
        let fx = Fixture::new("types");
        let text = MINIMAL.replace("run:", "sampling:\n  steps: many\nrun:");
        let e = fx.load(&text, &[]).unwrap_err();
        assert_eq!(e.0[0].line, Some(5), "{e}");
        let text = MINIMAL.replace("run:", "scheduler: [1, 2]\nrun:");
        let e = fx.load(&text, &[]).unwrap_err();
        assert_eq!(e.0[0].line, Some(4), "{e}");
        let text = MINIMAL.replace("jpeg-compressibility", "jpeg");
        let e = fx.load(&text, &[]).unwrap_err();
        assert_eq!(e.0[0].line, Some(3), "{e}");
    }

    #[test]
    fn a_missing_model_folder_is_named() {
        let fx = Fixture::new("model");
        let e = fx
            .load(&MINIMAL.replace("models/base", "models/nope"), &[])
            .unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(e.0[0].field.as_deref(), Some("model.weights"));
        assert_eq!(e.0[0].line, Some(1), "{e}");
        assert!(messages(&e).contains("p.yaml:1:"), "{e}");
    }

    #[test]
    fn a_negative_learning_rate_is_named_with_its_place() {
        let fx = Fixture::new("lr");
        let text = MINIMAL.replace("run:", "training:\n  optimizer:\n    lr: -1e-4\nrun:");
        let e = fx.load(&text, &[]).unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        let err = &e.0[0];
        assert_eq!(err.field.as_deref(), Some("training.optimizer.lr"));
        assert_eq!((err.line, err.column), (Some(6), Some(9)), "{e}");
        assert!(messages(&e).contains("p.yaml:6:9: training.optimizer.lr: must be positive"));
    }

    /// A pipeline of two rewards, the second a `kind` entry with `field: value` added (the value
    /// is on line 4, at column 16 + the lengths of `kind` and `field`).
    fn two_rewards(kind: &str, field: &str, value: &str) -> String {
        format!(
            "model: {{weights: ../models/base}}\nrewards:\n  - {{kind: aesthetic}}\n  - {{kind: {kind}, {field}: {value}}}\nrun: {{name: t}}\n"
        )
    }

    #[test]
    fn on_error_is_fail_unless_the_entry_says_skip() {
        let fx = Fixture::new("on-error");
        let text = |v: &str| two_rewards("jpeg-compressibility", "on_error", v);
        let p = fx.load(&text("skip"), &[]).unwrap();
        assert_eq!(
            (p.rewards[0].on_error, p.rewards[1].on_error),
            (OnError::Fail, OnError::Skip)
        );
        let e = fx.load(&text("sometimes"), &[]).unwrap_err();
        let msg = messages(&e);
        assert!(
            msg.contains("p.yaml:4:44: unknown variant `sometimes`, expected one of fail, skip"),
            "{msg}"
        );
    }

    #[test]
    fn transform_is_identity_unless_the_entry_says_log() {
        let fx = Fixture::new("transform");
        let text = |v: &str| two_rewards("jpeg-incompressibility", "transform", v);
        let p = fx.load(&text("log"), &[]).unwrap();
        assert_eq!(
            (p.rewards[0].transform, p.rewards[1].transform),
            (Transform::Identity, Transform::Log)
        );
        let e = fx.load(&text("ln"), &[]).unwrap_err();
        let msg = messages(&e);
        assert!(
            msg.contains("p.yaml:4:47: unknown variant `ln`, expected one of identity, log"),
            "{msg}"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let fx = Fixture::new("many");
        let text = "\
model: {weights: ../models/base}
sampling: {steps: 1, eta: 2}
training: {method: ddpo-sf, inner_epochs: 2, timestep_fraction: 0, optimizer: {beta1: 1}}
advantages: {mode: group}
rewards:
  - {kind: prompt-alignment}
  - {kind: onnx, stages: [{model: missing.onnx}], score: {column: 1}, classes: [a]}
  - {kind: aesthetic, weight: 0, input: {layout: nhwc}}
  - {kind: aesthetic}
evaluation: {samples: 1}
run: {name: 'a b', keep: 0}
";
        let e = fx.load(text, &[]).unwrap_err();
        let want = [
            ("sampling.steps", 2),
            ("sampling.eta", 2),
            ("training.inner_epochs", 3),
            ("training.timestep_fraction", 3),
            ("training.optimizer.beta1", 3),
            ("advantages.mode", 4),
            ("rewards[0].kind", 6),
            ("rewards[1].name", 7),
            ("rewards[1].stages[0].model", 7),
            ("rewards[1].classes", 7),
            ("rewards[2].weight", 8),
            ("rewards[2].input", 8),
            ("rewards[3].name", 9),
            ("evaluation.samples", 10),
            ("run.name", 11),
            ("run.keep", 11),
        ];
        for (field, line) in want {
            let found = e.0.iter().find(|x| x.field.as_deref() == Some(field));
            let found = found.unwrap_or_else(|| panic!("no error for {field}:\n{e}"));
            assert_eq!(found.line, Some(line), "{field}:\n{e}");
        }
        assert_eq!(e.0.len(), want.len(), "{e}");
        let msg = messages(&e);
        assert!(
            msg.contains("group advantages need method hrf or hrf-d"),
            "{msg}"
        );
        assert!(msg.contains("duplicate reward name \"aesthetic\""), "{msg}");
        assert!(msg.contains("ddpo-sf"), "{msg}");
    }

    #[test]
    fn hrf_takes_its_own_defaults_and_resolves_the_window() {
        let fx = Fixture::new("hrf");
        let text = MINIMAL.replace(
            "run:",
            "sampling: {steps: 10, batch_size: 8, batches_per_epoch: 2}\ntraining: {method: hrf, epochs: 5}\nrun:",
        );
        let p = fx.load(&text, &[]).unwrap();
        let t = &p.training;
        assert_eq!((t.adv_clip, t.step_reduction), (2.5, StepReduction::Sum));
        assert_eq!(t.optimizer.weight_decay, 1e-3);
        assert_eq!(p.advantages.mode, AdvantageMode::Group);
        let h = t.hrf.as_ref().unwrap();
        assert_eq!((h.group_size, h.stride, h.copies, h.beta), (4, 2, 4, 0.5));
        // Halves of the chain; 5 epochs split at round(2.5) = 3 (half away from zero).
        assert_eq!(h.window[0].steps, (0..5).collect::<Vec<_>>());
        assert_eq!(h.window[1].steps, (5..10).collect::<Vec<_>>());
        assert_eq!((h.window[0].epochs, h.window[1].epochs), (3, 2));
        assert_eq!(h.cluster_at(2).steps[0], 0);
        assert_eq!(h.cluster_at(3).steps[0], 5);
        // The resolved pipeline loads back to the same one.
        let back = fx.load(&serde_yaml_text(&p), &[]).unwrap();
        assert_eq!(back.training, p.training);

        // Explicit lists and whole epoch counts.
        let p = fx
            .load(
                &text,
                &[
                    "training.method=hrf-d",
                    "training.hrf.window=[{steps: [7, 2, 2], epochs: 4}, {range: [0, 10], epochs: 1}]",
                    "training.hrf.copies=2",
                ],
            )
            .unwrap();
        let h = p.training.hrf.as_ref().unwrap();
        assert_eq!(h.window[0].steps, vec![2, 7]);
        assert_eq!(
            (h.window[0].epochs, h.window[1].epochs, h.copies),
            (4, 1, 2)
        );

        // DDPO keeps ddpo-pytorch's defaults; its ablation takes a start index.
        let p = fx
            .load(
                &text,
                &["training.method=ddpo-is", "training.start={fixed: 3}"],
            )
            .unwrap();
        assert_eq!(
            (p.training.adv_clip, p.training.step_reduction),
            (5.0, StepReduction::Mean)
        );
        assert_eq!(p.training.start, Some(StartIndex::Fixed(3)));
        assert!(p.training.hrf.is_none());
    }

    fn serde_yaml_text(p: &RunPipeline) -> String {
        serde_json::to_string_pretty(&p.resolved()).unwrap()
    }

    #[test]
    fn bad_hrf_settings_are_named() {
        let fx = Fixture::new("bad-hrf");
        let text = MINIMAL.replace(
            "run:",
            "sampling: {steps: 4, batch_size: 6, batches_per_epoch: 1}\n\
             training:\n  method: hrf-d\n  epochs: 4\n  start: uniform\n  hrf:\n    group_size: 4\n    stride: 2\n    window:\n      - {range: [2, 9], epochs: 0.5}\n      - {epochs: 0.25}\n\
             advantages: {mode: per-prompt}\nrun:",
        );
        let e = fx.load(&text, &[]).unwrap_err();
        let fields: Vec<&str> = e.0.iter().filter_map(|x| x.field.as_deref()).collect();
        for want in [
            "training.start",
            "training.hrf.group_size",
            "training.hrf.stride",
            "training.hrf.window[0].range",
            "training.hrf.window[1]",
            "training.hrf.window",
            "advantages.mode",
        ] {
            assert!(fields.contains(&want), "no error for {want}: {e}");
        }
        let e = fx
            .load(
                MINIMAL,
                &["training.hrf.group_size=2", "training.start={fixed: 40}"],
            )
            .unwrap_err();
        let msg = messages(&e);
        assert!(
            msg.contains("only methods hrf and hrf-d take `hrf`"),
            "{msg}"
        );
        assert!(
            msg.contains("must be < sampling.steps (40), got 40"),
            "{msg}"
        );
    }

    #[test]
    fn per_prompt_advantages_need_prompts() {
        let fx = Fixture::new("per-prompt");
        let text = MINIMAL.replace("run:", "advantages: {mode: per-prompt}\nrun:");
        let e = fx.load(&text, &[]).unwrap_err();
        assert_eq!(e.0[0].field.as_deref(), Some("advantages.mode"), "{e}");
        assert_eq!(e.0[0].line, Some(4), "{e}");
    }

    #[test]
    fn prompts_come_from_a_file_relative_to_the_yaml() {
        let fx = Fixture::new("prompts");
        let text = MINIMAL.replace("run:", "prompts: {file: prompts.txt}\nrun:");
        let p = fx.load(&text, &[]).unwrap();
        assert_eq!(p.prompts, ["a photo of a shirt", "a photo of a sneaker"]);
        assert_eq!(p.advantages.mode, AdvantageMode::PerPrompt);

        let e = fx
            .load(&text.replace("prompts.txt", "nope.txt"), &[])
            .unwrap_err();
        assert_eq!(e.0[0].field.as_deref(), Some("prompts.file"), "{e}");
        assert!(messages(&e).contains("nope.txt"), "{e}");

        std::fs::write(fx.0.join("configs/empty.txt"), "# nothing\n\n").unwrap();
        let e = fx
            .load(&text.replace("prompts.txt", "empty.txt"), &[])
            .unwrap_err();
        assert!(messages(&e).contains("has no prompts"), "{e}");
    }

    #[test]
    fn overrides_set_any_field() {
        let fx = Fixture::new("overrides");
        let p = fx
            .load(
                MINIMAL,
                &[
                    "training.optimizer.lr=3e-4",
                    "prompts=[a photo of a shirt, a photo of a bag]",
                    "run.name=sweep-1",
                    "rewards[0].weight=2",
                    "rewards.0.batch_size=8",
                    "evaluation.best_by={reward-with-diversity: {min_vendi_ratio: 0.5}}",
                    "scheduler.beta_schedule=linear",
                ],
            )
            .unwrap();
        assert_eq!(p.training.optimizer.lr, 3e-4);
        assert_eq!(p.prompts, ["a photo of a shirt", "a photo of a bag"]);
        assert_eq!(p.advantages.mode, AdvantageMode::PerPrompt);
        assert_eq!(p.run.name, "sweep-1");
        assert_eq!((p.rewards[0].weight, p.rewards[0].batch_size), (2.0, 8));
        assert_eq!(
            p.evaluation.best_by,
            BestBy::RewardAndDiversity {
                min_vendi_ratio: 0.5
            }
        );
        assert_eq!(
            p.scheduler,
            Some(serde_json::json!({"beta_schedule": "linear"}))
        );
        // The text is the file's, not the overridden document.
        assert_eq!(p.text, MINIMAL);
    }

    #[test]
    fn bad_overrides_are_reported() {
        let fx = Fixture::new("bad-overrides");
        let e = fx
            .load(
                MINIMAL,
                &[
                    "training.optimizer.lr",
                    "=3",
                    "run.name.x=1",
                    "rewards[3].weight=1",
                    "a..b=1",
                    "run.name=[unclosed",
                ],
            )
            .unwrap_err();
        assert_eq!(e.0.len(), 6, "{e}");
        assert!(
            e.0.iter().all(|x| x.field.as_deref() == Some("--set")),
            "{e}"
        );
        assert!(messages(&e).contains("\"training.optimizer.lr\": expected key.path=value"));
    }

    #[test]
    fn errors_in_overridden_values_name_their_field() {
        let fx = Fixture::new("override-errors");
        // An overridden value: its field, no place in the file.
        let text = MINIMAL.replace("run:", "training:\n  optimizer:\n    lr: 1e-4\nrun:");
        let e = fx.load(&text, &["training.optimizer.lr=-1"]).unwrap_err();
        assert_eq!(
            e.0[0].field.as_deref(),
            Some("training.optimizer.lr"),
            "{e}"
        );
        assert_eq!(e.0[0].line, None, "{e}");
        // A problem the override did not touch keeps its place.
        let text = MINIMAL.replace("run:", "training:\n  optimizer:\n    lr: -1\nrun:");
        let e = fx.load(&text, &["run.seed=3"]).unwrap_err();
        assert_eq!(
            e.0[0].field.as_deref(),
            Some("training.optimizer.lr"),
            "{e}"
        );
        assert_eq!(e.0[0].line, Some(6), "{e}");
        // Serde errors too: a wrong type set on the command line, an unknown key in the file.
        let e = fx.load(MINIMAL, &["sampling.steps=many"]).unwrap_err();
        assert_eq!(e.0[0].field.as_deref(), Some("sampling.steps"), "{e}");
        assert_eq!(e.0[0].line, None, "{e}");
        let text = MINIMAL.replace("run:", "training:\n  epocs: 3\nrun:");
        let e = fx.load(&text, &["run.seed=3"]).unwrap_err();
        assert_eq!(e.0[0].line, Some(5), "{e}");
        assert!(messages(&e).contains("epocs"), "{e}");
    }

    #[test]
    fn the_schema_refuses_unknown_keys_and_spells_enums_in_kebab_case() {
        let s = run_schema();
        let text = s.to_string();
        assert_eq!(s["additionalProperties"], false, "{s:#}");
        for def in ["TrainingRaw", "OptimizerRaw", "HrfRaw", "WindowClusterRaw"] {
            assert_eq!(s["$defs"][def]["additionalProperties"], false, "{def}");
        }
        assert!(s["$defs"]["TrainingRaw"]["properties"]
            .get("seed")
            .is_none());
        assert_eq!(
            s["$defs"]["OptimizerRaw"]["properties"]["lr"]["default"],
            1e-4
        );
        for word in [
            "ddpo-sf",
            "hrf-d",
            "per-prompt",
            "jpeg-compressibility",
            "reward-with-diversity",
        ] {
            assert!(text.contains(&format!("\"{word}\"")), "{word}");
        }
    }

    /// Every unknown key and wrong type of a file at once, each at its line:column; with
    /// overrides, at the field's place in the file.
    #[test]
    fn every_unknown_key_and_wrong_type_is_reported_at_once() {
        let fx = Fixture::new("all-at-once");
        let text = "\
model: {weights: ../models/base, devise: cpu}
sampling:
  steps: many
  eta: [1]
training:
  epocs: 3
  method: ddpo
  optimizer: {lr: fast, beta1: 0.9}
  hrf: {group_size: -2}
rewards:
  - {kind: jpeg, weight: heavy}
  - {kind: onnx, name: x, stages: [{model: a.onnx, output: {a: 1}}], input: {size: [1, 2, 3]}, score: {column: x}}
evaluation: {best_by: rewards, seed: 1.5}
run: {name: t, keep: yes}
";
        let e = fx.load(text, &[]).unwrap_err();
        let msg = messages(&e);
        let want: &[(u64, u64, &str)] = &[
            (
                1,
                34,
                "unknown field `devise`, expected one of weights, config, device",
            ),
            (3, 10, ""),
            (4, 8, "expected a number, got a list"),
            (6, 3, "unknown field `epocs`"),
            (
                7,
                11,
                "unknown variant `ddpo`, expected one of ddpo-is, ddpo-sf, hrf, hrf-d",
            ),
            (8, 19, "expected a number, got `fast`"),
            (9, 21, "expected a whole number ≥ 0, got -2"),
            (11, 12, "unknown variant `jpeg`"),
            (11, 26, "expected a number, got `heavy`"),
            (12, 60, "expected a whole number or text, got a mapping"),
            (12, 84, "expected a list of 2 items, got 3"),
            (12, 112, "expected a whole number, got `x`"),
            (13, 23, "unknown variant `rewards`"),
            (13, 38, "expected a whole number, got `1.5`"),
            (14, 22, "expected a whole number, got `true`"),
        ];
        for (line, column, words) in want {
            let found =
                e.0.iter()
                    .find(|x| (x.line, x.column) == (Some(*line), Some(*column)));
            let found = found.unwrap_or_else(|| panic!("nothing at {line}:{column}:\n{msg}"));
            assert!(found.message.contains(words), "{line}:{column}: {msg}");
        }
        assert_eq!(e.0.len(), want.len(), "{msg}");
        assert!(msg.contains("p.yaml:1:34: unknown field `devise`"), "{msg}");

        // With an override, each problem still has its field and place in the file.
        let e = fx.load(text, &["run.seed=2"]).unwrap_err();
        let at = |field: &str| {
            e.0.iter()
                .find(|x| x.field.as_deref() == Some(field))
                .map(|x| x.line)
        };
        assert_eq!(at("training.epocs"), Some(Some(6)), "{e}");
        assert_eq!(at("run.keep"), Some(Some(14)), "{e}");
        assert_eq!(at("sampling.eta"), Some(Some(4)), "{e}");
    }

    /// The pass reports nothing the typed parse accepts: quiet on every shipped pipeline, the
    /// resolved ones and values the reader takes in more than one spelling.
    #[test]
    fn the_all_at_once_pass_is_quiet_on_what_parses() {
        let schema = run_schema();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut texts = Vec::new();
        for dir in ["configs", "tests/pipelines"] {
            for entry in std::fs::read_dir(repo.join(dir)).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                if name.ends_with(".yaml") && !name.contains("pretrain") {
                    texts.push((name, std::fs::read_to_string(&path).unwrap()));
                }
            }
        }
        assert!(texts.len() >= 10, "{}", texts.len());
        let fx = Fixture::new("quiet");
        for text in [MINIMAL, FULL] {
            texts.push((
                "resolved".into(),
                fx.load(text, &[]).unwrap().resolved_yaml(),
            ));
        }
        texts.push((
            "spellings".into(),
            MINIMAL.replace(
                "run:",
                "sampling: {steps: '12', eta: '0.5', batch_size: 0x10, guidance: 1}\n\
                 training: {epochs: 1_000, kl_coef: .inf, method: hrf}\n\
                 advantages: ~\nrun:",
            ),
        ));
        for (name, text) in &texts {
            let typed = serde_saphyr::from_str::<RunFile>(text);
            assert!(typed.is_ok(), "{name}: {:?}", typed.err());
            let found = crate::check::problems(&schema, text);
            assert!(found.is_empty(), "{name}: {found:?}");
        }
    }

    /// Sizes that would abort, panic or fail on the file system are refused with their field
    /// and place; sizes just inside the caps pass.
    #[test]
    fn sizes_past_what_can_run_are_refused_with_their_place() {
        let fx = Fixture::new("sizes");
        let testbed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/testbed");
        let text = |section: &str, run: &str| {
            format!(
                "model: {{weights: {}}}\n{section}\nrewards:\n  - {{kind: jpeg-compressibility}}\nrun: {run}\n",
                testbed.display()
            )
        };
        let long_name = "a".repeat(300);
        let long_output = format!("{{name: t, output: {}}}", "d/".repeat(2100));
        let onnx = "rewards:\n  - {kind: onnx, name: s, stages: [{model: ../models/head.onnx}], input: {size: [0, 10]}}";
        // (section, run, field, line of the field, words of the message)
        let cases: &[(&str, &str, &str, u64, &str)] = &[
            ("sampling: {batch_size: 4294967295}", "{name: t}", "sampling.batch_size", 2, "must be ≤ 65,536 (images per batch), got 4,294,967,295"),
            ("sampling: {batch_size: 100000}", "{name: t}", "sampling.batch_size", 2, "must be ≤ 65,536"),
            ("sampling: {batch_size: 60000}", "{name: t}", "sampling.batch_size", 2, "the attention scores over 256 pixels one tensor of 7,864,320,000 elements"),
            ("sampling: {batch_size: 4, batches_per_epoch: 70000}", "{name: t}", "sampling.batches_per_epoch", 2, "must be ≤ 65,536 (batches per epoch)"),
            ("sampling: {batch_size: 1024, batches_per_epoch: 2048}", "{name: t}", "sampling.batches_per_epoch", 2, "samples per epoch"),
            ("training: {epochs: 2000000}", "{name: t}", "training.epochs", 2, "must be ≤ 1,000,000 (epochs)"),
            ("sampling: {batch_size: 512, batches_per_epoch: 4}\ntraining: {epochs: 600000}", "{name: t}", "training.epochs", 3, "make 1,228,800,000 samples"),
            ("training: {batch_size: 100000}", "{name: t}", "training.batch_size", 2, "must be ≤ 65,536"),
            ("evaluation: {final_samples: 2000000}", "{name: t}", "evaluation.final_samples", 2, "must be ≤ 1,000,000 (samples)"),
            ("training: {method: hrf-d, hrf: {copies: 70000}}", "{name: t}", "training.hrf.copies", 2, "noise copies per anchor"),
            ("sampling: {steps: 40}", &format!("{{name: {long_name}}}"), "run.name", 5, "300 bytes long: with the `-YYYYMMDD-HHMMSS` hrf appends, the run folder's name would be 316 bytes, over the file-system limit of 255 (NAME_MAX)"),
            ("sampling: {steps: 40}", "{name: 'a/b'}", "run.name", 5, "'/' cannot be in a file name"),
            ("sampling: {steps: 40}", &long_output, "run.output", 5, "(PATH_MAX)"),
        ];
        for (section, run, field, line, words) in cases {
            let e = fx.load(&text(section, run), &[]).unwrap_err();
            let msg = messages(&e);
            let found = e.0.iter().find(|x| x.field.as_deref() == Some(*field));
            let found = found.unwrap_or_else(|| panic!("no error for {field}:\n{msg}"));
            assert_eq!(found.line, Some(*line), "{field}:\n{msg}");
            assert!(found.message.contains(words), "{field}: {msg}");
            assert_eq!(e.0.len(), 1, "{msg}");
        }
        let e = fx.load(
            &text(onnx, "{name: t}").replacen(
                "rewards:\n  - {kind: jpeg-compressibility}\n",
                "",
                1,
            ),
            &[],
        );
        let msg = messages(&e.unwrap_err());
        assert!(
            msg.contains(
                "rewards[0].input.size: width and height must be in 1..=8192, got [0, 10]"
            ),
            "{msg}"
        );
        // Just inside: a sampling batch whose attention scores fit a tensor, a 239-byte name.
        let ok = text("sampling: {batch_size: 16000, batches_per_epoch: 1, steps: 2}\nevaluation: {samples: 2, final_samples: 2}", &format!("{{name: {}}}", "a".repeat(239)));
        let r = fx.load(&ok, &[]);
        // Whatever this machine's RAM, the estimate of this one is under 32 GiB.
        if let Err(e) = &r {
            assert!(
                messages(e).contains("more than the limit of")
                    && limits::memory_limit().0 < 32 << 30,
                "{e}"
            );
        }
    }

    #[test]
    fn a_memory_estimate_over_the_limit_names_the_estimate_and_the_limit() {
        let testbed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/testbed");
        let shape = ModelShape::of(&ModelSource::Folder(testbed)).unwrap();
        let sizes = RunSizes {
            sampling_batch: 8192,
            batches_per_epoch: 2,
            steps: 40,
            training_batch: 16,
            evaluation_batch: 64,
            final_samples: 1000,
            guided_sampling: false,
            guided_evaluation: false,
            base_copy: false,
            reward_inputs: vec![(256, 3072)],
        };
        let file = Path::new("p.yaml");
        let run = |limit: u64| {
            let mut p = Problems {
                file,
                list: Vec::new(),
            };
            check_sizes(
                &mut p,
                &shape,
                &sizes,
                (limit, "this machine's RAM (/proc/meminfo)".into()),
            );
            p.list
        };
        assert_eq!(run(64 << 30), []);
        let list = run(4 << 30);
        assert_eq!(list.len(), 1, "{list:?}");
        assert_eq!(list[0].field.as_deref(), Some("sampling.batch_size"));
        let msg = &list[0].message;
        assert!(msg.contains("the run needs an estimated 1"), "{msg}");
        assert!(
            msg.contains("more than the limit of 4.0 GiB (this machine's RAM (/proc/meminfo))"),
            "{msg}"
        );
    }

    /// Every property of the schema has a description (editors show it as the field's help).
    #[test]
    fn every_property_of_the_schema_has_a_description() {
        fn walk(v: &Value, at: &str, seen: &mut usize, missing: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::Object(props)) = m.get("properties") {
                        for (k, p) in props {
                            *seen += 1;
                            let ok = p
                                .get("description")
                                .and_then(Value::as_str)
                                .is_some_and(|d| !d.trim().is_empty());
                            if !ok {
                                missing.push(format!("{at}.{k}"));
                            }
                        }
                    }
                    for (k, x) in m {
                        walk(x, &format!("{at}/{k}"), seen, missing);
                    }
                }
                Value::Array(items) => {
                    for (i, x) in items.iter().enumerate() {
                        walk(x, &format!("{at}[{i}]"), seen, missing);
                    }
                }
                _ => {}
            }
        }
        let (mut seen, mut missing) = (0, Vec::new());
        walk(&run_schema(), "", &mut seen, &mut missing);
        assert!(seen > 90, "{seen} properties");
        assert!(missing.is_empty(), "no description: {missing:#?}");
    }

    /// configs/pipeline.schema.json is generated; regenerate with
    /// `hrf schema > configs/pipeline.schema.json` or `HRF_UPDATE_SCHEMA=1 cargo test -p hrf-config`.
    #[test]
    fn the_checked_in_schema_is_current() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/pipeline.schema.json");
        let want = run_schema_text();
        if std::env::var_os("HRF_UPDATE_SCHEMA").is_some_and(|v| v == "1") {
            std::fs::write(&path, &want).unwrap();
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "{} is out of date: regenerate it with `hrf schema > configs/pipeline.schema.json` \
             (or HRF_UPDATE_SCHEMA=1 cargo test -p hrf-config)",
            path.display()
        );
    }
}
