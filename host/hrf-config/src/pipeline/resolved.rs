//! The validated pipeline (`RunPipeline`) and its resolved sections: paths absolute, every
//! default filled. Its hand-written `Serialize` writes it back in the file's shape (the
//! resolved pipeline a run folder keeps, itself a valid pipeline); `read_resolved` reads one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use super::raw::{BestBy, OnError, ScoreRaw, Transform};
use crate::features::FeatureExtractor;
use crate::guard::GuardSettings;
use crate::model_spec::{ModelSource, ModelSpec};
use crate::reward::{HttpInputs, ImageEncoding, ImageInput, StageSpec};
use crate::training::{AdvantageSettings, SamplingSettings, TrainingSettings};
use crate::ConfigErrors;

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
    /// `evaluation.gold`: scored at every evaluation, never trained on.
    pub gold: Vec<RewardSpec>,
    /// `guard:`, when the pipeline has one.
    pub guard: Option<GuardSettings>,
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
    Http(HttpSpec),
    OpenAiJudge(JudgeSpec),
}

/// What every reward behind a server shares (`kind: http`, `kind: openai-judge`), validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerSpec {
    /// The base URL, without a trailing `/`.
    pub url: String,
    /// The model's name on the server.
    pub model: String,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Seconds per request.
    pub timeout_s: f64,
    pub retries: u32,
    pub backoff_s: f64,
    /// The variable's name; the token is read from it when the reward is built.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_env: Option<String>,
    pub max_reply_mb: u64,
    /// Resolved against the YAML's folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
}

/// A `kind: http` reward (Open Inference Protocol, KServe v2 REST), validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpSpec {
    #[serde(flatten)]
    pub server: ServerSpec,
    pub encoding: ImageEncoding,
    pub inputs: HttpInputs,
    pub output: String,
    pub max_batch: usize,
}

/// A `kind: openai-judge` reward (a vision-language model behind an OpenAI-compatible
/// chat-completions endpoint), validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JudgeSpec {
    #[serde(flatten)]
    pub server: ServerSpec,
    /// The question asked with each image; `{prompt}` becomes the sample's prompt.
    pub template: String,
    /// How the score is read from the reply (see [`ScoreFrom`]).
    #[serde(flatten)]
    pub score_from: ScoreFrom,
    pub max_tokens: u32,
    pub temperature: f64,
}

/// Where a judge's score is in its reply's text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum ScoreFrom {
    /// The first match of this regular expression (its first group, if it has one).
    #[serde(rename = "score_regex")]
    Regex(String),
    /// This field of the reply read as JSON (`a.b` for nested fields).
    #[serde(rename = "score_field")]
    Field(String),
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
    /// The model's default filled in (`FeatureExtractor::default_for`); an ONNX encoder's
    /// path resolved against the YAML's folder.
    pub features: FeatureExtractor,
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
    evaluation: ResolvedEvaluation<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    guard: Option<&'a GuardSettings>,
    run: &'a RunSettings,
}

#[derive(Serialize)]
struct ResolvedEvaluation<'a> {
    #[serde(flatten)]
    settings: &'a EvaluationSettings,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    gold: Vec<ResolvedReward<'a>>,
}

#[derive(Serialize)]
struct ResolvedModel<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    weights: Option<&'a Path>,
    #[serde(skip_serializing_if = "Option::is_none")]
    config: Option<&'a str>,
    device: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    lora: Option<&'a crate::model_spec::LoraSettings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    negative_prompt: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dtype: Option<crate::model_spec::Precision>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gradient_checkpointing: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    workers: Option<usize>,
}

#[derive(Serialize)]
struct ResolvedReward<'a> {
    kind: &'a str,
    name: &'a str,
    weight: f64,
    batch_size: usize,
    on_error: OnError,
    transform: Transform,
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
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    http: Option<&'a HttpSpec>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    judge: Option<&'a JudgeSpec>,
}

impl Serialize for RunPipeline {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (weights, config) = match &self.model.source {
            ModelSource::Folder(p) => (Some(p.as_path()), None),
            ModelSource::Named(n) => (None, Some(n.as_str())),
        };
        Resolved {
            model: ResolvedModel {
                weights,
                config,
                device: &self.model.device,
                lora: self.model.lora.as_ref(),
                negative_prompt: self
                    .model
                    .is_text_to_image()
                    .then_some(self.model.negative_prompt.as_str()),
                dtype: self.model.is_text_to_image().then_some(self.model.dtype),
                gradient_checkpointing: self
                    .model
                    .is_text_to_image()
                    .then_some(self.model.gradient_checkpointing),
                workers: (self.model.workers > 1).then_some(self.model.workers),
            },
            scheduler: self.scheduler.as_ref(),
            sampling: &self.sampling,
            training: &self.training,
            advantages: &self.advantages,
            prompts: &self.prompts,
            rewards: self.rewards.iter().map(resolved_reward).collect(),
            evaluation: ResolvedEvaluation {
                settings: &self.evaluation,
                gold: self.gold.iter().map(resolved_reward).collect(),
            },
            guard: self.guard.as_ref(),
            run: &self.run,
        }
        .serialize(s)
    }
}

/// A reward entry in the file's shape.
fn resolved_reward(r: &RewardSpec) -> ResolvedReward<'_> {
    let mut out = ResolvedReward {
        kind: "onnx",
        name: &r.name,
        weight: r.weight,
        batch_size: r.batch_size,
        on_error: r.on_error,
        transform: r.transform,
        stages: None,
        input: None,
        score: None,
        classes: None,
        wasm: None,
        native: None,
        process: None,
        http: None,
        judge: None,
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
        RewardKind::Http(h) => {
            out.kind = "http";
            out.http = Some(h);
        }
        RewardKind::OpenAiJudge(j) => {
            out.kind = "openai-judge";
            out.judge = Some(j);
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
}
