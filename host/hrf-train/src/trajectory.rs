//! Sampling DDPO trajectories under no-grad: every step's latent, timestep and log-prob are kept
//! so the trainer can recompute log p_θ of the same transitions later (DESIGN.md §3.2 step 1).
//! The noise of sample `key` at step i of epoch e is drawn from (seed, e, key, i) alone.

use hrf_diffusion::{DdimScheduler, PrevSample, UNet2DModel};
use tch::{Device, Kind, Tensor};

use crate::sampling::{guided_output, keyed_noise, mix_seed};

/// A batch of trajectories, all starting at step `start` (0 for DDPO).
pub struct Trajectories {
    /// Latents x at steps start..=N: `[B, S+1, C, H, W]` (index 0 is the starting latent).
    pub latents: Tensor,
    /// log p(x_{i+1} | x_i) for each of the S steps, `[B, S]` (0 at degenerate steps).
    pub log_probs: Tensor,
    /// The step indices the S transitions were taken at.
    pub steps: Vec<usize>,
    pub labels: Option<Tensor>,
    pub keys: Vec<u64>,
}

impl Trajectories {
    /// The final samples x₀, `[B, C, H, W]`.
    pub fn final_samples(&self) -> Tensor {
        self.latents.select(1, -1)
    }
}

pub struct TrajectoryRequest<'a> {
    pub labels: Option<&'a Tensor>,
    pub keys: &'a [u64],
    pub seed: u64,
    pub epoch: u64,
    pub eta: f64,
    pub guidance: f64,
    /// Start from this latent at step `start` instead of pure noise at step 0.
    pub start: Option<(usize, &'a Tensor)>,
}

pub fn sample_trajectories(
    unet: &UNet2DModel,
    sched: &DdimScheduler,
    req: &TrajectoryRequest<'_>,
    device: Device,
) -> Trajectories {
    let cfg = unet.config();
    let size = cfg.sample_size.unwrap_or(32);
    let shape = [cfg.in_channels, size, size];
    let b = req.keys.len() as i64;
    let stream_seed = mix_seed(&[req.seed, req.epoch]) as u64;
    tch::no_grad(|| {
        let (start, mut x) = match req.start {
            Some((s, x)) => (s, x.to_device(device)),
            None => (0, keyed_noise(stream_seed, req.keys, 0, &shape, device)),
        };
        let labels = req.labels.map(|y| y.to_device(device));
        let mut latents = vec![x.shallow_clone()];
        let mut log_probs = Vec::new();
        let steps: Vec<usize> = (start..sched.num_steps()).collect();
        for &i in &steps {
            let t = Tensor::full([b], sched.timesteps()[i], (Kind::Int64, device));
            let out = guided_output(unet, &x, &t, labels.as_ref(), req.guidance);
            let idx = Tensor::full([b], i as i64, (Kind::Int64, device));
            let z = keyed_noise(stream_seed, req.keys, i as u64 + 1, &shape, device);
            let s = sched.step(&out, &idx, &x, req.eta, PrevSample::Noise(&z));
            x = s.prev;
            latents.push(x.shallow_clone());
            log_probs.push(s.log_prob);
        }
        Trajectories {
            latents: Tensor::stack(&latents, 1),
            log_probs: Tensor::stack(&log_probs, 1),
            steps,
            labels,
            keys: req.keys.to_vec(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ppo::{ppo_loss, StepBatch};
    use hrf_diffusion::{DiffusersModel, SchedulerConfig, UNetConfig};

    /// Before any update, log-probs recomputed in train batches of another size, with every
    /// sample's steps shuffled, equal the sampling-time ones: every ratio is 1 within 1e-5.
    #[test]
    fn recomputed_log_probs_equal_sampling_time_ones() {
        let model = DiffusersModel::new_seeded(&UNetConfig::testbed(), Device::Cpu, 11).unwrap();
        let sched = DdimScheduler::new(SchedulerConfig::default(), 6, 1e-4).unwrap();
        let keys: Vec<u64> = (0..6).collect();
        let labels = Tensor::from_slice(&[0i64, 3, 10, 7, 10, 1]);
        let tr = sample_trajectories(
            &model.unet,
            &sched,
            &TrajectoryRequest {
                labels: Some(&labels),
                keys: &keys,
                seed: 5,
                epoch: 2,
                eta: 1.0,
                guidance: 1.0,
                start: None,
            },
            Device::Cpu,
        );
        assert_eq!(tr.latents.size(), [6, 7, 1, 32, 32]);
        let trainable = sched.trainable_steps(0);
        // Train batch of 4 (sample batch 6), each sample with its own permutation of its steps.
        let mut rng = crate::rng::KeyedRng::new(&[3]);
        let perms: Vec<Vec<usize>> = (0..6).map(|_| rng.permutation(trainable.len())).collect();
        let mut worst = 0f64;
        for chunk in [vec![4usize, 1, 5, 0], vec![2, 3]] {
            let rows = Tensor::from_slice(&chunk.iter().map(|&i| i as i64).collect::<Vec<_>>());
            for slot in 0..trainable.len() {
                let step_pos: Vec<i64> = chunk
                    .iter()
                    .map(|&i| trainable[perms[i][slot]] as i64)
                    .collect();
                let pos = Tensor::from_slice(&step_pos);
                let pick = |t: &Tensor, offset: i64| {
                    let rows_t = t.index_select(0, &rows);
                    Tensor::stack(
                        &(0..chunk.len() as i64)
                            .map(|r| rows_t.get(r).get(step_pos[r as usize] + offset))
                            .collect::<Vec<_>>(),
                        0,
                    )
                };
                let old = pick(&tr.log_probs, 0);
                let adv = Tensor::ones([chunk.len() as i64], (Kind::Float, Device::Cpu));
                let labels = tr.labels.as_ref().unwrap().index_select(0, &rows);
                let out = tch::no_grad(|| {
                    ppo_loss(
                        &model.unet,
                        &sched,
                        &StepBatch {
                            sample: &pick(&tr.latents, 0),
                            prev: &pick(&tr.latents, 1),
                            step_index: &pos,
                            labels: Some(&labels),
                            old_log_prob: &old,
                            advantages: &adv,
                        },
                        1.0,
                        1.0,
                        1e-4,
                    )
                });
                let ratio = (&out.log_prob - &old).exp();
                worst = worst.max(f64::try_from((ratio - 1.0).abs().max()).unwrap());
                assert!(
                    out.log_prob.isfinite().all().int64_value(&[]) == 1,
                    "trained log-probs are finite"
                );
            }
        }
        assert!(worst <= 1e-5, "worst |ratio − 1| = {worst:e}");
    }
}
