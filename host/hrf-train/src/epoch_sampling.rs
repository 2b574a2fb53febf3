//! Step 1 of an epoch: its samples. DDPO rolls every sample from pure noise; HRF and HRF-D
//! roll one anchor per group, choose the group's start k (the window schedule, or HRF-D's
//! search over candidate starts), re-noise each member to τ_k and roll it from k.

use hrf_config::training::{HrfSettings, Method};
use hrf_core::Sample;
use hrf_rewards::RewardWorker;
use tch::{Kind, Tensor};

use hrf_report::stats::mean_of_scored;

use crate::epoch::{Ddpo, EpochError, EpochObserver, SampledEpoch};
use crate::hrf;
use crate::rng::KeyedRng;
use crate::sampling::{keyed_noise, mix_seed, Rows};
use crate::trajectory::{Start, Trajectories};
use crate::workers::in_turn;

impl Ddpo<'_> {
    /// Step 1 of the epoch. DDPO: trajectories from pure noise. HRF / HRF-D: one anchor per group
    /// from the current policy, its start k (window schedule, or HRF-D's search), then each member
    /// re-noised to τ_k and rolled from k (docs/ALGORITHM.md §3.2, §3.3, §4).
    pub(crate) fn sample_epoch(
        &self,
        epoch: u64,
        rewards: &mut RewardWorker,
        observer: &mut dyn EpochObserver,
    ) -> Result<SampledEpoch, EpochError> {
        let (s, t) = (&self.sampling, &self.training);
        let total = s.batch_size * s.batches_per_epoch;
        let mut unet_evals = 0;
        let mut extra_reward_calls = 0;
        let hier = t.hrf.as_ref().filter(|_| t.method.is_hierarchical());
        // HRF's anchor groups; DDPO's groups for group advantages (consecutive samples, one
        // prompt each); else each sample its own group.
        let group_size = hier.map_or(self.advantages.group_size.unwrap_or(1), |h| h.group_size);
        let groups: Vec<usize> = (0..total).map(|i| i / group_size).collect();
        let n_groups = total / group_size;
        // Labels and prompts: one per group (an HRF anchor, a DDPO advantage group); for DDPO
        // without groups each sample is its own group.
        let lp: Vec<(Option<i64>, Option<String>)> = (0..total)
            .map(|i| self.label_and_prompt(epoch, groups[i] as u64))
            .collect();

        let (train_starts, group_starts, start_latents) = match hier {
            None => {
                let starts = (0..total as u64)
                    .map(|key| {
                        let mut rng = KeyedRng::new(&[t.seed, 0x57A7, epoch, key]);
                        hrf::ddpo_start(self.scheduler, t.start, &mut rng)
                    })
                    .collect();
                (starts, Vec::new(), None)
            }
            Some(h) => {
                if observer.stop_requested() {
                    return Err(EpochError::Interrupted);
                }
                let glp: Vec<_> = (0..n_groups).map(|g| lp[g * group_size].clone()).collect();
                let (anchors, evals) = self.sample_anchors(epoch, &glp);
                unet_evals += evals;
                let group_starts: Vec<usize> = if t.method == Method::HrfD {
                    let (ks, evals, calls) =
                        self.search_starts(epoch, h, &anchors, &glp, rewards, observer)?;
                    unet_evals += evals;
                    extra_reward_calls += calls;
                    ks
                } else {
                    let cluster = h.cluster_at(epoch);
                    (0..n_groups as u64)
                        .map(|g| {
                            let mut rng = KeyedRng::new(&[t.seed, 0x4B57, epoch, g]);
                            hrf::draw_start(self.scheduler, cluster, &mut rng)
                                .expect("checked by hrf::check_window before training")
                        })
                        .collect()
                };
                let starts: Vec<usize> = groups.iter().map(|&g| group_starts[g]).collect();
                let members = anchors.repeat_interleave_self_int(group_size as i64, 0, None);
                let keys: Vec<u64> = (0..total as u64).collect();
                let shape = &members.size()[1..];
                let noise = keyed_noise(
                    mix_seed(&[t.seed, epoch]) as u64,
                    &keys,
                    0,
                    shape,
                    self.device,
                );
                let x = hrf::renoise(self.scheduler, &members, &starts, &noise, self.device);
                (starts, group_starts, Some(x))
            }
        };

        if observer.stop_requested() {
            return Err(EpochError::Interrupted);
        }
        let roll_batch = |b: usize| {
            let range = b * s.batch_size..(b + 1) * s.batch_size;
            let keys: Vec<u64> = range.clone().map(|k| k as u64).collect();
            let labels = Self::labels_tensor(&lp[range.clone()]);
            let latents = start_latents
                .as_ref()
                .map(|x| x.narrow(0, range.start as i64, s.batch_size as i64));
            self.roll(
                labels.as_ref(),
                &keys,
                (t.seed, epoch),
                s.eta,
                latents.as_ref().map(|x| Start {
                    steps: &train_starts[range.clone()],
                    latents: x,
                }),
                Rows::Trained,
            )
        };
        let mut batches: Vec<Trajectories> = Vec::new();
        let mut take = |b: usize, tr: Trajectories| {
            let range = b * s.batch_size..(b + 1) * s.batch_size;
            unet_evals += tr.unet_evals;
            let batch: Vec<Sample> = self
                .policy
                .decode(&tr.final_samples())
                .into_iter()
                .zip(&lp[range.clone()])
                .zip(range.clone())
                .map(|((image, (_, prompt)), i)| Sample {
                    image,
                    prompt: prompt.clone(),
                    metadata: serde_json::json!({"epoch": epoch, "group": groups[i]}),
                })
                .collect();
            rewards.submit(batch);
            batches.push(tr);
            observer.advanced("sample", b + 1, s.batches_per_epoch, f64::NAN);
            !observer.stop_requested()
        };
        // SAFETY: a batch's roll only reads the policy (`workers()` is 1 unless it is
        // concurrent), the scheduler and the epoch's start latents; the rest it makes.
        unsafe { in_turn(self.workers(), s.batches_per_epoch, &roll_batch, &mut take) };
        // A stop asked for during a batch drops the epoch (during the last one too): sampling
        // is never followed by training once a stop is pending.
        if observer.stop_requested() {
            rewards.drain();
            return Err(EpochError::Interrupted);
        }
        Ok(SampledEpoch {
            batches,
            groups,
            train_starts,
            group_starts,
            unet_evals,
            extra_reward_calls,
        })
    }

    /// One anchor x₀ per group from the current policy, from pure noise (η = sampling.eta),
    /// in sampling batches. Returns the anchors and the UNet evaluations spent.
    pub(crate) fn sample_anchors(
        &self,
        epoch: u64,
        glp: &[(Option<i64>, Option<String>)],
    ) -> (Tensor, u64) {
        let (s, t) = (&self.sampling, &self.training);
        let groups: Vec<usize> = (0..glp.len()).collect();
        let chunks: Vec<&[usize]> = groups.chunks(s.batch_size).collect();
        let roll_chunk = |c: usize| {
            let chunk = chunks[c];
            let keys: Vec<u64> = chunk.iter().map(|&g| g as u64).collect();
            let labels = Self::labels_tensor(&glp[chunk[0]..=chunk[chunk.len() - 1]]);
            self.roll(
                labels.as_ref(),
                &keys,
                (mix_seed(&[t.seed, 0xA4C0]) as u64, epoch),
                s.eta,
                None,
                Rows::Untrained,
            )
        };
        let mut out = Vec::new();
        let mut evals = 0;
        // SAFETY: as the epoch's batches: the roll only reads the policy and the scheduler.
        unsafe {
            in_turn(self.workers(), chunks.len(), &roll_chunk, &mut |_, tr| {
                evals += tr.unet_evals;
                out.push(tr.final_samples());
                true
            })
        };
        (Tensor::cat(&out, 0), evals)
    }

    /// HRF-D: for each anchor, C noise copies drawn once and reused for every candidate start
    /// s ∈ range(0, N, stride); each copy re-noised to τ_s and denoised deterministically
    /// (η = 0); R(s) the copies' mean reward, D(s) the cosine distance of copy 0's sample to the
    /// anchor; k by `hrf::choose_start`. Returns the starts, UNet evaluations and reward calls.
    pub(crate) fn search_starts(
        &self,
        epoch: u64,
        h: &HrfSettings,
        anchors: &Tensor,
        glp: &[(Option<i64>, Option<String>)],
        rewards: &mut RewardWorker,
        observer: &mut dyn EpochObserver,
    ) -> Result<(Vec<usize>, u64, u64), EpochError> {
        let t = &self.training;
        let cands: Vec<usize> = (0..self.scheduler.num_steps()).step_by(h.stride).collect();
        let (m, c) = (cands.len(), h.copies);
        let shape = &anchors.size()[1..];
        let (mut evals, mut calls) = (0u64, 0u64);
        let rows = m * c;
        let mut ks = Vec::with_capacity(glp.len());
        // As many anchors per rollout as fit in a sampling batch (at least one).
        let per_chunk = (self.sampling.batch_size / rows).max(1);
        let groups: Vec<usize> = (0..glp.len()).collect();
        let chunks: Vec<&[usize]> = groups.chunks(per_chunk).collect();
        // A chunk's candidates rolled: their finals and D(s), copy 0 against its anchor.
        let roll_chunk = |ci: usize| {
            let chunk = chunks[ci];
            // Row (g, j, c): anchor g, candidate j, copy c. The copy's noise is keyed by (g, c)
            // alone, so every candidate of an anchor shares the same C copies.
            let copy_keys: Vec<u64> = (0..c as u64).collect();
            let noise = Tensor::cat(
                &chunk
                    .iter()
                    .map(|&g| {
                        keyed_noise(
                            mix_seed(&[t.seed, 0xD1, epoch, g as u64]) as u64,
                            &copy_keys,
                            0,
                            shape,
                            self.device,
                        )
                        .repeat([m as i64, 1, 1, 1])
                    })
                    .collect::<Vec<_>>(),
                0,
            );
            let starts: Vec<usize> = chunk
                .iter()
                .flat_map(|_| cands.iter().flat_map(|&k| std::iter::repeat_n(k, c)))
                .collect();
            let idx = Tensor::from_slice(&chunk.iter().map(|&g| g as i64).collect::<Vec<_>>())
                .to_device(self.device);
            let chunk_anchors =
                anchors
                    .index_select(0, &idx)
                    .repeat_interleave_self_int(rows as i64, 0, None);
            let x = hrf::renoise(self.scheduler, &chunk_anchors, &starts, &noise, self.device);
            let keys: Vec<u64> = (0..starts.len() as u64).collect();
            let labels = glp[chunk[0]].0.map(|_| {
                let per_row: Vec<i64> = chunk
                    .iter()
                    .flat_map(|&g| std::iter::repeat_n(glp[g].0.expect("all or none"), rows))
                    .collect();
                Tensor::from_slice(&per_row)
            });
            let tr = self.roll(
                labels.as_ref(),
                &keys,
                (t.seed, epoch),
                0.0,
                Some(Start {
                    steps: &starts,
                    latents: &x,
                }),
                Rows::Untrained,
            );
            let finals = tr.final_samples();
            let copy0 = Tensor::arange_start_step(
                0,
                starts.len() as i64,
                c as i64,
                (Kind::Int64, self.device),
            );
            let diversity = hrf::cosine_distance(
                &finals.index_select(0, &copy0),
                &chunk_anchors.index_select(0, &copy0),
            );
            (finals, diversity, tr.unet_evals)
        };
        let mut failed = None;
        let mut choose = |ci: usize, (finals, diversity, rolled): (Tensor, Vec<f64>, u64)| {
            let chunk = chunks[ci];
            evals += rolled;
            let batch: Vec<Sample> = self.policy.decode(&finals)
                .into_iter()
                .enumerate()
                .map(|(i, image)| {
                    let g = chunk[i / rows];
                    Sample {
                        image,
                        prompt: glp[g].1.clone(),
                        metadata: serde_json::json!({"epoch": epoch, "hrf_d_candidates_of_group": g}),
                    }
                })
                .collect();
            calls += batch.len() as u64;
            let scored = match rewards.score_now(batch) {
                Ok(scored) => scored,
                Err(e) => {
                    failed = Some(e);
                    return false;
                }
            };
            for (n, _) in chunk.iter().enumerate() {
                let mut reward: Vec<f64> = scored.total[n * rows..(n + 1) * rows]
                    .chunks(c)
                    .map(mean_of_scored)
                    .collect();
                // A candidate none of whose copies could be scored (on_error: skip) counts as
                // the worst scored one; with none scored, R is flat and D alone decides.
                let worst = reward
                    .iter()
                    .copied()
                    .filter(|r| r.is_finite())
                    .fold(f64::INFINITY, f64::min);
                for r in &mut reward {
                    if !r.is_finite() {
                        *r = if worst.is_finite() { worst } else { 0.0 };
                    }
                }
                ks.push(hrf::choose_start(
                    &cands,
                    &reward,
                    &diversity[n * m..(n + 1) * m],
                    h.beta,
                ));
            }
            !observer.stop_requested()
        };
        if observer.stop_requested() {
            return Err(EpochError::Interrupted);
        }
        // SAFETY: a chunk's roll only reads the policy (`workers()` is 1 unless it is
        // concurrent), the scheduler and the epoch's anchors; the rest it makes.
        unsafe { in_turn(self.workers(), chunks.len(), &roll_chunk, &mut choose) };
        if let Some(e) = failed {
            return Err(e.into());
        }
        if observer.stop_requested() {
            return Err(EpochError::Interrupted);
        }
        Ok((ks, evals, calls))
    }
}
