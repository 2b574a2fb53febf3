//! The pipeline file as written (`RunFile` and its sections): the shapes serde reads, unknown
//! keys refused, and the doc comments the JSON Schema (`schema.rs`) shows. Every default these
//! types take is in `defaults.rs`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::features::FeatureExtractor;
use crate::guard::GuardSettings;
use crate::model_spec::ModelSpecRaw;
use crate::reward::{HttpInputs, ImageEncoding, ImageInput, StageSpec};
use crate::training::{
    AdvantageMode, ClipScale, GroupUpdate, LrSchedule, Method, Preset, SamplingSettings,
    StartIndex, StepReduction, TrainingPrecision,
};

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
    /// Floors on diversity and on gold rewards, checked at every evaluation, and what the run
    /// does when they fail (docs/GUARDS.md). Omitted: no guard.
    #[serde(default)]
    pub guard: Option<GuardSettings>,
    /// The run's name, output folder, seed and checkpoints.
    pub run: RunSettingsRaw,
}

/// `training:` as written. Fields left out take the method's defaults (docs/ALGORITHM.md §6).
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingRaw {
    /// `ddpo-is`, `ddpo-sf`, `hrf` or `hrf-d`.
    pub method: Method,
    /// Named defaults for the fields left out: `authors` (hrf / hrf-d only) runs HRF as the
    /// authors' code does: timestep_fraction 1, `hrf.update: per-group`, `hrf.clip_scale:
    /// chain`, `hrf.group_size` 5, `hrf.stride` N/20 (docs/ALGORITHM.md §3.5).
    pub preset: Option<Preset>,
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
    /// Default 16; with `hrf.update: per-group` a train batch is one group (`hrf.group_size`).
    pub batch_size: Option<usize>,
    /// Train batches whose gradients add up to one optimiser step.
    pub grad_accum: usize,
    /// (sample, step) pairs per forward/backward pass in training, taken across the train
    /// batch's steps; at most 65,536. Default: one trained step of each sample of the batch
    /// per pass (ddpo-pytorch's loop). Larger passes run faster on a small model; smaller ones
    /// hold less memory. The gradient and the optimiser steps are the same up to float
    /// rounding.
    pub micro_batch: Option<usize>,
    /// `fp32` (default) or `bf16`: libtorch's autocast to bfloat16 for the UNet's forward and
    /// backward passes in the epoch's sampling and training (convolutions, linear layers and
    /// attention in bf16; norms, softmax, the model's output, log-probs, ratios, advantages,
    /// weights and AdamW in fp32). Evaluations sample in fp32, so runs at either precision
    /// are measured alike. On the CPU and CUDA.
    pub precision: TrainingPrecision,
    /// Advantage clip. Default: 5 for ddpo-*, 2.5 for hrf/hrf-d (there multiplied by the
    /// window fraction f).
    pub adv_clip: Option<f64>,
    /// PPO ratio clip range (hrf/hrf-d: multiplied by f).
    pub clip_range: f64,
    /// Fraction of each sample's trainable steps trained per inner epoch, in (0, 1]. Default 1.
    pub timestep_fraction: Option<f64>,
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
    /// `constant` (default) or `cosine`: the learning rate per epoch after the warm-up.
    pub schedule: LrSchedule,
    /// Epochs of linear warm-up from `lr · warmup_start_factor` up to `lr` (< epochs for
    /// `cosine`, ≤ epochs for `constant`).
    pub warmup_epochs: usize,
    /// Where the warm-up starts, as a factor of `lr`, in (0, 1].
    pub warmup_start_factor: f64,
    /// `cosine` only: the rate the cosine decays towards, in [0, lr]. Default 0.
    pub min_lr: Option<f64>,
}

/// `training.hrf:` as written.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HrfRaw {
    /// Members per anchor group; the epoch's samples must split into whole groups. Default 4
    /// (5 with `preset: authors`).
    pub group_size: Option<usize>,
    /// The window schedule: clusters of start indices, each active for a fraction of the
    /// epochs (fractions summing to 1) or a number of epochs (summing to `training.epochs`).
    /// Default: [0, N/2) then [N/2, N), half the epochs each.
    pub window: Option<Vec<WindowClusterRaw>>,
    /// HRF-D: candidate starts range(0, N, stride); at least 3 candidates. Default 2 (N/20
    /// with `preset: authors`).
    pub stride: Option<usize>,
    /// HRF-D: noise copies per anchor (default: group_size).
    pub copies: Option<usize>,
    /// HRF-D: weight of the diversity loss D in the choice of k.
    pub beta: f64,
    /// `shuffled` (default): train batches of `training.batch_size` across groups;
    /// `per-group` (`preset: authors`): one anchor group per optimiser step.
    pub update: Option<GroupUpdate>,
    /// The window fraction f scaling both clips: `trainable` (default, N_train(k)/N_train(0)),
    /// `chain` (`preset: authors`, (N − k)/N) or `off` (f ≡ 1).
    pub clip_scale: Option<ClipScale>,
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
    /// `group` mode with ddpo-is / ddpo-sf (GRPO-style groups, the baseline that separates
    /// group standardisation from HRF's anchors): samples per group, ≥ 2, dividing the epoch's
    /// samples; each group's consecutive samples share a prompt. Not for hrf / hrf-d, whose
    /// groups are `training.hrf.group_size`.
    pub group_size: Option<usize>,
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
    /// A model behind an inference server speaking the Open Inference Protocol (KServe v2 REST:
    /// Triton, KServe, Seldon MLServer): `POST {url}/v2/models/{model}/infer`.
    Http,
    /// A vision-language judge behind an OpenAI-compatible chat-completions endpoint (vLLM,
    /// SGLang, llama.cpp): `POST {url}/v1/chat/completions`, the score read from the reply.
    #[serde(rename = "openai-judge")]
    OpenAiJudge,
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
            Self::Http => "http",
            Self::OpenAiJudge => "openai-judge",
        }
    }
}

/// One entry of `rewards:` as written.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RewardRaw {
    /// A built-in reward, or `onnx`, `wasm`, `native`, `process`, `http`, `openai-judge`.
    pub kind: RewardKindName,
    /// Required for `onnx`; built-ins default to their kind. Unique, [A-Za-z0-9._-]+.
    #[serde(default)]
    pub name: Option<String>,
    /// Weight in the combined reward: finite, non-zero.
    #[serde(default = "crate::pipeline::defaults::reward_weight")]
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
    #[serde(default = "crate::pipeline::defaults::reward_batch_size")]
    pub batch_size: usize,
    /// `wasm` and `native`: the plugin file, relative to the YAML file.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// `wasm` and `native`: handed to the plugin (`configure` / `create`) as JSON (default `{}`).
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Value>")]
    pub config: Option<serde_json::Value>,
    /// `wasm`, `process`, `http` and `openai-judge`: seconds one call (a server: one request)
    /// may take before it is stopped (defaults 5, 60, 30 and 60).
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
    /// `http` and `openai-judge`: the server's base URL, `http://` or `https://` (TLS through
    /// rustls).
    #[serde(default)]
    pub url: Option<String>,
    /// `http` and `openai-judge`: the model's name on the server.
    #[serde(default)]
    pub model: Option<String>,
    /// `http` only: `uint8` (a UINT8 [B, H, W, C] tensor, default) or `png` (PNG bytes in a
    /// BYTES tensor).
    #[serde(default)]
    pub encoding: Option<ImageEncoding>,
    /// `http` only: the input tensors' names (`images`, `prompts`, `metadata`; `null` leaves
    /// one out).
    #[serde(default)]
    pub inputs: Option<HttpInputs>,
    /// `http` only: the output tensor the scores are read from, one number per image (default
    /// `score`).
    #[serde(default)]
    pub output: Option<String>,
    /// `http` only: images per request (default 64); a call of `batch_size` images is split
    /// into requests of at most this many.
    #[serde(default)]
    pub max_batch: Option<usize>,
    /// `http` and `openai-judge`: requests in flight at once (1..=64, default 4).
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// `http` and `openai-judge`: retries of a request after a connection error, a timeout, 429 or 5xx,
    /// never after another 4xx (0..=10, default 3).
    #[serde(default)]
    pub retries: Option<u32>,
    /// `http` and `openai-judge`: seconds before the first retry, doubled for each next one
    /// (default 0.5).
    #[serde(default)]
    pub backoff_s: Option<f64>,
    /// `http` and `openai-judge`: the environment variable holding a token sent as
    /// `Authorization: Bearer
    /// …`; the token itself is never written anywhere.
    #[serde(default)]
    pub auth_env: Option<String>,
    /// `http` and `openai-judge`: a PEM file of the certificate authorities an `https://`
    /// server's certificate must chain to, relative to the YAML file (default: Mozilla's roots);
    /// for servers behind a private CA.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// `http` and `openai-judge`: the largest reply read, in MiB (1..=1024, default 16).
    #[serde(default)]
    pub max_reply_mb: Option<u64>,
    /// `openai-judge` only: the question asked with each image; `{prompt}` becomes the sample's
    /// prompt.
    #[serde(default)]
    pub template: Option<String>,
    /// `openai-judge` only: a regular expression whose first match in the reply is the score
    /// (its first group, if it has one); default: the first number.
    #[serde(default)]
    pub score_regex: Option<String>,
    /// `openai-judge` only: instead of `score_regex`, the reply read as JSON and the score taken
    /// from this field (`a.b` for nested fields).
    #[serde(default)]
    pub score_field: Option<String>,
    /// `openai-judge` only: the reply's length cap in tokens (default 32).
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// `openai-judge` only: sampling temperature (default 0: the judge's most likely answer).
    #[serde(default)]
    pub temperature: Option<f64>,
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
    /// The image features diversity is measured in: `{kind: classifier}` (the testbed's
    /// evaluation classifier; the default for pixel models), `{kind: onnx, model: …}` (an image
    /// encoder of yours) or `{kind: pixels}` (downsampled pixels, weak; the default for Stable
    /// Diffusion pipelines).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub features: Option<FeatureExtractor>,
    /// Gold rewards: scored on every evaluation's samples and logged beside the training
    /// reward, never trained on. Entries as in `rewards:`, names unique among them.
    #[serde(skip_serializing)]
    pub gold: Vec<RewardRaw>,
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
    #[serde(default = "crate::pipeline::defaults::run_output")]
    pub output: String,
    /// Seed of the training noise and shuffles.
    #[serde(default)]
    pub seed: u64,
    /// Save a checkpoint every this many epochs.
    #[serde(default = "crate::pipeline::defaults::run_save_every")]
    pub save_every: usize,
    /// Checkpoints kept (best/ and final/ apart).
    #[serde(default = "crate::pipeline::defaults::run_keep")]
    pub keep: usize,
}
