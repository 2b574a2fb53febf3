//! The run's evaluations: fixed-seed samples scored by the training rewards and the gold
//! rewards, diversity from the evaluation classifier, and best/ by the pipeline's rule.

use std::collections::BTreeMap;
use std::time::Instant;

use hrf_config::pipeline::BestBy;
use hrf_core::{Image, Sample};
use hrf_diffusion::DdimScheduler;
use hrf_report::diversity;
use hrf_report::records::{BestRecord, EvalReport};
use hrf_report::stats::{mean_of_scored, mean_std};
use tch::Tensor;

use super::{Run, RunError, RunState};
use crate::sampling::{sample_observed, SampleRequest};
use crate::workers::in_turn;

impl Run<'_> {
    fn labels_for(&self, keys: &[u64]) -> Option<Vec<i64>> {
        if self.prompts.is_empty() {
            let null = self.model.policy().null_condition()?;
            return Some(vec![null; keys.len()]);
        }
        Some(
            keys.iter()
                .map(|&k| self.prompts[k as usize % self.prompts.len()].1)
                .collect(),
        )
    }

    /// The prompts of an evaluation's first `n` samples (keys 0..n), for its grid.
    pub(super) fn eval_prompts(&self, n: usize) -> Vec<Option<String>> {
        (0..n as u64).map(|k| self.prompt_for(k)).collect()
    }

    fn prompt_for(&self, key: u64) -> Option<String> {
        (!self.prompts.is_empty())
            .then(|| self.prompts[key as usize % self.prompts.len()].0.clone())
    }

    fn samples_of(&self, images: Vec<Image>, keys: &[u64], epoch: u64) -> Vec<Sample> {
        images
            .into_iter()
            .zip(keys)
            .map(|(image, &k)| Sample {
                image,
                prompt: self.prompt_for(k),
                metadata: serde_json::json!({"epoch": epoch, "evaluation": true}),
            })
            .collect()
    }

    /// Evaluates the current weights on `n` fixed-seed samples.
    pub fn evaluate(
        &mut self,
        scheduler: &DdimScheduler,
        epoch: u64,
        n: usize,
    ) -> Result<(EvalReport, Vec<Image>), RunError> {
        self.evaluate_with_gold(scheduler, epoch, n)
            .map(|(report, images, _)| (report, images))
    }

    /// [`evaluate`](Self::evaluate), with each gold reward's value per sample (NaN where an
    /// `on_error: skip` gold reward could not score it).
    #[allow(clippy::type_complexity)]
    pub(super) fn evaluate_with_gold(
        &mut self,
        scheduler: &DdimScheduler,
        epoch: u64,
        n: usize,
    ) -> Result<(EvalReport, Vec<Image>, BTreeMap<String, Vec<f64>>), RunError> {
        let started = Instant::now();
        let ev = &self.pipeline.evaluation;
        let guidance = ev.guidance;
        let keys: Vec<u64> = (0..n as u64).collect();
        let mut images = Vec::with_capacity(n);
        // x̂₀ at every step for the first batch, for the reward trajectory.
        let trajectory_n = n.min(ev.batch_size).min(32);
        let mut predictions: Vec<Tensor> = Vec::new();
        let chunks: Vec<&[u64]> = keys.chunks(ev.batch_size.max(1)).collect();
        let policy = self.model.policy();
        let sample_chunk = |ci: usize| {
            let chunk = chunks[ci];
            let labels = self.labels_for(chunk).map(|l| Tensor::from_slice(&l));
            let mut along = Vec::new();
            let x = sample_observed(
                policy,
                scheduler,
                &SampleRequest {
                    labels: labels.as_ref(),
                    keys: chunk,
                    seed: ev.seed,
                    eta: ev.eta,
                    guidance,
                },
                self.device,
                &mut |_, x0| {
                    if ci == 0 {
                        along.push(x0.narrow(0, 0, trajectory_n as i64));
                    }
                },
            );
            (x, along)
        };
        // SAFETY: a chunk's sampling only reads the policy (`workers()` is 1 unless it is
        // concurrent), the scheduler and the run's prompts.
        unsafe {
            in_turn(
                self.workers(),
                chunks.len(),
                &sample_chunk,
                &mut |ci, (x, along)| {
                    if ci == 0 {
                        predictions = along;
                    }
                    images.extend(policy.decode(&x));
                    true
                },
            )
        };
        // The worker hands the samples back, so the images are not copied to be scored.
        let (scored, scores) = self
            .rewards
            .score_now_batch(self.samples_of(images, &keys, epoch));
        let scores = scores?;
        let mut gold_values = BTreeMap::new();
        for set in &mut self.gold {
            let g = set.score(&scored)?;
            for why in &g.skip_reasons {
                eprintln!("warning: evaluation: gold reward: {why}");
            }
            gold_values.insert(set.names().concat(), g.total);
        }
        let images: Vec<Image> = scored.into_iter().map(|s| s.image).collect();
        // Samples a reward with `on_error: skip` could not score are left out of the means.
        scores.kept_or_fail("the evaluation")?;
        for why in &scores.skip_reasons {
            eprintln!("warning: evaluation: {why}");
        }
        let (reward_mean, reward_std) = mean_std(&scores.kept_values(&scores.total));
        let reward_components = scores
            .components
            .iter()
            .map(|(name, v)| (name.clone(), mean_std(&scores.kept_values(v)).0))
            .collect();
        // Every step's predictions in one reward call, then a mean per step.
        let mut along: Vec<Sample> = Vec::with_capacity(predictions.len() * trajectory_n);
        for x0 in &predictions {
            along.extend(self.samples_of(
                self.model.policy().decode(x0),
                &keys[..trajectory_n],
                epoch,
            ));
        }
        let reward_trajectory: Vec<f64> = if along.is_empty() {
            Vec::new()
        } else {
            self.rewards
                .score_now(along)?
                .total
                .chunks(trajectory_n)
                .map(mean_of_scored)
                .collect()
        };
        let (mut diversity, mut per_prompt_vendi, mut class_accuracy) = (None, None, None);
        if let Some(evaluator) = self.evaluator.as_mut() {
            let (d, classified) = evaluator.diversity(&images)?;
            if !self.prompts.is_empty() {
                let mut by_prompt: BTreeMap<usize, Vec<Vec<f32>>> = BTreeMap::new();
                for (i, f) in classified.features.iter().enumerate() {
                    by_prompt
                        .entry(i % self.prompts.len())
                        .or_default()
                        .push(f.clone());
                }
                let vendis: Vec<f64> = by_prompt
                    .values()
                    .map(|f| diversity::vendi_score(f))
                    .collect();
                per_prompt_vendi = Some(vendis.iter().sum::<f64>() / vendis.len().max(1) as f64);
                // The prompt's class is the classifier's label only for the testbed's prompts.
                if !classified.probs.is_empty() {
                    let hits = classified
                        .predicted()
                        .iter()
                        .enumerate()
                        .filter(|&(i, &k)| k as i64 == self.prompts[i % self.prompts.len()].1)
                        .count();
                    class_accuracy = Some(hits as f64 / n.max(1) as f64);
                }
            }
            diversity = Some(d);
        }
        let report = EvalReport {
            epoch,
            samples: n,
            reward_mean,
            reward_sem: reward_std / (n.max(2) as f64 - 1.0).sqrt(),
            reward_components,
            reward_trajectory,
            diversity,
            per_prompt_vendi,
            class_accuracy,
            sample_rewards: scores
                .total
                .iter()
                .zip(&scores.skipped)
                .map(|(&r, &skipped)| (!skipped).then_some(r))
                .collect(),
            gold: gold_values
                .iter()
                .map(|(name, v)| (name.clone(), mean_of_scored(v)))
                .collect(),
            eval_s: started.elapsed().as_secs_f64(),
        };
        Ok((report, images, gold_values))
    }

    fn is_better(
        &self,
        report: &EvalReport,
        best: Option<&BestRecord>,
        base: Option<&EvalReport>,
    ) -> bool {
        let eligible = match &self.pipeline.evaluation.best_by {
            BestBy::Reward => true,
            BestBy::RewardAndDiversity { min_vendi_ratio } => {
                let base_vendi = base.and_then(|b| b.diversity.as_ref()).map(|d| d.vendi);
                let vendi = report.diversity.as_ref().map(|d| d.vendi);
                match (vendi, base_vendi) {
                    (Some(v), Some(b)) => v >= min_vendi_ratio * b,
                    _ => true,
                }
            }
        };
        eligible && best.is_none_or(|b| report.reward_mean > b.reward_mean)
    }

    /// Saves best/ when `report` beats the best so far by the pipeline's rule.
    pub(super) fn keep_if_best(
        &self,
        report: &EvalReport,
        state: &mut RunState,
    ) -> Result<(), RunError> {
        if self.is_better(report, state.best.as_ref(), state.base_eval.as_ref()) {
            self.model
                .save(&self.dir.join("best"), self.scheduler.config())?;
            state.best = Some(BestRecord {
                epoch: report.epoch,
                reward_mean: report.reward_mean,
                vendi: report.diversity.as_ref().map(|d| d.vendi),
            });
        }
        Ok(())
    }
}
