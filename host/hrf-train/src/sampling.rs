//! DDIM sampling with classifier-free guidance and noise drawn per (seed, sample, step), so a
//! sample does not change with the batch it was drawn in.

use hrf_diffusion::{DdimScheduler, DdimStep, PrevSample};
use tch::{Device, Kind, Tensor};

use crate::policy::Policy;
use crate::rng::KeyedRng;

/// The key parts mixed into a non-negative torch-style seed (63 bits).
pub fn mix_seed(parts: &[u64]) -> i64 {
    (crate::rng::mix(parts) >> 1) as i64
}

/// The key of step i of sample `key` in a chain drawn with `seed`: what a policy draws its
/// training-time randomness (LoRA dropout) from, when the step is sampled and when it is trained.
pub fn step_key(seed: u64, key: u64, step: usize) -> u64 {
    crate::rng::mix(&[seed, key, step as u64, 0xD50])
}

/// Gaussian noise for a batch where row i is keyed by `keys[i]` (e.g. the sample's index) and
/// `stream` (e.g. the step), independent of batch composition and of the device: drawn on the
/// host from `KeyedRng`, then copied to `device`.
pub fn keyed_noise(seed: u64, keys: &[u64], stream: u64, shape: &[i64], device: Device) -> Tensor {
    let per_row: i64 = shape.iter().product();
    let mut buf = vec![0f32; per_row as usize * keys.len()];
    if per_row > 0 {
        for (row, &k) in buf.chunks_mut(per_row as usize).zip(keys) {
            KeyedRng::new(&[seed, k, stream]).fill_normal(row);
        }
    }
    let mut full = vec![keys.len() as i64];
    full.extend_from_slice(shape);
    Tensor::from_slice(&buf)
        .view(full.as_slice())
        .to_device(device)
}

/// Whether the rows of a step are steps of trajectories the epoch trains (the policy then draws
/// its training-time randomness from their [`step_key`]s) or not (evaluation, anchors: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    Trained,
    Untrained,
}

/// One DDIM step i of the policy on `x` (rows keyed by `keys`): guided model output, then the
/// scheduler's step with noise keyed by (seed, key, i + 1); no noise is drawn at η = 0.
#[allow(clippy::too_many_arguments)]
pub fn policy_step(
    policy: &dyn Policy,
    sched: &DdimScheduler,
    x: &Tensor,
    labels: Option<&Tensor>,
    i: usize,
    (eta, guidance): (f64, f64),
    (seed, keys, rows): (u64, &[u64], Rows),
    device: Device,
) -> DdimStep {
    let b = keys.len() as i64;
    let t = Tensor::full([b], sched.timesteps()[i], (Kind::Int64, device));
    let out = match rows {
        Rows::Trained => {
            let step_keys: Vec<u64> = keys.iter().map(|&k| step_key(seed, k, i)).collect();
            policy.guided_output_keyed(&step_keys, x, &t, labels, guidance)
        }
        Rows::Untrained => policy.guided_output(x, &t, labels, guidance),
    };
    let idx = Tensor::full([b], i as i64, (Kind::Int64, device));
    let z = if eta > 0.0 {
        let size = x.size();
        keyed_noise(seed, keys, i as u64 + 1, &size[1..], device)
    } else {
        x.zeros_like()
    };
    sched.step(&out, &idx, x, eta, PrevSample::Noise(&z))
}

/// What to sample.
pub struct SampleRequest<'a> {
    /// Class labels (`[B]`), or None for an unconditional model.
    pub labels: Option<&'a Tensor>,
    /// One key per sample: its identity for the noise (same key, same seed → same sample).
    pub keys: &'a [u64],
    pub seed: u64,
    pub eta: f64,
    pub guidance: f64,
}

/// Runs the whole DDIM chain from pure noise; returns x₀ in model space ([−1, 1] nominally).
pub fn sample(
    policy: &dyn Policy,
    sched: &DdimScheduler,
    req: &SampleRequest<'_>,
    device: Device,
) -> Tensor {
    sample_observed(policy, sched, req, device, &mut |_, _| {})
}

/// `sample`, calling `on_step(i, x̂₀)` with the prediction of x₀ made at every step i (the
/// reward trajectory of docs/ALGORITHM.md §5 scores these).
pub fn sample_observed(
    policy: &dyn Policy,
    sched: &DdimScheduler,
    req: &SampleRequest<'_>,
    device: Device,
    on_step: &mut dyn FnMut(usize, &Tensor),
) -> Tensor {
    let shape = policy.latent_shape();
    // Stream 0 is x_T; stream i+1 is the noise of step i.
    let x_t = keyed_noise(req.seed, req.keys, 0, &shape, device);
    denoise_from(policy, sched, x_t, 0, req, device, on_step)
}

/// Denoises `x` (the chain's state before step `first`) through steps first..N−1 under no-grad,
/// the noise of step i keyed by (req.seed, key, i + 1), calling `on_step(i, x̂₀)` at each step.
pub fn denoise_from(
    policy: &dyn Policy,
    sched: &DdimScheduler,
    x: Tensor,
    first: usize,
    req: &SampleRequest<'_>,
    device: Device,
    on_step: &mut dyn FnMut(usize, &Tensor),
) -> Tensor {
    tch::no_grad(|| {
        let mut x = x;
        let labels = req.labels.map(|y| y.to_device(device));
        for i in first..sched.num_steps() {
            let step = policy_step(
                policy,
                sched,
                &x,
                labels.as_ref(),
                i,
                (req.eta, req.guidance),
                (req.seed, req.keys, Rows::Untrained),
                device,
            );
            on_step(i, &step.pred_original);
            x = step.prev;
        }
        x
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hrf_diffusion::{DiffusersModel, SchedulerConfig, UNetConfig};

    #[test]
    fn noise_does_not_depend_on_the_batch() {
        let a = keyed_noise(7, &[0, 1, 2], 5, &[1, 4, 4], Device::Cpu);
        let b = keyed_noise(7, &[2], 5, &[1, 4, 4], Device::Cpu);
        assert!(a.get(2).equal(&b.get(0)));
        assert!(!a.get(0).equal(&a.get(1)));
        let c = keyed_noise(8, &[2], 5, &[1, 4, 4], Device::Cpu);
        assert!(!c.equal(&b));
    }

    #[test]
    fn samples_are_deterministic_per_seed_and_key() {
        let model = DiffusersModel::new_seeded(&UNetConfig::testbed(), Device::Cpu, 2).unwrap();
        let sched = DdimScheduler::new(SchedulerConfig::default(), 4, 1e-4).unwrap();
        let y = Tensor::from_slice(&[1i64, 10, 3]);
        let req = |keys: &'static [u64], labels: &Tensor| {
            sample(
                &model.unet,
                &sched,
                &SampleRequest {
                    labels: Some(labels),
                    keys,
                    seed: 3,
                    eta: 1.0,
                    guidance: 2.0,
                },
                Device::Cpu,
            )
        };
        let all = req(&[0, 1, 2], &y);
        let one = req(&[1], &Tensor::from_slice(&[10i64]));
        // Same noise; the UNet's float results vary with batch size at the 1e-5 level.
        let diff = (all.get(1) - one.get(0)).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "{diff}");
        let other = (all.get(0) - one.get(0)).abs().max().double_value(&[]);
        assert!(other > 1e-2, "different keys must give different samples");
        assert!(req(&[0, 1, 2], &y).equal(&all), "same request, same bits");
    }
}
