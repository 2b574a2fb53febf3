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

/// `training.precision`: what the UNet's forward and backward passes compute in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TrainingPrecision {
    /// 32-bit floats throughout.
    #[default]
    Fp32,
    /// libtorch's autocast to bfloat16 (as `torch.autocast(dtype=torch.bfloat16)`): the
    /// convolutions, linear layers and attention of the epoch's sampling and training passes
    /// in bf16, norms and softmax in fp32; the model's output, the log-probs, ratios,
    /// advantages, the weights and AdamW stay fp32.
    Bf16,
}

impl TrainingPrecision {
    pub fn is_fp32(&self) -> bool {
        *self == Self::Fp32
    }
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
    /// `group` mode for ddpo-is / ddpo-sf: samples per group (consecutive samples sharing a
    /// prompt). HRF's groups are its anchor groups (`training.hrf.group_size`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_size: Option<usize>,
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

/// How the learning rate moves over the epochs (`training.optimizer.schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LrSchedule {
    /// `lr` in every epoch after the warm-up.
    #[default]
    Constant,
    /// Half a cosine from `lr` down towards `min_lr` over the epochs after the warm-up
    /// (torch's `CosineAnnealingLR` with `T_max` = epochs − warm-up).
    Cosine,
}

/// The fine-tuning optimiser, resolved: AdamW's settings and the learning-rate schedule. The
/// rate is set once per epoch (`lr_at`), a pure function of the epoch, so a resumed run takes
/// exactly the rates of an uninterrupted one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OptimizerSettings {
    /// The peak learning rate (after the warm-up).
    pub lr: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub schedule: LrSchedule,
    /// Epochs of linear warm-up from `lr · warmup_start_factor` to `lr` (torch's `LinearLR`).
    pub warmup_epochs: usize,
    pub warmup_start_factor: f64,
    /// The floor of the cosine (`eta_min`); None for `constant`, which has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_lr: Option<f64>,
}

impl OptimizerSettings {
    /// The learning rate of epoch `epoch` (0-based) of a run of `epochs` epochs, as torch's
    /// `SequentialLR([LinearLR(start_factor, 1, W), CosineAnnealingLR(epochs − W, min_lr)],
    /// milestones=[W])` gives it (the cosine part left out for `constant`).
    pub fn lr_at(&self, epoch: u64, epochs: usize) -> f64 {
        let e = epoch as f64;
        let w = self.warmup_epochs as f64;
        if e < w {
            let s = self.warmup_start_factor;
            return self.lr * (s + (1.0 - s) * e / w);
        }
        match self.schedule {
            LrSchedule::Constant => self.lr,
            LrSchedule::Cosine => {
                let t = (epochs as f64 - w).max(1.0);
                let phase = ((e - w) / t).min(1.0);
                let floor = self.min_lr.unwrap_or(0.0);
                floor + (self.lr - floor) * (1.0 + (std::f64::consts::PI * phase).cos()) / 2.0
            }
        }
    }

    /// AdamW's part.
    pub fn adamw(&self) -> AdamWSettings {
        AdamWSettings {
            lr: self.lr,
            weight_decay: self.weight_decay,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
        }
    }
}

/// `training.preset`: a named set of defaults for the fields a pipeline leaves out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// HRF / HRF-D as the authors' code runs them (docs/ALGORITHM.md §3.5): the whole window
    /// k..N−1 trained (timestep_fraction 1), one optimiser step per anchor group, f = (N − k)/N,
    /// groups of 5, HRF-D candidates at every step of a 20-step chain (every N/20-th).
    Authors,
}

/// `training.hrf.update`: how train batches are cut from the epoch's samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "kebab-case")]
pub enum GroupUpdate {
    /// Samples shuffled across groups into train batches of `training.batch_size` (rows of
    /// different k share a batch).
    #[default]
    Shuffled,
    /// One anchor group per train batch (one k per optimiser step), groups in shuffled order:
    /// the authors' loop.
    PerGroup,
}

/// `training.hrf.clip_scale`: the window fraction f that scales HRF's two clips.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ClipScale {
    /// f = N_train(k) / N_train(0): the share of the chain's trainable steps (degenerate steps
    /// not counted).
    #[default]
    Trainable,
    /// f = (N − k) / N, every step of the chain counted: the authors' code.
    Chain,
    /// f ≡ 1: no window scaling (the ablation "HRF without f").
    Off,
}

// By hand: YAML 1.1 reads a plain `off` as the boolean false (`--set
// training.hrf.clip_scale=off` does), which here means `off`.
impl<'de> Deserialize<'de> for ClipScale {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ClipScale;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("one of trainable, chain, off")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<ClipScale, E> {
                if v {
                    Err(E::invalid_value(serde::de::Unexpected::Bool(v), &self))
                } else {
                    Ok(ClipScale::Off)
                }
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ClipScale, E> {
                match v {
                    "trainable" => Ok(ClipScale::Trainable),
                    "chain" => Ok(ClipScale::Chain),
                    "off" | "false" => Ok(ClipScale::Off),
                    _ => Err(E::unknown_variant(v, &["trainable", "chain", "off"])),
                }
            }
        }
        d.deserialize_any(V)
    }
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
    /// How train batches are cut: across groups, or one group per optimiser step.
    pub update: GroupUpdate,
    /// The window fraction f that scales both clips.
    pub clip_scale: ClipScale,
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

impl TrainingSettings {
    /// The rows of one forward/backward pass in training and the field that sets them:
    /// `micro_batch` when given, else the train batch (one step of each of its samples).
    pub fn pass_rows(&self) -> (usize, &'static str) {
        match self.micro_batch {
            Some(m) => (m, "training.micro_batch"),
            None => (self.batch_size, "training.batch_size"),
        }
    }
}

/// The `training:` section, resolved (the YAML's shape is `pipeline::TrainingRaw`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainingSettings {
    pub method: Method,
    /// The named defaults the pipeline chose, if any (every field below is already filled).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preset: Option<Preset>,
    pub epochs: usize,
    pub optimizer: OptimizerSettings,
    pub max_grad_norm: f64,
    pub inner_epochs: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    /// (sample, step) pairs per forward/backward pass; None: one step of each sample of the
    /// train batch per pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub micro_batch: Option<usize>,
    /// The UNet's compute precision in the epoch's sampling and training passes.
    #[serde(default, skip_serializing_if = "TrainingPrecision::is_fp32")]
    pub precision: TrainingPrecision,
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
