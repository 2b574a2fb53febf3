//! The clipped policy-gradient loss of DDPO-IS on stored DDIM steps (docs/ALGORITHM.md §2.3):
//! recompute log p_θ(x_{t−1} | x_t), ρ = exp(log p_θ − log p_old), and
//! loss = mean over the batch of max(−A·ρ, −A·clip(ρ, 1 − c, 1 + c)).

use hrf_diffusion::{DdimScheduler, PrevSample};
use tch::{Kind, Tensor};

use crate::policy::Policy;

/// One train batch's slot: each sample at its own step of the chain.
pub struct StepBatch<'a> {
    /// x_t, `[B, C, H, W]`.
    pub sample: &'a Tensor,
    /// The stored x_{t−1}.
    pub prev: &'a Tensor,
    /// Step index per sample, `[B]`.
    pub step_index: &'a Tensor,
    pub labels: Option<&'a Tensor>,
    /// log-probs recorded while sampling, `[B]`.
    pub old_log_prob: &'a Tensor,
    /// Clipped advantages, `[B]`.
    pub advantages: &'a Tensor,
    /// Each row's step key (`sampling::step_key`), for a policy that draws randomness while it
    /// learns (LoRA dropout); None: rows without keys.
    pub step_keys: Option<&'a [u64]>,
}

pub struct PpoLoss {
    /// The scalar loss, the mean of `per_sample` (with its graph).
    pub loss: Tensor,
    /// max(−A·ρ, −A·clip(ρ)) per sample, `[B]` (with its graph).
    pub per_sample: Tensor,
    /// log p_θ of the stored steps, `[B]` (with its graph).
    pub log_prob: Tensor,
    /// 1 where the sample's ratio left [1 − c, 1 + c], else 0, `[B]` (no graph).
    pub clipped: Tensor,
    /// log p_θ − log p_old per sample, `[B]` (no graph).
    pub log_ratio: Tensor,
    /// μ_θ of the step (with its graph), for the KL-to-base term.
    pub mean: Tensor,
    /// σ of the step per sample, `[B]`.
    pub std: Tensor,
}

impl PpoLoss {
    /// Fraction of samples whose ratio left [1 − c, 1 + c].
    pub fn clipfrac(&self) -> f64 {
        self.clipped.mean(Kind::Float).double_value(&[])
    }

    /// ½·mean((log p_θ − log p_old)²).
    pub fn approx_kl(&self) -> f64 {
        (self.log_ratio.square().mean(Kind::Float) * 0.5).double_value(&[])
    }
}

/// The loss with one ratio clip range for the whole batch (DDPO).
pub fn ppo_loss(
    policy: &dyn Policy,
    sched: &DdimScheduler,
    b: &StepBatch<'_>,
    eta: f64,
    guidance: f64,
    clip_range: f64,
) -> PpoLoss {
    let clip = b.advantages.full_like(clip_range);
    ppo_loss_clipped(policy, sched, b, eta, guidance, &clip)
}

/// The loss with each sample's own ratio clip range `clip`, `[B]` (HRF scales it by the window
/// fraction f of the sample's start; +∞ disables clipping).
pub fn ppo_loss_clipped(
    policy: &dyn Policy,
    sched: &DdimScheduler,
    b: &StepBatch<'_>,
    eta: f64,
    guidance: f64,
    clip: &Tensor,
) -> PpoLoss {
    let t = sched.timesteps_at(b.step_index);
    let out = match b.step_keys {
        Some(keys) => policy.guided_output_keyed(keys, b.sample, &t, b.labels, guidance),
        None => policy.guided_output(b.sample, &t, b.labels, guidance),
    };
    let step = sched.step(&out, b.step_index, b.sample, eta, PrevSample::Given(b.prev));
    let log_prob = step.log_prob;
    let (mean, std) = (step.mean, step.std);
    let delta = &log_prob - b.old_log_prob;
    let ratio = delta.exp();
    let unclipped = -b.advantages * &ratio;
    let clip = clip.to_kind(ratio.kind());
    let clipped = -b.advantages * ratio.clamp_tensor(Some(1.0 - &clip), Some(1.0 + &clip));
    let per_sample = unclipped.maximum(&clipped);
    let loss = per_sample.mean(Kind::Float);
    let clipped = tch::no_grad(|| (&ratio - 1.0).abs().gt_tensor(&clip).to_kind(Kind::Float));
    PpoLoss {
        loss,
        per_sample,
        log_prob,
        clipped,
        log_ratio: delta.detach(),
        mean,
        std,
    }
}
