//! Every default of a run pipeline, in one place: what a field left out of the file becomes.
//!
//! - Fixed defaults: the `Default` impls of the file's sections (`TrainingRaw`, `OptimizerRaw`,
//!   `HrfRaw`, `AdvantagesRaw`, `EvaluationRaw`), of the settings the file shares with the
//!   resolved pipeline (`SamplingSettings`, `AdvantageSettings`, `TrainingSettings`), and the
//!   `#[serde(default = "…")]` functions that raw.rs names. The JSON Schema's `default`s come
//!   from these. (The enums' defaults are their `#[default]` variants, in raw.rs:
//!   `Transform::Identity`, `OnError::Fail`, `BestBy::Reward`.)
//! - Defaults that depend on the method (HRF and HRF-D take their own for some training fields,
//!   docs/ALGORITHM.md §6), on whether the pipeline has prompts, on the sampling chain or on the
//!   reward's kind: the functions in the second half, which validation calls.
//!
//! Three defaults live with types that are not the run pipeline's alone: AdamW's betas and eps
//! (`pretrain_pipeline::AdamWSettings::default()`, shared with pretraining), the model's device
//! (`auto`, model_spec.rs) and an ONNX reward's input preparation (`reward::ImageInput::default()`).

use std::path::Path;

use serde_json::Value;

use super::raw::{
    AdvantagesRaw, BestBy, EvaluationRaw, HrfRaw, OptimizerRaw, RewardKindName, ScoreRaw,
    TrainingRaw, WindowClusterRaw,
};
use crate::pretrain_pipeline::AdamWSettings;
use crate::training::{
    AdvantageMode, AdvantageSettings, ClipScale, GroupUpdate, LrSchedule, Method,
    OptimizerSettings, Preset, SamplingSettings, StepReduction, TrainingPrecision,
    TrainingSettings,
};

// ---------------------------------------------------------------------------------------------
// Fixed defaults.

impl Default for SamplingSettings {
    fn default() -> Self {
        Self {
            steps: 40,
            eta: 1.0,
            guidance: 1.0,
            batch_size: 32,
            batches_per_epoch: 2,
            sigma_min: 1e-4,
        }
    }
}

impl Default for AdvantageSettings {
    fn default() -> Self {
        Self {
            mode: AdvantageMode::Epoch,
            buffer_size: 32,
            min_count: 16,
            group_size: None,
        }
    }
}

/// The ddpo-* defaults (ddpo-pytorch's); `adv_clip`, `weight_decay` and `step_reduction` are
/// the method's (below) once a pipeline is validated.
impl Default for TrainingSettings {
    fn default() -> Self {
        Self {
            method: Method::DdpoIs,
            preset: None,
            epochs: 10,
            optimizer: {
                let a = AdamWSettings::default();
                OptimizerSettings {
                    lr: 1e-4,
                    weight_decay: 1e-4,
                    beta1: a.beta1,
                    beta2: a.beta2,
                    eps: a.eps,
                    schedule: LrSchedule::Constant,
                    warmup_epochs: 0,
                    warmup_start_factor: 0.1,
                    min_lr: None,
                }
            },
            max_grad_norm: 1.0,
            inner_epochs: 1,
            batch_size: 16,
            grad_accum: 1,
            micro_batch: None,
            precision: TrainingPrecision::Fp32,
            adv_clip: 5.0,
            clip_range: 1e-4,
            timestep_fraction: 1.0,
            step_reduction: StepReduction::Mean,
            kl_coef: 0.0,
            start: None,
            hrf: None,
            seed: 0,
        }
    }
}

impl Default for TrainingRaw {
    fn default() -> Self {
        let d = TrainingSettings::default();
        Self {
            method: d.method,
            preset: None,
            epochs: d.epochs,
            optimizer: OptimizerRaw {
                lr: d.optimizer.lr,
                weight_decay: None,
                beta1: d.optimizer.beta1,
                beta2: d.optimizer.beta2,
                eps: d.optimizer.eps,
                schedule: d.optimizer.schedule,
                warmup_epochs: d.optimizer.warmup_epochs,
                warmup_start_factor: d.optimizer.warmup_start_factor,
                min_lr: None,
            },
            max_grad_norm: d.max_grad_norm,
            inner_epochs: d.inner_epochs,
            batch_size: None,
            grad_accum: d.grad_accum,
            micro_batch: None,
            precision: d.precision,
            adv_clip: None,
            clip_range: d.clip_range,
            timestep_fraction: None,
            step_reduction: None,
            kl_coef: d.kl_coef,
            start: None,
            hrf: None,
        }
    }
}

impl Default for OptimizerRaw {
    fn default() -> Self {
        TrainingRaw::default().optimizer
    }
}

impl Default for HrfRaw {
    fn default() -> Self {
        Self {
            group_size: None,
            window: None,
            stride: None,
            copies: None,
            beta: 0.5,
            update: None,
            clip_scale: None,
        }
    }
}

impl Default for AdvantagesRaw {
    fn default() -> Self {
        let d = AdvantageSettings::default();
        Self {
            mode: None,
            buffer_size: d.buffer_size,
            min_count: d.min_count,
            group_size: None,
        }
    }
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
            features: None,
            gold: Vec::new(),
        }
    }
}

/// `rewards[i].weight`.
pub(crate) fn reward_weight() -> f64 {
    1.0
}

/// `rewards[i].batch_size`.
pub(crate) fn reward_batch_size() -> usize {
    256
}

/// `run.output`, relative to the YAML file.
pub(crate) fn run_output() -> String {
    "runs".into()
}

/// `run.save_every`.
pub(crate) fn run_save_every() -> usize {
    5
}

/// `run.keep`.
pub(crate) fn run_keep() -> usize {
    2
}

// ---------------------------------------------------------------------------------------------
// Defaults that depend on the method, the prompts, the chain or the reward's kind.

/// `training.adv_clip`: 5 for ddpo-*, 2.5 for hrf/hrf-d.
pub(super) fn adv_clip(method: Method) -> f64 {
    if method.is_hierarchical() {
        2.5
    } else {
        5.0
    }
}

/// `training.optimizer.weight_decay`: 1e-4 for ddpo-*, 1e-3 for hrf/hrf-d.
pub(super) fn weight_decay(method: Method) -> f64 {
    if method.is_hierarchical() {
        1e-3
    } else {
        1e-4
    }
}

/// `training.step_reduction`: `mean` for ddpo-* (ddpo-pytorch), `sum` for hrf/hrf-d (the HRF
/// authors).
pub(super) fn step_reduction(method: Method) -> StepReduction {
    if method.is_hierarchical() {
        StepReduction::Sum
    } else {
        StepReduction::Mean
    }
}

/// `advantages.mode`: `group` for hrf and hrf-d; else `per-prompt` when the pipeline has
/// prompts, else `epoch`.
pub(super) fn advantage_mode(method: Method, conditional: bool) -> AdvantageMode {
    if method.is_hierarchical() {
        AdvantageMode::Group
    } else if conditional {
        AdvantageMode::PerPrompt
    } else {
        AdvantageMode::Epoch
    }
}

/// `training.hrf.window` for a chain of `steps` steps: [0, N/2) then [N/2, N), half the epochs
/// each.
pub(super) fn hrf_window(steps: usize) -> Vec<WindowClusterRaw> {
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
}

/// `training.batch_size`: 16 (ddpo-pytorch's train batch); with one group per optimiser step,
/// the group size.
pub(super) fn train_batch_size(per_group: Option<usize>) -> usize {
    per_group.unwrap_or(16)
}

/// `training.timestep_fraction`: every trainable step (1, as ddpo-pytorch's and the authors').
pub(super) fn timestep_fraction() -> f64 {
    1.0
}

/// `training.hrf.group_size`: 4; 5 with `preset: authors` (the authors' batch of members per
/// anchor).
pub(super) fn hrf_group_size(preset: Option<Preset>) -> usize {
    match preset {
        Some(Preset::Authors) => 5,
        None => 4,
    }
}

/// `training.hrf.stride` (HRF-D's candidate spacing): 2; with `preset: authors`, N/20 (at
/// least 1): a candidate at every step of a 20-step chain, every 2nd of 40.
pub(super) fn hrf_stride(preset: Option<Preset>, steps: usize) -> usize {
    match preset {
        Some(Preset::Authors) => (steps / 20).max(1),
        None => 2,
    }
}

/// `training.hrf.update`: `shuffled`; `per-group` with `preset: authors`.
pub(super) fn hrf_update(preset: Option<Preset>) -> GroupUpdate {
    match preset {
        Some(Preset::Authors) => GroupUpdate::PerGroup,
        None => GroupUpdate::Shuffled,
    }
}

/// `training.hrf.clip_scale`: `trainable`; `chain` with `preset: authors`.
pub(super) fn hrf_clip_scale(preset: Option<Preset>) -> ClipScale {
    match preset {
        Some(Preset::Authors) => ClipScale::Chain,
        None => ClipScale::Trainable,
    }
}

/// `training.hrf.copies` (HRF-D's noise copies per anchor): the group size.
pub(super) fn hrf_copies(group_size: usize) -> usize {
    group_size
}

/// `evaluation.guidance`: `sampling.guidance`.
pub(super) fn evaluation_guidance(sampling_guidance: f64) -> f64 {
    sampling_guidance
}

/// `rewards[i].name`: the kind for built-ins; for `wasm` and `native` the plugin file's stem,
/// for `process` the stem of the command's last word (else the kind), for `http` and
/// `openai-judge` the model's name. None for `onnx`, which needs a name.
pub(super) fn reward_name(r: &crate::pipeline::RewardRaw) -> Option<String> {
    let stem = |f: &Path| f.file_stem().map(|f| f.to_string_lossy().into_owned());
    let kind = r.kind;
    Some(match kind {
        RewardKindName::Onnx => return None,
        RewardKindName::Process => r
            .command
            .as_deref()
            .and_then(|c| c.last())
            .and_then(|f| stem(Path::new(f)))
            .unwrap_or_else(|| kind.as_str().to_string()),
        RewardKindName::Wasm | RewardKindName::Native => r
            .path
            .as_deref()
            .and_then(stem)
            .unwrap_or_else(|| kind.as_str().to_string()),
        // `org/name:tag` → `name-tag`.
        RewardKindName::Http | RewardKindName::OpenAiJudge => r
            .model
            .as_deref()
            .and_then(|m| m.rsplit('/').next())
            .filter(|m| !m.is_empty())
            .map(|m| m.replace(':', "-"))
            .unwrap_or_else(|| kind.as_str().to_string()),
        _ => kind.as_str().to_string(),
    })
}

/// `rewards[i].timeout_s`: 60 s for a process, per request 30 s for http and 60 s for a judge,
/// 5 s otherwise.
pub(super) fn reward_timeout_s(kind: RewardKindName) -> f64 {
    match kind {
        RewardKindName::Process => 60.0,
        RewardKindName::Http => 30.0,
        RewardKindName::OpenAiJudge => 60.0,
        _ => 5.0,
    }
}

/// `rewards[i].memory_mb` of a `wasm` reward, in MiB.
pub(super) fn wasm_memory_mb() -> u64 {
    256
}

/// `rewards[i].config` of a plugin (`wasm`, `native`, `process`): `{}`.
pub(super) fn plugin_config() -> Value {
    serde_json::json!({})
}

/// `rewards[i].score` of an `onnx` reward: the last output's column 0.
pub(super) fn onnx_score() -> ScoreRaw {
    ScoreRaw::Column(0)
}
