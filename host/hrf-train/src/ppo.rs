//! The clipped policy-gradient loss of DDPO-IS on stored DDIM steps (DESIGN.md §3.2 step 3):
//! recompute log p_θ(x_{t−1} | x_t), ρ = exp(log p_θ − log p_old), and
//! loss = mean over the batch of max(−A·ρ, −A·clip(ρ, 1 − c, 1 + c)).

use hrf_diffusion::{DdimScheduler, PrevSample, UNet2DModel};
use tch::{Kind, Tensor};

use crate::sampling::guided_output;

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
}

pub struct PpoLoss {
    /// The scalar loss (with its graph).
    pub loss: Tensor,
    /// log p_θ of the stored steps, `[B]` (with its graph).
    pub log_prob: Tensor,
    /// Fraction of samples whose ratio left [1 − c, 1 + c].
    pub clipfrac: f64,
    /// ½·mean((log p_θ − log p_old)²).
    pub approx_kl: f64,
    /// μ_θ of the step (with its graph), for the KL-to-base term.
    pub mean: Tensor,
    /// σ of the step per sample, `[B]`.
    pub std: Tensor,
}

pub fn ppo_loss(
    unet: &UNet2DModel,
    sched: &DdimScheduler,
    b: &StepBatch<'_>,
    eta: f64,
    guidance: f64,
    clip_range: f64,
) -> PpoLoss {
    let t = sched.timesteps_at(b.step_index);
    let out = guided_output(unet, b.sample, &t, b.labels, guidance);
    let step = sched.step(&out, b.step_index, b.sample, eta, PrevSample::Given(b.prev));
    let log_prob = step.log_prob;
    let (mean, std) = (step.mean, step.std);
    let delta = &log_prob - b.old_log_prob;
    let ratio = delta.exp();
    let unclipped = -b.advantages * &ratio;
    let clipped = -b.advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range);
    let loss = unclipped.maximum(&clipped).mean(Kind::Float);
    let (clipfrac, approx_kl) = tch::no_grad(|| {
        let cf = (&ratio - 1.0)
            .abs()
            .gt(clip_range)
            .to_kind(Kind::Float)
            .mean(Kind::Float);
        let kl = delta.square().mean(Kind::Float) * 0.5;
        (cf.double_value(&[]), kl.double_value(&[]))
    });
    PpoLoss {
        loss,
        log_prob,
        clipfrac,
        approx_kl,
        mean,
        std,
    }
}
