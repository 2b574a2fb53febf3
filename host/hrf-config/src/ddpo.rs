//! Settings of the RL fine-tuning loop (DESIGN.md §3.2, §3.4): sampling, the DDPO-IS / DDPO-SF
//! update, advantages. Defaults are ddpo-pytorch's where DESIGN.md §3.4 says so.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::pretrain::AdamWSettings;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// DDPO with importance sampling and ratio clipping (PPO-style).
    DdpoIs,
    /// DDPO-SF: REINFORCE, one optimiser step per epoch.
    DdpoSf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum StepReduction {
    /// Gradients averaged over the trained step slots (ddpo-pytorch).
    Mean,
    /// Gradients summed over the trained step slots (the HRF authors).
    Sum,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AdvantageMode {
    Epoch,
    PerPrompt,
    Group,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AdvantageSettings {
    pub mode: AdvantageMode,
    pub buffer_size: usize,
    pub min_count: usize,
}

impl Default for AdvantageSettings {
    fn default() -> Self {
        Self {
            mode: AdvantageMode::Epoch,
            buffer_size: 32,
            min_count: 16,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingSettings {
    /// DDIM steps N.
    pub steps: i64,
    pub eta: f64,
    /// Classifier-free guidance weight for conditional models (1 = none).
    pub guidance: f64,
    pub batch_size: usize,
    pub batches_per_epoch: usize,
    /// Steps with σ (at η = 1) below this are sampled but never trained (DESIGN.md §3.1).
    pub sigma_min: f64,
}

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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingSettings {
    pub method: Method,
    pub epochs: usize,
    pub optimizer: AdamWSettings,
    pub max_grad_norm: f64,
    pub inner_epochs: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub adv_clip: f64,
    pub clip_range: f64,
    /// Fraction of each sample's trainable steps trained per inner epoch.
    pub timestep_fraction: f64,
    pub step_reduction: StepReduction,
    /// Weight of the KL-to-base regulariser (0: off).
    pub kl_coef: f64,
    /// Set from `run.seed` by validation; not a YAML field (one seed per run).
    #[serde(skip)]
    pub seed: u64,
}

impl Default for TrainingSettings {
    fn default() -> Self {
        Self {
            method: Method::DdpoIs,
            epochs: 10,
            optimizer: AdamWSettings {
                lr: 1e-4,
                weight_decay: 1e-4,
                ..AdamWSettings::default()
            },
            max_grad_norm: 1.0,
            inner_epochs: 1,
            batch_size: 16,
            grad_accum: 1,
            adv_clip: 5.0,
            clip_range: 1e-4,
            timestep_fraction: 1.0,
            step_reduction: StepReduction::Mean,
            kl_coef: 0.0,
            seed: 0,
        }
    }
}
