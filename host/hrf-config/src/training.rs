//! Settings of the RL fine-tuning loop (docs/ALGORITHM.md §2, §6), as a run pipeline's
//! `sampling:`, `training:` and `advantages:` sections resolve to: the method, sampling, the
//! DDPO-IS / DDPO-SF update, HRF's groups and window, advantages. Their defaults
//! (ddpo-pytorch's where docs/ALGORITHM.md §6 says so) are in `pipeline/defaults.rs`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::pretrain_pipeline::AdamWSettings;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// DDPO with importance sampling and ratio clipping (PPO-style).
    DdpoIs,
    /// DDPO-SF: REINFORCE, one optimiser step per epoch.
    DdpoSf,
    /// Hierarchical Reward Fine-tuning: trajectories of interest re-noised from an anchor to a
    /// start index k drawn from a sliding window schedule; clipping scaled by the window.
    Hrf,
    /// HRF-D: k chosen per anchor from the reward gain and the diversity loss of candidate starts.
    HrfD,
}

impl Method {
    /// HRF and HRF-D (anchored groups, window-scaled clipping).
    pub fn is_hierarchical(self) -> bool {
        matches!(self, Self::Hrf | Self::HrfD)
    }
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingSettings {
    /// DDIM steps N.
    pub steps: i64,
    /// DDIM η in [0, 1]: 0 deterministic, 1 DDPM-like (DDPO trains η > 0 chains).
    pub eta: f64,
    /// Classifier-free guidance weight for conditional models (1 = none).
    pub guidance: f64,
    /// Images per sampling batch, at most 65,536. The batch's largest tensor (attention scores,
    /// feature maps, the batch's trajectories) must stay within 2³¹ − 1 elements, and hrf's
    /// estimate of the run's memory (model, AdamW, sampling/training/evaluation batches, the
    /// epoch's trajectories) within this machine's RAM (/proc/meminfo), at most 1 TiB.
    pub batch_size: usize,
    /// Sampling batches per epoch, at most 65,536; batch_size × batches_per_epoch at most
    /// 1,048,576 samples.
    pub batches_per_epoch: usize,
    /// Steps with σ (at η = 1) below this are sampled but never trained (docs/ALGORITHM.md §1.3).
    pub sigma_min: f64,
}

/// Where a DDPO ablation starts training each sample's chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum StartIndex {
    /// Every sample trains the steps k..N−1 (k < sampling.steps).
    Fixed(usize),
    /// Each sample draws its own k uniformly from 0..N, every epoch, without a schedule.
    Uniform,
}

/// One cluster of the window schedule, resolved: its start indices and its epoch count.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct WindowCluster {
    pub steps: Vec<usize>,
    pub epochs: usize,
}

/// HRF / HRF-D settings, resolved (docs/ALGORITHM.md §3, §4).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HrfSettings {
    /// Members per anchor group (the samples that share an anchor and a start index).
    pub group_size: usize,
    /// The window schedule, in order; epoch counts sum to `training.epochs`.
    pub window: Vec<WindowCluster>,
    /// HRF-D: candidate starts range(0, N, stride).
    pub stride: usize,
    /// HRF-D: noise copies per anchor, shared by every candidate.
    pub copies: usize,
    /// HRF-D: weight of the diversity loss in the choice of k.
    pub beta: f64,
}

impl HrfSettings {
    /// The cluster active at `epoch`.
    pub fn cluster_at(&self, epoch: u64) -> &WindowCluster {
        let mut end = 0u64;
        for c in &self.window {
            end += c.epochs as u64;
            if epoch < end {
                return c;
            }
        }
        self.window.last().expect("validated: at least one cluster")
    }
}

/// The `training:` section, resolved (the YAML's shape is `pipeline::TrainingRaw`).
#[derive(Debug, Clone, PartialEq, Serialize)]
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
    /// DDPO ablations: train only the steps from a start index on (trajectories still start
    /// from pure noise). None: every step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<StartIndex>,
    /// HRF / HRF-D settings (resolved for those methods only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hrf: Option<HrfSettings>,
    /// Set from `run.seed` by validation; not a YAML field (one seed per run).
    #[serde(skip)]
    pub seed: u64,
}
