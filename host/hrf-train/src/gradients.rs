//! The gradient of one train batch: the PPO-clipped (or REINFORCE) loss of each row's stored
//! steps, slot by slot, plus the KL to the frozen base model when the run asks for it.

use hrf_config::training::StepReduction;
use hrf_diffusion::{DdimScheduler, PrevSample};
use tch::{Kind, Tensor};

use crate::policy::Policy;
use crate::ppo::{ppo_loss_clipped, StepBatch};

/// One train batch of stored steps: row r trains the steps `steps[r]` of its chain, in slot
/// order (slot j holds each row's j-th step; rows with fewer steps drop out of later slots).
pub struct WindowBatch<'a> {
    /// `[R, N+1, C, H, W]`: entry i is the input of step i.
    pub latents: &'a Tensor,
    /// `[R, N]`.
    pub old_log_probs: &'a Tensor,
    pub labels: Option<&'a Tensor>,
    /// Clipped advantages, `[R]`.
    pub advantages: &'a Tensor,
    /// Ratio clip range per row, `[R]` (+∞: none).
    pub clip: &'a Tensor,
    pub steps: &'a [Vec<usize>],
    /// Per row: mean over its steps (weight 1/K_r) or sum (weight 1).
    pub reduction: StepReduction,
    /// Train batches per optimiser step: the gradient is averaged over them.
    pub per_update: f64,
}

/// Sums over the slots of a `WindowBatch`.
#[derive(Debug, Default)]
pub struct SlotStats {
    /// The objective whose gradient was accumulated: Σ_slots Σ_rows w_r·ℓ_r / (R·per_update).
    pub objective: f64,
    /// Σ over slots of the slot's mean per-row loss (for the log).
    pub loss_sum: f64,
    pub clipfrac_sum: f64,
    pub approx_kl_sum: f64,
    pub kl_to_base_sum: f64,
    pub slots: usize,
    pub unet_evals: u64,
}

/// Accumulates the gradient of a train batch's loss into the UNet's parameters, one backward
/// pass per slot (so the graph of one slot is alive at a time). The per-row loss is PPO's
/// max(−A·ρ, −A·clip(ρ, 1 ± c_r)), or REINFORCE's −A·log p_θ (`reinforce`), plus
/// `kl_coef` × the KL to the base model when `base` is given.
pub fn accumulate_window_gradients(
    policy: &dyn Policy,
    base: Option<(&dyn Policy, f64)>,
    sched: &DdimScheduler,
    b: &WindowBatch<'_>,
    eta: f64,
    guidance: f64,
    reinforce: bool,
) -> SlotStats {
    let device = b.latents.device();
    let rows = b.steps.len();
    let mut st = SlotStats::default();
    let most = b.steps.iter().map(Vec::len).max().unwrap_or(0);
    for slot in 0..most {
        let active: Vec<i64> = (0..rows as i64)
            .filter(|&r| slot < b.steps[r as usize].len())
            .collect();
        let rows_t = Tensor::from_slice(&active).to_device(device);
        let pos: Vec<i64> = active
            .iter()
            .map(|&r| b.steps[r as usize][slot] as i64)
            .collect();
        let pos_t = Tensor::from_slice(&pos).to_device(device);
        let ar = Tensor::arange(active.len() as i64, (Kind::Int64, device));
        let lat = b.latents.index_select(0, &rows_t);
        let x_t = lat.index(&[Some(&ar), Some(&pos_t)]);
        let x_prev = lat.index(&[Some(&ar), Some(&(&pos_t + 1))]);
        let old = b
            .old_log_probs
            .index_select(0, &rows_t)
            .index(&[Some(&ar), Some(&pos_t)]);
        let a = b.advantages.index_select(0, &rows_t);
        let y = b.labels.map(|l| l.index_select(0, &rows_t));
        let batch = StepBatch {
            sample: &x_t,
            prev: &x_prev,
            step_index: &pos_t,
            labels: y.as_ref(),
            old_log_prob: &old,
            advantages: &a,
        };
        let step = ppo_loss_clipped(
            policy,
            sched,
            &batch,
            eta,
            guidance,
            &b.clip.index_select(0, &rows_t),
        );
        st.unet_evals += policy.step_evals(y.as_ref(), guidance, active.len() as u64);
        let mut per_row = if reinforce {
            -(&a * &step.log_prob)
        } else {
            step.per_sample.shallow_clone()
        };
        if let Some((base, coef)) = base {
            let kl = kl_to_base(base, sched, &batch, &step.mean, &step.std, eta, guidance);
            st.unet_evals += base.step_evals(y.as_ref(), guidance, active.len() as u64);
            st.kl_to_base_sum += kl.mean(Kind::Float).double_value(&[]);
            // Out of place: per_row may share storage with the loss graph.
            per_row = &per_row + kl * coef;
        }
        let weights: Vec<f32> = active
            .iter()
            .map(|&r| {
                let w = match b.reduction {
                    StepReduction::Mean => 1.0 / b.steps[r as usize].len() as f64,
                    StepReduction::Sum => 1.0,
                };
                (w / (rows as f64 * b.per_update)) as f32
            })
            .collect();
        let objective =
            (&per_row * Tensor::from_slice(&weights).to_device(device)).sum(Kind::Float);
        objective.backward();
        policy.finish_backward();
        st.objective += objective.double_value(&[]);
        st.loss_sum += per_row.mean(Kind::Float).double_value(&[]);
        st.clipfrac_sum += step.clipfrac;
        st.approx_kl_sum += step.approx_kl;
        st.slots += 1;
    }
    st
}

/// The DPOK-style KL of the policy's step distribution to the frozen base model's at the same
/// x_t: both are Gaussians with the same σ, so KL = ‖μ_θ − μ_base‖² / (2σ²), averaged over
/// non-batch dimensions like the log-prob; one value per sample, `[B]`. Degenerate steps are
/// never trained, so σ > 0 here.
pub fn kl_to_base(
    base: &dyn Policy,
    sched: &DdimScheduler,
    b: &StepBatch<'_>,
    policy_mean: &Tensor,
    std: &Tensor,
    eta: f64,
    guidance: f64,
) -> Tensor {
    let base_mean = tch::no_grad(|| {
        let t = sched.timesteps_at(b.step_index);
        let out = base.guided_output(b.sample, &t, b.labels, guidance);
        sched
            .step(&out, b.step_index, b.sample, eta, PrevSample::Given(b.prev))
            .mean
    });
    let reduce: Vec<i64> = (1..policy_mean.dim() as i64).collect();
    let sq = (policy_mean - base_mean)
        .square()
        .mean_dim(reduce.as_slice(), false, Kind::Float);
    sq / (std.square() * 2.0)
}
