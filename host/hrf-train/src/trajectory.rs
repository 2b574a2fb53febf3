//! Sampling DDPO trajectories under no-grad: every step's latent, timestep and log-prob are kept
//! so the trainer can recompute log p_θ of the same transitions later (docs/ALGORITHM.md §2.1).
//! The noise of sample `key` at step i is drawn from (seed, key, i) alone; DDPO keys the seed
//! by (run seed, epoch).

use hrf_diffusion::DdimScheduler;
use tch::{Device, Kind, Tensor};

use crate::policy::Policy;
use crate::sampling::{keyed_noise, policy_step, Rows, SampleRequest};

/// A batch of trajectories. Row r starts at step `starts[r]` (0 for DDPO: pure noise; k for an
/// HRF trajectory of interest) and runs to the end of the chain.
pub struct Trajectories {
    /// Latents x at steps 0..=N, `[B, N+1, C, H, W]`: entry i is the input of step i and entry
    /// i+1 its output. Entries before a row's start hold its starting latent.
    pub latents: Tensor,
    /// log p(x_{i+1} | x_i) for each of the N steps, `[B, N]` (0 before the start and at
    /// degenerate steps).
    pub log_probs: Tensor,
    /// The step each row starts at.
    pub starts: Vec<usize>,
    pub labels: Option<Tensor>,
    pub keys: Vec<u64>,
    /// The seed the rows' noise (and their step keys, `sampling::step_key`) were drawn with.
    pub seed: u64,
    /// UNet evaluations spent (a guided step of a conditional row counts 2).
    pub unet_evals: u64,
}

impl Trajectories {
    /// The final samples x₀, `[B, C, H, W]`.
    pub fn final_samples(&self) -> Tensor {
        self.latents.select(1, -1)
    }
}

/// Where the rows of a batch start: step `steps[r]` from latent `latents[r]`.
pub struct Start<'a> {
    pub steps: &'a [usize],
    pub latents: &'a Tensor,
}

/// Rolls `policy` for the rows of `req` from pure noise (or from `start`) to the end of the
/// chain, keeping every step's latent and log-prob. `role` says whether the epoch trains these
/// trajectories (the policy then draws its training-time randomness, LoRA dropout, from each
/// step's key) or not (HRF's anchors, HRF-D's candidates: none).
pub fn sample_trajectories(
    policy: &dyn Policy,
    sched: &DdimScheduler,
    req: &SampleRequest<'_>,
    start: Option<Start<'_>>,
    role: Rows,
    device: Device,
) -> Trajectories {
    let shape = policy.latent_shape();
    let b = req.keys.len();
    let n = sched.num_steps();
    tch::no_grad(|| {
        let (starts, mut x) = match &start {
            Some(s) => {
                assert_eq!(s.steps.len(), b, "one start per row");
                assert!(s.steps.iter().all(|&k| k < n), "starts inside the chain");
                (s.steps.to_vec(), s.latents.to_device(device))
            }
            None => (
                vec![0; b],
                keyed_noise(req.seed, req.keys, 0, &shape, device),
            ),
        };
        let labels = req.labels.map(|y| y.to_device(device));
        let first = starts.iter().copied().min().unwrap_or(n);
        let mut latents: Vec<Tensor> = (0..=first).map(|_| x.shallow_clone()).collect();
        let mut log_probs: Vec<Tensor> = (0..first)
            .map(|_| Tensor::zeros([b as i64], (Kind::Float, device)))
            .collect();
        let mut unet_evals = 0;
        for i in first..n {
            // The rows that have started by step i.
            let active: Vec<i64> = (0..b as i64).filter(|&r| starts[r as usize] <= i).collect();
            let all = active.len() == b;
            let rows = Tensor::from_slice(&active).to_device(device);
            let pick = |t: &Tensor| {
                if all {
                    t.shallow_clone()
                } else {
                    t.index_select(0, &rows)
                }
            };
            let xa = pick(&x);
            let ya = labels.as_ref().map(pick);
            let keys: Vec<u64> = active.iter().map(|&r| req.keys[r as usize]).collect();
            unet_evals += policy.step_evals(ya.as_ref(), req.guidance, keys.len() as u64);
            let s = policy_step(
                policy,
                sched,
                &xa,
                ya.as_ref(),
                i,
                (req.eta, req.guidance),
                (req.seed, &keys, role),
                device,
            );
            let lp = if all {
                x = s.prev;
                s.log_prob
            } else {
                x = x.index_copy(0, &rows, &s.prev);
                Tensor::zeros([b as i64], (Kind::Float, device)).index_copy(0, &rows, &s.log_prob)
            };
            latents.push(x.shallow_clone());
            log_probs.push(lp);
        }
        Trajectories {
            latents: Tensor::stack(&latents, 1),
            log_probs: Tensor::stack(&log_probs, 1),
            starts,
            labels,
            keys: req.keys.to_vec(),
            seed: req.seed,
            unet_evals,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{MixedPrecision, Policy};
    use crate::ppo::{ppo_loss, StepBatch};
    use hrf_diffusion::autocast::Autocast;
    use hrf_diffusion::{DiffusersModel, SchedulerConfig, UNetConfig};

    /// Before any update, log-probs recomputed in train batches of another size, with every
    /// sample's steps shuffled, equal the sampling-time ones: every ratio is 1 within 1e-5.
    #[test]
    fn recomputed_log_probs_equal_sampling_time_ones() {
        let model = DiffusersModel::new_seeded(&UNetConfig::testbed(), Device::Cpu, 11).unwrap();
        let worst = tch::no_grad(|| worst_first_epoch_ratio(&model.unet));
        assert!(worst <= 1e-5, "worst |ratio − 1| = {worst:e}");
    }

    /// `training.precision: bf16`: sampling and training both run the testbed UNet under bf16
    /// autocast, training with autograd on as it does. The UNet's output is bf16's, not fp32's,
    /// yet train batches of 4 and 2 rows give each row the bf16 result of its sampling batch of
    /// 6 on this CPU, so the first inner epoch's ratio is 1 as in fp32 (measured exactly 1). A
    /// one-row batch takes another oneDNN path and rounds otherwise (docs/ALGORITHM.md §2
    /// gives the measurement); a GPU's kernels may too, and the GPU benchmark reports them.
    #[test]
    fn bf16_autocast_keeps_the_first_ratio_at_one() {
        let model = DiffusersModel::new_seeded(&UNetConfig::testbed(), Device::Cpu, 11).unwrap();
        let amp = MixedPrecision::new(&model.unet, Some(Autocast::bf16(Device::Cpu).unwrap()));
        let x = hrf_diffusion::init::keyed_normal(&[71], &[3, 1, 32, 32]);
        let (t, y) = (
            Tensor::from_slice(&[900i64, 500, 20]),
            Tensor::from_slice(&[1i64, 4, 10]),
        );
        let (fp32, bf16) = tch::no_grad(|| {
            (
                model.unet.guided_output(&x, &t, Some(&y), 1.0),
                amp.guided_output(&x, &t, Some(&y), 1.0),
            )
        });
        assert_eq!(bf16.kind(), Kind::Float, "the output comes back in fp32");
        let rel =
            (&bf16 - &fp32).abs().max().double_value(&[]) / fp32.abs().max().double_value(&[]);
        assert!(
            rel > 1e-4 && rel < 5e-2,
            "bf16 vs fp32 output: {rel:e} of its largest value"
        );
        let worst = worst_first_epoch_ratio(&amp);
        eprintln!(
            "bf16 autocast, testbed UNet: output within {rel:.1e} of fp32's largest value; worst |ratio − 1| before the first update = {worst:.1e}"
        );
        assert!(worst <= 1e-5, "worst |ratio − 1| = {worst:e}");
    }

    /// Samples 6 trajectories of 6 steps with `policy` in one batch, recomputes every trainable
    /// step's log-prob in train batches of 4 and 2 with each sample's steps shuffled, and gives
    /// the worst |ratio − 1|.
    fn worst_first_epoch_ratio(policy: &dyn Policy) -> f64 {
        let sched = DdimScheduler::new(SchedulerConfig::default(), 6, 1e-4).unwrap();
        let keys: Vec<u64> = (0..6).collect();
        let labels = Tensor::from_slice(&[0i64, 3, 10, 7, 10, 1]);
        let tr = sample_trajectories(
            policy,
            &sched,
            &SampleRequest {
                labels: Some(&labels),
                keys: &keys,
                seed: 5,
                eta: 1.0,
                guidance: 1.0,
            },
            None,
            Rows::Trained,
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
                let out = ppo_loss(
                    policy,
                    &sched,
                    &StepBatch {
                        sample: &pick(&tr.latents, 0),
                        prev: &pick(&tr.latents, 1),
                        step_index: &pos,
                        labels: Some(&labels),
                        old_log_prob: &old,
                        advantages: &adv,
                        step_keys: None,
                    },
                    1.0,
                    1.0,
                    1e-4,
                );
                assert_eq!(out.log_prob.kind(), Kind::Float, "log-probs in fp32");
                let ratio = (out.log_prob.detach() - &old).exp();
                worst = worst.max(f64::try_from((ratio - 1.0).abs().max()).unwrap());
                assert!(
                    out.log_prob.isfinite().all().int64_value(&[]) == 1,
                    "trained log-probs are finite"
                );
            }
        }
        worst
    }

    /// Rows that start later (HRF's trajectories of interest) keep their starting latent and a
    /// zero log-prob before their start, do not depend on the other rows of the batch, and their
    /// stored log-probs are what the trainer recomputes (ratio 1 within 1e-5).
    #[test]
    fn rows_start_at_their_own_step() {
        let model = DiffusersModel::new_seeded(&UNetConfig::testbed(), Device::Cpu, 12).unwrap();
        let sched = DdimScheduler::new(SchedulerConfig::default(), 6, 1e-4).unwrap();
        let x0 = hrf_diffusion::init::keyed_normal(&[223], &[3, 1, 32, 32]);
        let labels = Tensor::from_slice(&[10i64, 10, 10]);
        let run = |rows: &[usize], starts: &[usize]| {
            let idx = Tensor::from_slice(&rows.iter().map(|&r| r as i64).collect::<Vec<_>>());
            let keys: Vec<u64> = rows.iter().map(|&r| r as u64).collect();
            let y = labels.index_select(0, &idx);
            sample_trajectories(
                &model.unet,
                &sched,
                &SampleRequest {
                    labels: Some(&y),
                    keys: &keys,
                    seed: 4,
                    eta: 1.0,
                    guidance: 1.0,
                },
                Some(Start {
                    steps: starts,
                    latents: &x0.index_select(0, &idx),
                }),
                Rows::Trained,
                Device::Cpu,
            )
        };
        let all = run(&[0, 1, 2], &[0, 2, 4]);
        assert_eq!(all.latents.size(), [3, 7, 1, 32, 32]);
        assert_eq!(all.unet_evals, 6 + 4 + 2);
        for (r, k) in [(1i64, 2i64), (2, 4)] {
            for i in 0..=k {
                assert!(
                    all.latents.get(r).get(i).equal(&x0.get(r)),
                    "row {r} entry {i}"
                );
            }
            let before = all.log_probs.get(r).narrow(0, 0, k);
            assert_eq!(before.abs().sum(Kind::Float).double_value(&[]), 0.0);
        }
        let alone = run(&[2], &[4]);
        let diff = (all.final_samples().get(2) - alone.final_samples().get(0))
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff < 1e-4, "row 2 depends on its batch: {diff}");
        // Recompute row r's steps from its start.
        for (r, k) in [(0usize, 0usize), (1, 2), (2, 4)] {
            for i in sched.trainable_steps(k) {
                let pick = |t: &Tensor, j: i64| t.get(r as i64).get(j).unsqueeze(0);
                let old = all.log_probs.get(r as i64).get(i as i64).reshape([1]);
                let out = tch::no_grad(|| {
                    ppo_loss(
                        &model.unet,
                        &sched,
                        &StepBatch {
                            sample: &pick(&all.latents, i as i64),
                            prev: &pick(&all.latents, i as i64 + 1),
                            step_index: &Tensor::from_slice(&[i as i64]),
                            labels: Some(&labels.narrow(0, r as i64, 1)),
                            old_log_prob: &old,
                            advantages: &Tensor::ones([1], (Kind::Float, Device::Cpu)),
                            step_keys: None,
                        },
                        1.0,
                        1.0,
                        1e-4,
                    )
                });
                let ratio = (&out.log_prob - &old).exp().double_value(&[0]);
                assert!(
                    (ratio - 1.0).abs() < 1e-5,
                    "row {r} step {i}: ratio {ratio}"
                );
            }
        }
    }
}
