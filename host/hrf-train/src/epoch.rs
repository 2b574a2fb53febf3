//! One DDPO epoch (docs/ALGORITHM.md §2): sample the whole epoch under no-grad
//! (`epoch_sampling`), score the final images, turn rewards into clipped advantages, then for
//! each inner epoch train on shuffled samples, each with its own permutation of its trainable
//! steps (`gradients`), taking one optimiser step per train batch (or per `grad_accum` batches;
//! one per epoch for DDPO-SF; a train batch is one anchor group with HRF's `update: per-group`)
//! at the epoch's learning rate. HRF and HRF-D differ only in how the samples start (`hrf`).

use std::collections::BTreeMap;

use hrf_config::training::{
    AdvantageMode, AdvantageSettings, GroupUpdate, Method, SamplingSettings, TrainingPrecision,
    TrainingSettings,
};
use hrf_core::{RewardError, Sample};
use hrf_diffusion::autocast::Autocast;
use hrf_diffusion::DdimScheduler;
use hrf_report::stats::mean_std;
use hrf_rewards::{RewardWorker, SetScores};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::advantages::{self, PerPromptTracker};
use crate::gradients::{accumulate_window_gradients, WindowBatch, Workers};
use crate::hrf;
use crate::policy::{MixedPrecision, Policy};
use crate::rng::KeyedRng;
use crate::sampling::{mix_seed, Rows, SampleRequest};
use crate::trajectory::{sample_trajectories, Start, Trajectories};
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
    /// Optimiser steps whose pre-clip gradient norm exceeded `max_grad_norm` (so were
    /// rescaled), and their share of the epoch's steps.
    pub grad_clipped_steps: usize,
    pub grad_clipped_share: f64,
    /// The learning rate of the epoch (`training.optimizer.schedule`).
    pub lr: f64,
    /// The effective PPO ratio clip ranges ε·f over the epoch's samples (None for DDPO-SF,
    /// which has no ratio clip).
    pub ratio_clip_min: Option<f64>,
    pub ratio_clip_mean: Option<f64>,
    pub ratio_clip_max: Option<f64>,
    /// The effective advantage clips c_A·f over the epoch's samples.
    pub adv_clip_min: f64,
    pub adv_clip_mean: f64,
    pub adv_clip_max: f64,
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
    /// Per network reward (`kind: http`): its requests, retries, failures and latency.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reward_requests: BTreeMap<String, hrf_core::CallStats>,
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
    /// The model being fine-tuned.
    pub policy: &'a dyn Policy,
    /// The frozen base model, for the KL-to-base term (needed when `kl_coef` > 0).
    pub base: Option<&'a dyn Policy>,
    pub scheduler: &'a DdimScheduler,
    pub optimizer: AdamW,
    pub tracker: Option<PerPromptTracker>,
    /// Empty for unconditional training (a class-conditional model then gets its null class).
    pub prompts: Vec<Prompt>,
    pub device: Device,
    /// A factor on the scheduled learning rate (1; a guard's rollbacks lower it).
    pub lr_scale: f64,
    /// One-thread CPU workers that run the sampling batches and each train batch's passes side
    /// by side (`model.workers`; 1: one after another on this thread). Used only when the
    /// policy (and the base model) are `Policy::concurrent`.
    pub workers: usize,
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
/// per sample its group, its first trained step and its clip scale. The images themselves are
/// with the reward worker, which hands them back with their scores.
pub(crate) struct SampledEpoch {
    pub(crate) batches: Vec<Trajectories>,
    /// Anchor group per sample (each sample its own group for DDPO).
    pub(crate) groups: Vec<usize>,
    /// First trained step per sample (0 for DDPO, k for HRF and the ablations).
    pub(crate) train_starts: Vec<usize>,
    /// Start index per group (HRF, HRF-D) for the log.
    pub(crate) group_starts: Vec<usize>,
    pub(crate) unet_evals: u64,
    /// Images scored outside the epoch's own samples (HRF-D's candidates).
    pub(crate) extra_reward_calls: u64,
}

impl Ddpo<'_> {
    pub(crate) fn label_and_prompt(&self, epoch: u64, key: u64) -> (Option<i64>, Option<String>) {
        let null = self.policy.null_condition();
        if self.prompts.is_empty() {
            return (null, None);
        }
        let pick = KeyedRng::new(&[self.training.seed, 0x9807, epoch, key])
            .below(self.prompts.len() as u64) as usize;
        let (text, label) = &self.prompts[pick];
        (Some(*label), Some(text.clone()))
    }

    /// The workers the epoch's passes are dealt out to (`workers` when the models allow).
    pub(crate) fn workers(&self) -> usize {
        let concurrent = self.policy.concurrent() && self.base.is_none_or(|b| b.concurrent());
        if concurrent {
            self.workers.max(1)
        } else {
            1
        }
    }

    /// The autocast of the epoch's sampling and training passes (`training.precision`).
    fn autocast(&self) -> Option<Autocast> {
        match self.training.precision {
            TrainingPrecision::Fp32 => None,
            TrainingPrecision::Bf16 => Some(
                Autocast::bf16(self.device)
                    .expect("hrf runs on the CPU or CUDA, where bf16 autocasts"),
            ),
        }
    }

    /// Rolls the current policy for `keys` (with sampling's guidance) from pure noise or `start`;
    /// `rows`: whether the epoch trains these trajectories (`sampling::Rows`).
    pub(crate) fn roll(
        &self,
        labels: Option<&Tensor>,
        keys: &[u64],
        (seed, epoch): (u64, u64),
        eta: f64,
        start: Option<Start<'_>>,
        rows: Rows,
    ) -> Trajectories {
        sample_trajectories(
            &MixedPrecision::new(self.policy, self.autocast()),
            self.scheduler,
            &SampleRequest {
                labels,
                keys,
                seed: mix_seed(&[seed, epoch]) as u64,
                eta,
                guidance: self.sampling.guidance,
            },
            start,
            rows,
            self.device,
        )
    }

    pub(crate) fn labels_tensor(lp: &[(Option<i64>, Option<String>)]) -> Option<Tensor> {
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
        let mut samples: Vec<Sample> = Vec::with_capacity(sampled.train_starts.len());
        for _ in 0..sampled.batches.len() {
            match rewards.recv_batch() {
                (batch, Ok(sc)) => {
                    scores.extend(sc);
                    samples.extend(batch);
                }
                (_, Err(e)) => {
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
        let scale = self.training.hrf.as_ref().map(|h| h.clip_scale);
        let clip_scale: Vec<f64> = sampled
            .train_starts
            .iter()
            .map(|&k| match scale {
                Some(scale) if self.training.method.is_hierarchical() => {
                    hrf::window_fraction(self.scheduler, k, scale)
                }
                _ => 1.0,
            })
            .collect();
        let clips = EffectiveClips::of(&clip_scale, &self.training);
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
            grad_clipped_steps: trained.grad_clipped_steps,
            grad_clipped_share: trained.grad_clipped_steps as f64
                / trained.optimizer_steps.max(1) as f64,
            lr: trained.lr,
            ratio_clip_min: clips.ratio.map(|r| r.0),
            ratio_clip_mean: clips.ratio.map(|r| r.1),
            ratio_clip_max: clips.ratio.map(|r| r.2),
            adv_clip_min: clips.advantage.0,
            adv_clip_mean: clips.advantage.1,
            adv_clip_max: clips.advantage.2,
            trained_steps_per_sample: trained.steps_per_sample,
            starts,
            unet_evals: sampled.unet_evals + trained.unet_evals,
            reward_calls: samples.len() as u64 + sampled.extra_reward_calls,
            sample_s,
            reward_wait_s,
            train_s: train_start.elapsed().as_secs_f64(),
            skipped: samples.len() - kept.len(),
            skip_reasons: scores.skip_reasons.clone(),
            reward_requests: scores.requests.clone(),
        };
        Ok(EpochOutcome {
            stats,
            samples,
            scores,
        })
    }

    /// Step 3: inner epochs over shuffled samples; each sample trains its own permutation of
    /// its trainable steps from its first trained step (the first `timestep_fraction` of them);
    /// samples with fewer steps drop out of later slots. Gradients are weighted per sample
    /// (1/K_r for `mean`, 1 for `sum`), averaged over the train batch, and one optimiser step is
    /// taken per train batch (per `grad_accum` batches; per epoch for DDPO-SF). With HRF's
    /// `update: per-group`, the train batches are the anchor groups in a shuffled order.
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
        let total = sampled.train_starts.len();
        let cat = |f: &dyn Fn(&Trajectories) -> Tensor| {
            Tensor::cat(&sampled.batches.iter().map(f).collect::<Vec<_>>(), 0)
        };
        let latents = cat(&|b| b.latents.shallow_clone());
        let sample_keys: Vec<u64> = sampled
            .batches
            .iter()
            .flat_map(|b| b.keys.clone())
            .collect();
        let seed = sampled.batches[0].seed;
        assert!(
            sampled.batches.iter().all(|b| b.seed == seed),
            "one sampling seed per epoch"
        );
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
        let per_group = t
            .hrf
            .as_ref()
            .is_some_and(|h| h.update == GroupUpdate::PerGroup && t.method.is_hierarchical());
        // The epoch's groups, each its samples in order (HRF's one-group-per-step batches).
        let members: Vec<Vec<usize>> = if per_group {
            let n = sampled.groups.iter().copied().max().map_or(0, |g| g + 1);
            let mut m = vec![Vec::new(); n];
            for (i, &g) in sampled.groups.iter().enumerate() {
                m[g].push(i);
            }
            m
        } else {
            Vec::new()
        };
        let train_batches = if per_group {
            members.len()
        } else {
            total.div_ceil(t.batch_size)
        };
        let per_update = match t.method {
            Method::DdpoSf => train_batches,
            _ => t.grad_accum,
        } as f64;
        let policy = MixedPrecision::new(self.policy, self.autocast());
        let base = (self.base)
            .filter(|_| t.kl_coef > 0.0)
            .map(|b| MixedPrecision::new(b, self.autocast()));
        let lr = t.optimizer.lr_at(epoch, t.epochs) * self.lr_scale;
        let workers = self.workers();
        let params: Vec<Tensor> = if workers > 1 {
            self.optimizer.params().map(Tensor::shallow_clone).collect()
        } else {
            Vec::new()
        };
        let mut out = Trained {
            steps_per_sample: counts.iter().copied().max().unwrap_or(0),
            lr,
            ..Trained::default()
        };
        let mut slots = 0usize;

        for inner in 0..t.inner_epochs as u64 {
            let mut rng = KeyedRng::new(&[t.seed, 0x5417, epoch, inner]);
            // Shuffled: samples across groups in batches of batch_size. Per group: the groups
            // in shuffled order, one per batch.
            let batches: Vec<Vec<usize>> = if per_group {
                rng.permutation(members.len())
                    .into_iter()
                    .map(|g| members[g].clone())
                    .collect()
            } else {
                rng.permutation(total)
                    .chunks(t.batch_size)
                    .map(<[usize]>::to_vec)
                    .collect()
            };
            let perms: Vec<Vec<usize>> = trainable
                .iter()
                .map(|tr| rng.permutation(tr.len()))
                .collect();
            self.optimizer.zero_grad();
            for (bi, rows) in batches.iter().enumerate() {
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
                let row_keys: Vec<u64> = rows.iter().map(|&r| sample_keys[r]).collect();
                let batch = WindowBatch {
                    latents: &latents.index_select(0, &rows_t),
                    old_log_probs: &old_lp.index_select(0, &rows_t),
                    labels: y.as_ref(),
                    advantages: &adv_t.index_select(0, &rows_t),
                    clip: &clip_t.index_select(0, &rows_t),
                    steps: &steps,
                    reduction: t.step_reduction,
                    per_update,
                    micro_batch: t.micro_batch,
                    sampled: (seed, &row_keys),
                    workers: (workers > 1).then_some(Workers {
                        count: workers,
                        params: &params,
                    }),
                };
                let st = accumulate_window_gradients(
                    &policy,
                    base.as_ref().map(|b| (b as &dyn Policy, t.kl_coef)),
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
                    let norm = self.optimizer.clip_grad_norm(t.max_grad_norm);
                    out.grad_norm += norm;
                    out.grad_clipped_steps += usize::from(norm > t.max_grad_norm);
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

/// What the train phase reports.
#[derive(Default)]
struct Trained {
    loss: f64,
    clipfrac: f64,
    approx_kl: f64,
    kl_to_base: f64,
    grad_norm: f64,
    optimizer_steps: usize,
    grad_clipped_steps: usize,
    lr: f64,
    steps_per_sample: usize,
    unet_evals: u64,
}

/// The clip ranges an epoch's samples train under after the window scale f: (min, mean, max)
/// of the ratio clip ε·f (none for DDPO-SF) and of the advantage clip c_A·f.
struct EffectiveClips {
    ratio: Option<(f64, f64, f64)>,
    advantage: (f64, f64, f64),
}

impl EffectiveClips {
    fn of(scales: &[f64], t: &TrainingSettings) -> Self {
        let spread = |c: f64| {
            let v: Vec<f64> = scales.iter().map(|f| c * f).collect();
            let min = v.iter().copied().fold(f64::INFINITY, f64::min);
            let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if v.is_empty() {
                (0.0, 0.0, 0.0)
            } else {
                (min, v.iter().sum::<f64>() / v.len() as f64, max)
            }
        };
        Self {
            ratio: (t.method != Method::DdpoSf).then(|| spread(t.clip_range)),
            advantage: spread(t.adv_clip),
        }
    }
}

#[cfg(test)]
mod tests;
