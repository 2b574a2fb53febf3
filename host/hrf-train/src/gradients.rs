//! The gradient of one train batch: the PPO-clipped (or REINFORCE) loss of each row's stored
//! steps, slot by slot, plus the KL to the frozen base model when the run asks for it. The
//! batch's (row, step) pairs go through the UNet in passes: one slot per pass by default, or
//! micro-batches of a set size across slots (`training.micro_batch`); the gradient is the same
//! sum either way.

use hrf_config::training::StepReduction;
use hrf_diffusion::{DdimScheduler, PrevSample};
use tch::{Kind, Tensor};

use crate::policy::Policy;
use crate::ppo::{ppo_loss_clipped, StepBatch};
use crate::sampling::step_key;
use crate::workers::in_turn;

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
    /// (row, step) pairs per forward/backward pass, taken in slot order across slots; None:
    /// one slot per pass.
    pub micro_batch: Option<usize>,
    /// The seed the trajectories were sampled with and each row's sample key: a pair's step
    /// key is `sampling::step_key(seed, key, step)`, as when it was sampled.
    pub sampled: (u64, &'a [u64]),
    /// Passes dealt out to one-thread CPU workers (`model.workers`), or None: one after
    /// another on the calling thread.
    pub workers: Option<Workers<'a>>,
}

/// `model.workers` in a train batch: pass p runs on worker p mod `count`, and its gradient
/// with respect to `params` (the optimiser's variables) is returned instead of accumulated;
/// the calling thread adds the passes' gradients to the variables' `.grad` in pass order, as
/// `backward()` would have. The policy must be `Policy::concurrent`.
#[derive(Clone, Copy)]
pub struct Workers<'a> {
    pub count: usize,
    pub params: &'a [Tensor],
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
    /// Forward/backward passes run.
    pub passes: usize,
}

/// Accumulates the gradient of a train batch's loss into the UNet's parameters, one backward
/// pass per micro-batch (so the graph of one pass is alive at a time). The per-row loss is PPO's
/// max(−A·ρ, −A·clip(ρ, 1 ± c_r)), or REINFORCE's −A·log p_θ (`reinforce`), plus
/// `kl_coef` × the KL to the base model when `base` is given. The per-slot statistics are the
/// same whichever way the pairs are split into passes.
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
    let most = b.steps.iter().map(Vec::len).max().unwrap_or(0);
    // Every (row, slot) pair in slot order.
    let pairs: Vec<(usize, usize)> = (0..most)
        .flat_map(|slot| {
            (0..rows)
                .filter(move |&r| slot < b.steps[r].len())
                .map(move |r| (r, slot))
        })
        .collect();
    let passes: Vec<&[(usize, usize)]> = match b.micro_batch {
        None => pairs.chunk_by(|x, y| x.1 == y.1).collect(),
        Some(n) => pairs.chunks(n.max(1)).collect(),
    };
    let (chain, logged) = (b.latents.size()[1], b.old_log_probs.size()[1]);
    let latents = b.latents.flatten(0, 1);
    let old_log_probs = b.old_log_probs.flatten(0, 1);
    // Per slot: Σ loss, Σ clipped, Σ ½(log ρ)², Σ KL to base, over its rows.
    let mut per_slot = vec![[0f64; 4]; most];
    let mut st = SlotStats::default();
    // One pass: its objective (whose gradient is the pass's share), then on the host the
    // objective and each pair's four statistics, and its UNet evaluations.
    let pass_loss = |pass: &[(usize, usize)]| -> (Tensor, Tensor, u64) {
        // Two index uploads per pass; the flat indices are derived on the device.
        let upload = |v: Vec<i64>| Tensor::from_slice(&v).to_device(device);
        let rows_t = upload(pass.iter().map(|&(r, _)| r as i64).collect());
        let pos_t = upload(pass.iter().map(|&(r, j)| b.steps[r][j] as i64).collect());
        let at = &rows_t * chain + &pos_t;
        let x_t = latents.index_select(0, &at);
        let x_prev = latents.index_select(0, &(&at + 1));
        let old = old_log_probs.index_select(0, &(&rows_t * logged + &pos_t));
        let a = b.advantages.index_select(0, &rows_t);
        let y = b.labels.map(|l| l.index_select(0, &rows_t));
        let (seed, sample_keys) = b.sampled;
        let step_keys: Vec<u64> = pass
            .iter()
            .map(|&(r, j)| step_key(seed, sample_keys[r], b.steps[r][j]))
            .collect();
        let batch = StepBatch {
            sample: &x_t,
            prev: &x_prev,
            step_index: &pos_t,
            labels: y.as_ref(),
            old_log_prob: &old,
            advantages: &a,
            step_keys: Some(&step_keys),
        };
        let step = ppo_loss_clipped(
            policy,
            sched,
            &batch,
            eta,
            guidance,
            &b.clip.index_select(0, &rows_t),
        );
        let mut evals = policy.step_evals(y.as_ref(), guidance, pass.len() as u64);
        let mut per_row = if reinforce {
            -(&a * &step.log_prob)
        } else {
            step.per_sample.shallow_clone()
        };
        let mut kl_base = None;
        if let Some((base, coef)) = base {
            let kl = kl_to_base(base, sched, &batch, &step.mean, &step.std, eta, guidance);
            evals += base.step_evals(y.as_ref(), guidance, pass.len() as u64);
            // Out of place: per_row may share storage with the loss graph.
            per_row = &per_row + &kl * coef;
            kl_base = Some(kl.detach());
        }
        let weights: Vec<f32> = pass
            .iter()
            .map(|&(r, _)| {
                let w = match b.reduction {
                    StepReduction::Mean => 1.0 / b.steps[r].len() as f64,
                    StepReduction::Sum => 1.0,
                };
                (w / (rows as f64 * b.per_update)) as f32
            })
            .collect();
        let objective =
            (&per_row * Tensor::from_slice(&weights).to_device(device)).sum(Kind::Float);
        // One copy to the host per pass.
        let values = tch::no_grad(|| {
            let kl = kl_base.unwrap_or_else(|| step.clipped.zeros_like());
            let stats = Tensor::stack(
                &[
                    per_row.detach().to_kind(Kind::Float),
                    step.clipped.shallow_clone(),
                    step.log_ratio.square().to_kind(Kind::Float) * 0.5,
                    kl.to_kind(Kind::Float),
                ],
                1,
            );
            Tensor::cat(&[objective.detach().reshape([1]), stats.flatten(0, 1)], 0)
                .to_kind(Kind::Double)
                .to_device(tch::Device::Cpu)
        });
        (objective, values, evals)
    };
    let mut take = |pass: &[(usize, usize)], values: &Tensor, evals: u64| {
        let values: Vec<f64> = Vec::try_from(values).expect("a double vector");
        st.objective += values[0];
        for (&(_, j), v) in pass.iter().zip(values[1..].chunks(4)) {
            for (sum, x) in per_slot[j].iter_mut().zip(v) {
                *sum += x;
            }
        }
        st.unet_evals += evals;
        st.passes += 1;
    };
    match b.workers {
        None => {
            for pass in &passes {
                let (objective, values, evals) = pass_loss(pass);
                objective.backward();
                policy.finish_backward();
                take(pass, &values, evals);
            }
        }
        Some(w) => {
            let job = |p: usize| {
                let (objective, values, evals) = pass_loss(passes[p]);
                let grads = Tensor::run_backward(&[&objective], w.params, false, false);
                (values, grads, evals)
            };
            let mut add = |p: usize, (values, grads, evals): (Tensor, Vec<Tensor>, u64)| {
                add_gradients(w.params, grads);
                take(passes[p], &values, evals);
                true
            };
            // SAFETY: a pass reads the stored batch and the (concurrent) policy; its graph,
            // loss and gradients are its own, returned by `run_backward` rather than
            // accumulated into the shared variables.
            unsafe { in_turn(w.count, passes.len(), &job, &mut add) };
        }
    }
    for (j, sums) in per_slot.iter().enumerate() {
        let n = b.steps.iter().filter(|s| j < s.len()).count() as f64;
        st.loss_sum += sums[0] / n;
        st.clipfrac_sum += sums[1] / n;
        st.approx_kl_sum += sums[2] / n;
        st.kl_to_base_sum += sums[3] / n;
    }
    st.slots = most;
    st
}

/// Adds one pass's gradients to the variables' `.grad`, as `backward()` accumulates them: in
/// place where a gradient exists, else through autograd itself (the gradient of Σ p·g is g,
/// exactly), so a variable's first gradient is created the way `backward()` creates it. A
/// variable the pass did not reach (an undefined gradient) is left as it is.
fn add_gradients(params: &[Tensor], grads: Vec<Tensor>) {
    let mut fresh = Vec::new();
    for (p, g) in params.iter().zip(grads) {
        if !g.defined() {
            continue;
        }
        let mut have = p.grad();
        if have.defined() {
            tch::no_grad(|| {
                let _ = have.g_add_(&g);
            });
        } else {
            fresh.push((p * g).sum(Kind::Float));
        }
    }
    if !fresh.is_empty() {
        Tensor::stack(&fresh, 0).sum(Kind::Float).backward();
    }
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
