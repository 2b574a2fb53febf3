//! One DDPO epoch (docs/ALGORITHM.md §2): sample the whole epoch under no-grad, score the final
//! images, turn rewards into clipped advantages, then for each inner epoch train on shuffled
//! samples, each with its own permutation of its trainable steps, taking one optimiser step per
//! train batch (or per `grad_accum` batches; one per epoch for DDPO-SF).

use hrf_config::ddpo::{
    AdvantageMode, AdvantageSettings, HrfSettings, Method, SamplingSettings, StepReduction,
    TrainingSettings,
};
use std::collections::BTreeMap;

use hrf_core::{RewardError, Sample};
use hrf_diffusion::{DdimScheduler, DiffusersModel, PrevSample};
use hrf_rewards::{RewardWorker, SetScores};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::advantages::{self, PerPromptTracker};
use crate::hrf;
use crate::ppo::{ppo_loss_clipped, StepBatch};
use crate::rng::KeyedRng;
use crate::sampling::{keyed_noise, mix_seed, to_images, SampleRequest};
use crate::trajectory::{sample_trajectories, step_evals, Start, Trajectories};
use crate::AdamW;

/// What one epoch did, for metrics.jsonl.
#[derive(Debug, Clone, Serialize)]
pub struct EpochStats {
    pub epoch: u64,
    pub reward_mean: f64,
    pub reward_std: f64,
    /// Mean of each reward component's own values.
    pub reward_components: BTreeMap<String, f64>,
    pub loss: f64,
    pub clipfrac: f64,
    pub approx_kl: f64,
    /// Mean per-step KL to the frozen base model (0 when `kl_coef` is 0).
    pub kl_to_base: f64,
    /// Mean pre-clip gradient norm over the optimiser steps.
    pub grad_norm: f64,
    pub optimizer_steps: usize,
    /// The most steps any sample trained per inner epoch.
    pub trained_steps_per_sample: usize,
    /// Start index k → number of anchor groups that started there (HRF, HRF-D).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub starts: BTreeMap<usize, usize>,
    /// UNet evaluations of the epoch: sampling, anchors, HRF-D's candidates and the training
    /// forward passes (a guided step counts 2; backward passes not counted).
    pub unet_evals: u64,
    /// Images scored by the reward (the epoch's samples and HRF-D's candidates).
    pub reward_calls: u64,
    pub sample_s: f64,
    /// Time spent waiting for rewards after sampling (they are computed while sampling).
    pub reward_wait_s: f64,
    pub train_s: f64,
    /// Samples left out because a reward with `on_error: skip` could not score them.
    #[serde(skip_serializing_if = "is_zero")]
    pub skipped: usize,
    /// Why, one line per failure.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skip_reasons: Vec<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The prompts a conditional model is trained on: (text, class label).
pub type Prompt = (String, i64);

/// What an epoch produced.
pub struct EpochOutcome {
    pub stats: EpochStats,
    pub samples: Vec<Sample>,
    pub scores: SetScores,
}

/// Why an epoch did not finish.
#[derive(Debug, thiserror::Error)]
pub enum EpochError {
    #[error(transparent)]
    Reward(#[from] RewardError),
    /// Interrupted while sampling: nothing of the epoch was trained.
    #[error("interrupted")]
    Interrupted,
}

pub struct Ddpo<'a> {
    pub sampling: SamplingSettings,
    pub training: TrainingSettings,
    pub advantages: AdvantageSettings,
    pub model: &'a DiffusersModel,
    /// The frozen base model, for the KL-to-base term (needed when `kl_coef` > 0).
    pub base: Option<&'a DiffusersModel>,
    pub scheduler: &'a DdimScheduler,
    pub optimizer: AdamW,
    pub tracker: Option<PerPromptTracker>,
    /// Empty for unconditional training (a class-conditional model then gets its null class).
    pub prompts: Vec<Prompt>,
    pub device: Device,
}

/// Observes an epoch: progress and the stop request (Ctrl-C).
pub trait EpochObserver {
    /// A sampling batch (`phase` "sample") or a train batch ("train") finished; `reward` is the
    /// epoch's mean reward once it is known (NaN while sampling).
    fn advanced(&mut self, _phase: &'static str, _done: usize, _total: usize, _reward: f64) {}
    /// True when the run should stop at the next safe point.
    fn stop_requested(&self) -> bool {
        false
    }
}

/// An observer that sees nothing and never stops.
pub struct Unobserved;
impl EpochObserver for Unobserved {}

/// How the epoch's samples were made, before rewards: the trajectories in sampling batches, and
/// per sample its group, its first trained step and its clip scale.
struct SampledEpoch {
    batches: Vec<Trajectories>,
    samples: Vec<Sample>,
    /// Anchor group per sample (each sample its own group for DDPO).
    groups: Vec<usize>,
    /// First trained step per sample (0 for DDPO, k for HRF and the ablations).
    train_starts: Vec<usize>,
    /// Start index per group (HRF, HRF-D) for the log.
    group_starts: Vec<usize>,
    unet_evals: u64,
    /// Images scored outside the epoch's own samples (HRF-D's candidates).
    extra_reward_calls: u64,
}

impl Ddpo<'_> {
    fn label_and_prompt(&self, epoch: u64, key: u64) -> (Option<i64>, Option<String>) {
        let null = self.model.unet.config().num_class_embeds.map(|k| k - 1);
        if self.prompts.is_empty() {
            return (null, None);
        }
        let pick = KeyedRng::new(&[self.training.seed, 0x9807, epoch, key])
            .below(self.prompts.len() as u64) as usize;
        let (text, label) = &self.prompts[pick];
        (Some(*label), Some(text.clone()))
    }

    /// Rolls the current policy for `keys` (with sampling's guidance) from pure noise or `start`.
    fn roll(
        &self,
        labels: Option<&Tensor>,
        keys: &[u64],
        (seed, epoch): (u64, u64),
        eta: f64,
        start: Option<Start<'_>>,
    ) -> Trajectories {
        sample_trajectories(
            &self.model.unet,
            self.scheduler,
            &SampleRequest {
                labels,
                keys,
                seed: mix_seed(&[seed, epoch]) as u64,
                eta,
                guidance: self.sampling.guidance,
            },
            start,
            self.device,
        )
    }

    fn labels_tensor(lp: &[(Option<i64>, Option<String>)]) -> Option<Tensor> {
        lp.first()?.0?;
        Some(Tensor::from_slice(
            &lp.iter()
                .map(|(l, _)| l.expect("all or none"))
                .collect::<Vec<_>>(),
        ))
    }

    /// Runs epoch `epoch`: samples it (rewards scored by `rewards` while the next batch samples),
    /// then trains on it. A stop request during sampling abandons the epoch untrained
    /// (`EpochError::Interrupted`); once training has begun the epoch is finished.
    pub fn epoch(
        &mut self,
        epoch: u64,
        rewards: &mut RewardWorker,
        observer: &mut dyn EpochObserver,
    ) -> Result<EpochOutcome, EpochError> {
        let started = std::time::Instant::now();

        // 1. Sample the whole epoch; each batch goes to the reward thread as soon as it exists.
        let sampled = self.sample_epoch(epoch, rewards, observer)?;
        let sample_s = started.elapsed().as_secs_f64();

        // 2. Rewards → clipped advantages.
        let reward_start = std::time::Instant::now();
        let mut scores = SetScores::default();
        for _ in 0..sampled.batches.len() {
            match rewards.recv() {
                Ok(sc) => scores.extend(sc),
                Err(e) => {
                    rewards.drain();
                    return Err(e.into());
                }
            }
        }
        let reward_wait_s = reward_start.elapsed().as_secs_f64();
        // Samples a reward with `on_error: skip` could not score are left out of the statistics
        // and the advantages; their advantage is 0, so they add no policy-gradient term.
        let kept = scores.kept_or_fail(&format!("epoch {}", epoch + 1))?;
        let total = scores.kept_values(&scores.total);
        let (reward_mean, reward_std) = mean_std(&total);
        let samples = &sampled.samples;
        let kept_adv = match (self.advantages.mode, self.tracker.as_mut()) {
            (AdvantageMode::PerPrompt, Some(tracker)) => {
                let prompts: Vec<String> = kept
                    .iter()
                    .map(|&i| samples[i].prompt.clone().unwrap_or_default())
                    .collect();
                tracker.update(&prompts, &total)
            }
            (AdvantageMode::Group, _) => {
                let groups: Vec<usize> = kept.iter().map(|&i| sampled.groups[i]).collect();
                advantages::group_advantages(&total, &groups)
            }
            _ => advantages::epoch_advantages(&total),
        };
        let mut adv = vec![0.0; samples.len()];
        for (&i, a) in kept.iter().zip(kept_adv) {
            adv[i] = a;
        }
        // HRF scales both clips by the window fraction f of the sample's start.
        let clip_scale: Vec<f64> = sampled
            .train_starts
            .iter()
            .map(|&k| {
                if self.training.method.is_hierarchical() {
                    hrf::window_fraction(self.scheduler, k)
                } else {
                    1.0
                }
            })
            .collect();
        hrf::clip_advantages(&mut adv, &clip_scale, self.training.adv_clip);

        // 3. Train.
        let train_start = std::time::Instant::now();
        let trained = self.train(epoch, &sampled, &adv, &clip_scale, reward_mean, observer);
        let mut starts = BTreeMap::new();
        for &k in &sampled.group_starts {
            *starts.entry(k).or_insert(0usize) += 1;
        }
        let stats = EpochStats {
            epoch,
            reward_mean,
            reward_std,
            reward_components: scores
                .components
                .iter()
                .map(|(name, v)| (name.clone(), mean_std(&scores.kept_values(v)).0))
                .collect(),
            loss: trained.loss,
            clipfrac: trained.clipfrac,
            approx_kl: trained.approx_kl,
            kl_to_base: trained.kl_to_base,
            grad_norm: trained.grad_norm,
            optimizer_steps: trained.optimizer_steps,
            trained_steps_per_sample: trained.steps_per_sample,
            starts,
            unet_evals: sampled.unet_evals + trained.unet_evals,
            reward_calls: samples.len() as u64 + sampled.extra_reward_calls,
            sample_s,
            reward_wait_s,
            train_s: train_start.elapsed().as_secs_f64(),
            skipped: samples.len() - kept.len(),
            skip_reasons: scores.skip_reasons.clone(),
        };
        Ok(EpochOutcome {
            stats,
            samples: sampled.samples,
            scores,
        })
    }

    /// Step 1 of the epoch. DDPO: trajectories from pure noise. HRF / HRF-D: one anchor per group
    /// from the current policy, its start k (window schedule, or HRF-D's search), then each member
    /// re-noised to τ_k and rolled from k (docs/ALGORITHM.md §3.2, §3.3, §4).
    fn sample_epoch(
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
        let group_size = hier.map_or(1, |h| h.group_size);
        let groups: Vec<usize> = (0..total).map(|i| i / group_size).collect();
        let n_groups = total / group_size;
        // Labels and prompts: per group for HRF (one prompt per anchor), per sample for DDPO.
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

        let mut batches: Vec<Trajectories> = Vec::new();
        let mut samples: Vec<Sample> = Vec::with_capacity(total);
        for b in 0..s.batches_per_epoch {
            if observer.stop_requested() {
                rewards.drain();
                return Err(EpochError::Interrupted);
            }
            let range = b * s.batch_size..(b + 1) * s.batch_size;
            let keys: Vec<u64> = range.clone().map(|k| k as u64).collect();
            let labels = Self::labels_tensor(&lp[range.clone()]);
            let latents = start_latents
                .as_ref()
                .map(|x| x.narrow(0, range.start as i64, s.batch_size as i64));
            let tr = self.roll(
                labels.as_ref(),
                &keys,
                (t.seed, epoch),
                s.eta,
                latents.as_ref().map(|x| Start {
                    steps: &train_starts[range.clone()],
                    latents: x,
                }),
            );
            unet_evals += tr.unet_evals;
            let batch: Vec<Sample> = to_images(&tr.final_samples())
                .into_iter()
                .zip(&lp[range.clone()])
                .zip(range.clone())
                .map(|((image, (_, prompt)), i)| Sample {
                    image,
                    prompt: prompt.clone(),
                    metadata: serde_json::json!({"epoch": epoch, "group": groups[i]}),
                })
                .collect();
            samples.extend(batch.iter().cloned());
            rewards.submit(batch);
            batches.push(tr);
            observer.advanced("sample", b + 1, s.batches_per_epoch, f64::NAN);
        }
        // A stop asked for during the last batch drops the epoch too: sampling is never
        // followed by training once a stop is pending.
        if observer.stop_requested() {
            rewards.drain();
            return Err(EpochError::Interrupted);
        }
        Ok(SampledEpoch {
            batches,
            samples,
            groups,
            train_starts,
            group_starts,
            unet_evals,
            extra_reward_calls,
        })
    }

    /// One anchor x₀ per group from the current policy, from pure noise (η = sampling.eta),
    /// in sampling batches. Returns the anchors and the UNet evaluations spent.
    fn sample_anchors(&self, epoch: u64, glp: &[(Option<i64>, Option<String>)]) -> (Tensor, u64) {
        let (s, t) = (&self.sampling, &self.training);
        let mut out = Vec::new();
        let mut evals = 0;
        for chunk in (0..glp.len()).collect::<Vec<_>>().chunks(s.batch_size) {
            let keys: Vec<u64> = chunk.iter().map(|&g| g as u64).collect();
            let labels = Self::labels_tensor(&glp[chunk[0]..=chunk[chunk.len() - 1]]);
            let tr = self.roll(
                labels.as_ref(),
                &keys,
                (mix_seed(&[t.seed, 0xA4C0]) as u64, epoch),
                s.eta,
                None,
            );
            evals += tr.unet_evals;
            out.push(tr.final_samples());
        }
        (Tensor::cat(&out, 0), evals)
    }

    /// HRF-D: for each anchor, C noise copies drawn once and reused for every candidate start
    /// s ∈ range(0, N, stride); each copy re-noised to τ_s and denoised deterministically
    /// (η = 0); R(s) the copies' mean reward, D(s) the cosine distance of copy 0's sample to the
    /// anchor; k by `hrf::choose_start`. Returns the starts, UNet evaluations and reward calls.
    fn search_starts(
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
        for chunk in groups.chunks(per_chunk) {
            if observer.stop_requested() {
                return Err(EpochError::Interrupted);
            }
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
            );
            evals += tr.unet_evals;
            let finals = tr.final_samples();
            let batch: Vec<Sample> = to_images(&finals)
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
            let scored = rewards.score_now(batch)?;
            // D(s): copy 0 of each candidate against its anchor.
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
        }
        Ok((ks, evals, calls))
    }

    /// Step 3: inner epochs over shuffled samples; each sample trains its own permutation of
    /// its trainable steps from its first trained step (the first `timestep_fraction` of them);
    /// samples with fewer steps drop out of later slots. Gradients are weighted per sample
    /// (1/K_r for `mean`, 1 for `sum`), averaged over the train batch, and one optimiser step is
    /// taken per train batch (per `grad_accum` batches; per epoch for DDPO-SF).
    fn train(
        &mut self,
        epoch: u64,
        sampled: &SampledEpoch,
        adv: &[f64],
        clip_scale: &[f64],
        reward_mean: f64,
        observer: &mut dyn EpochObserver,
    ) -> Trained {
        let (s, t) = (&self.sampling, &self.training);
        let total = sampled.samples.len();
        let cat = |f: &dyn Fn(&Trajectories) -> Tensor| {
            Tensor::cat(&sampled.batches.iter().map(f).collect::<Vec<_>>(), 0)
        };
        let latents = cat(&|b| b.latents.shallow_clone());
        let old_lp = cat(&|b| b.log_probs.shallow_clone());
        let labels = sampled.batches[0]
            .labels
            .as_ref()
            .map(|_| cat(&|b| b.labels.as_ref().expect("all or none").shallow_clone()));
        let adv_t = Tensor::from_slice(&adv.iter().map(|&a| a as f32).collect::<Vec<_>>())
            .to_device(self.device);
        let clip_t = Tensor::from_slice(
            &clip_scale
                .iter()
                .map(|&f| {
                    if t.method == Method::DdpoSf {
                        f64::INFINITY
                    } else {
                        t.clip_range * f
                    }
                })
                .collect::<Vec<_>>(),
        )
        .to_kind(Kind::Float)
        .to_device(self.device);
        // Each sample's trainable steps and how many of them it trains.
        let trainable: Vec<Vec<usize>> = sampled
            .train_starts
            .iter()
            .map(|&k| self.scheduler.trainable_steps(k))
            .collect();
        let counts: Vec<usize> = trainable
            .iter()
            .map(|tr| {
                let k = (tr.len() as f64 * t.timestep_fraction) as usize;
                k.clamp(1.min(tr.len()), tr.len())
            })
            .collect();
        let train_batches = total.div_ceil(t.batch_size);
        let per_update = match t.method {
            Method::DdpoSf => train_batches,
            _ => t.grad_accum,
        } as f64;
        let base = if t.kl_coef > 0.0 { self.base } else { None };
        let lr = t.optimizer.lr;
        let mut out = Trained {
            steps_per_sample: counts.iter().copied().max().unwrap_or(0),
            ..Trained::default()
        };
        let mut slots = 0usize;

        for inner in 0..t.inner_epochs as u64 {
            let mut rng = KeyedRng::new(&[t.seed, 0x5417, epoch, inner]);
            let order: Vec<usize> = rng.permutation(total);
            let perms: Vec<Vec<usize>> = trainable
                .iter()
                .map(|tr| rng.permutation(tr.len()))
                .collect();
            self.optimizer.zero_grad();
            for (bi, rows) in order.chunks(t.batch_size).enumerate() {
                let rows_t =
                    Tensor::from_slice(&rows.iter().map(|&r| r as i64).collect::<Vec<_>>())
                        .to_device(self.device);
                let steps: Vec<Vec<usize>> = rows
                    .iter()
                    .map(|&r| {
                        perms[r][..counts[r]]
                            .iter()
                            .map(|&j| trainable[r][j])
                            .collect()
                    })
                    .collect();
                let y = labels.as_ref().map(|l| l.index_select(0, &rows_t));
                let batch = WindowBatch {
                    latents: &latents.index_select(0, &rows_t),
                    old_log_probs: &old_lp.index_select(0, &rows_t),
                    labels: y.as_ref(),
                    advantages: &adv_t.index_select(0, &rows_t),
                    clip: &clip_t.index_select(0, &rows_t),
                    steps: &steps,
                    reduction: t.step_reduction,
                    per_update,
                };
                let st = accumulate_window_gradients(
                    &self.model.unet,
                    base.map(|b| (&b.unet, t.kl_coef)),
                    self.scheduler,
                    &batch,
                    s.eta,
                    s.guidance,
                    t.method == Method::DdpoSf,
                );
                out.loss += st.loss_sum;
                out.clipfrac += st.clipfrac_sum;
                out.approx_kl += st.approx_kl_sum;
                out.kl_to_base += st.kl_to_base_sum;
                out.unet_evals += st.unet_evals;
                slots += st.slots;
                let last = bi + 1 == train_batches;
                let update_now = match t.method {
                    Method::DdpoSf => last,
                    _ => (bi + 1) % t.grad_accum == 0 || last,
                };
                if update_now {
                    out.grad_norm += self.optimizer.clip_grad_norm(t.max_grad_norm);
                    self.optimizer.step_with_lr(lr);
                    self.optimizer.zero_grad();
                    out.optimizer_steps += 1;
                }
                observer.advanced(
                    "train",
                    inner as usize * train_batches + bi + 1,
                    t.inner_epochs * train_batches,
                    reward_mean,
                );
            }
        }
        let per_slot = slots.max(1) as f64;
        out.loss /= per_slot;
        out.clipfrac /= per_slot;
        out.approx_kl /= per_slot;
        out.kl_to_base /= per_slot;
        out.grad_norm /= out.optimizer_steps.max(1) as f64;
        out
    }
}

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
    unet: &hrf_diffusion::UNet2DModel,
    base: Option<(&hrf_diffusion::UNet2DModel, f64)>,
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
            unet,
            sched,
            &batch,
            eta,
            guidance,
            &b.clip.index_select(0, &rows_t),
        );
        st.unet_evals += step_evals(unet, y.as_ref(), guidance, active.len() as u64);
        let mut per_row = if reinforce {
            -(&a * &step.log_prob)
        } else {
            step.per_sample.shallow_clone()
        };
        if let Some((base, coef)) = base {
            let kl = kl_to_base(base, sched, &batch, &step.mean, &step.std, eta, guidance);
            st.unet_evals += step_evals(base, y.as_ref(), guidance, active.len() as u64);
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
        st.objective += objective.double_value(&[]);
        st.loss_sum += per_row.mean(Kind::Float).double_value(&[]);
        st.clipfrac_sum += step.clipfrac;
        st.approx_kl_sum += step.approx_kl;
        st.slots += 1;
    }
    st
}

/// What the train phase reports.
#[derive(Default)]
struct Trained {
    loss: f64,
    clipfrac: f64,
    approx_kl: f64,
    kl_to_base: f64,
    grad_norm: f64,
    optimizer_steps: usize,
    steps_per_sample: usize,
    unet_evals: u64,
}

/// The mean of the values that were scored (skipped samples' totals are NaN); NaN if none.
pub fn mean_of_scored(v: &[f64]) -> f64 {
    let scored: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if scored.is_empty() {
        f64::NAN
    } else {
        mean_std(&scored).0
    }
}

/// Mean and population standard deviation.
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// The DPOK-style KL of the policy's step distribution to the frozen base model's at the same
/// x_t: both are Gaussians with the same σ, so KL = ‖μ_θ − μ_base‖² / (2σ²), averaged over
/// non-batch dimensions like the log-prob; one value per sample, `[B]`. Degenerate steps are
/// never trained, so σ > 0 here.
pub fn kl_to_base(
    base: &hrf_diffusion::UNet2DModel,
    sched: &DdimScheduler,
    b: &StepBatch<'_>,
    policy_mean: &Tensor,
    std: &Tensor,
    eta: f64,
    guidance: f64,
) -> Tensor {
    let base_mean = tch::no_grad(|| {
        let t = sched.timesteps_at(b.step_index);
        let out = crate::sampling::guided_output(base, b.sample, &t, b.labels, guidance);
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

#[cfg(test)]
mod tests {
    use super::*;
    use hrf_core::{Reward, RewardInfo, Score};
    use hrf_diffusion::{SchedulerConfig, UNetConfig};
    use hrf_rewards::{Component, RewardSet};

    /// Mean brightness of the image: a reward whose gradient direction is easy to see.
    struct Brightness;
    impl Reward for Brightness {
        fn info(&self) -> RewardInfo {
            RewardInfo {
                name: "brightness".into(),
                version: "test".into(),
                higher_is_better: true,
                batch_hint: None,
            }
        }
        fn score(&mut self, samples: &[Sample]) -> Result<Vec<Score>, RewardError> {
            Ok(samples
                .iter()
                .map(|s| {
                    Score::new(
                        s.image.data().iter().map(|&b| b as f32).sum::<f32>()
                            / s.image.data().len() as f32,
                    )
                })
                .collect())
        }
    }

    fn run(method: Method, grad_accum: usize, epochs: u64) -> (Vec<EpochStats>, Tensor) {
        let model = DiffusersModel::new_seeded(&UNetConfig::testbed(), Device::Cpu, 1).unwrap();
        let training = TrainingSettings {
            method,
            batch_size: 3,
            grad_accum,
            timestep_fraction: 0.5,
            clip_range: 0.2,
            optimizer: hrf_config::pretrain::AdamWSettings {
                lr: 1e-3,
                ..Default::default()
            },
            ..Default::default()
        };
        let mut params: Vec<(String, Tensor)> = model.vs.variables().into_iter().collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let sched = DdimScheduler::new(SchedulerConfig::default(), 5, 1e-4).unwrap();
        let mut ddpo = Ddpo {
            sampling: SamplingSettings {
                steps: 5,
                batch_size: 4,
                batches_per_epoch: 2,
                ..Default::default()
            },
            advantages: AdvantageSettings::default(),
            scheduler: &sched,
            optimizer: AdamW::new(params, training.optimizer.into()),
            training,
            model: &model,
            base: None,
            tracker: None,
            prompts: vec![],
            device: Device::Cpu,
        };
        let mut worker = RewardWorker::spawn(RewardSet::new(vec![Component {
            name: "brightness".into(),
            weight: 1.0,
            skip_failures: false,
            reward: Box::new(Brightness),
        }]));
        let mut stats = Vec::new();
        for e in 0..epochs {
            stats.push(ddpo.epoch(e, &mut worker, &mut Unobserved).unwrap().stats);
        }
        assert!(
            ddpo.optimizer.updates_flat(),
            "after the first update AdamW runs on its flat buffers"
        );
        let w = model.vs.variables()["conv_out.weight"].detach().copy();
        (stats, w)
    }

    #[test]
    fn an_epoch_takes_the_expected_optimiser_steps_and_is_reproducible() {
        let (stats, w1) = run(Method::DdpoIs, 1, 2);
        // 8 samples in train batches of 3 → 3 batches → 3 optimiser steps per inner epoch.
        assert_eq!(stats[0].optimizer_steps, 3);
        // 5 steps, the last degenerate → 4 trainable; fraction 0.5 → 2 per sample.
        assert_eq!(stats[0].trained_steps_per_sample, 2);
        assert!(stats
            .iter()
            .all(|s| s.loss.is_finite() && s.grad_norm > 0.0 && s.approx_kl.is_finite()));
        // Later train batches of an epoch see the weights after earlier updates: some ratios leave
        // [0.8, 1.2] at this large learning rate, but not all.
        assert!(stats[0].clipfrac < 1.0);
        let (_, w2) = run(Method::DdpoIs, 1, 2);
        assert!(w1.equal(&w2), "same seed, same weights");
        let (accum, _) = run(Method::DdpoIs, 2, 1);
        assert_eq!(
            accum[0].optimizer_steps, 2,
            "3 batches, accumulating 2: steps after batches 2 and 3"
        );
        let (sf, _) = run(Method::DdpoSf, 1, 1);
        assert_eq!(sf[0].optimizer_steps, 1, "DDPO-SF: one step per epoch");
    }
}
