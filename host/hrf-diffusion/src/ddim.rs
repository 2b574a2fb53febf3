//! The DDIM scheduler with diffusers' semantics and a per-step Gaussian log-probability
//! (ddpo-pytorch's `ddim_step_with_logprob`). Every step takes one step index per sample, so a
//! batch may mix positions in the chain (HRF starts samples at different steps).
//!
//! Degenerate steps: a step whose standard deviation at η = 1 is below `sigma_min` (the last step
//! of google/ddpm-* models, see docs/ALGORITHM.md §1.3) is sampled normally, but its log-prob is
//! reported as 0 and `is_trainable` says false; the trainer never puts it in the loss.

use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{Device, Kind, Tensor};

use crate::DiffusionError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    Linear,
    ScaledLinear,
    SquaredcosCapV2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    Epsilon,
    #[serde(rename = "v_prediction")]
    VPrediction,
    Sample,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    Leading,
    Trailing,
    Linspace,
}

/// The fields of a diffusers `scheduler_config.json` that DDIM reads (others are ignored, as
/// diffusers ignores them when it builds a DDIMScheduler from a DDPMScheduler's config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    pub num_train_timesteps: i64,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    pub set_alpha_to_one: bool,
    pub steps_offset: i64,
    pub prediction_type: PredictionType,
    pub timestep_spacing: TimestepSpacing,
    pub thresholding: bool,
    pub rescale_betas_zero_snr: bool,
}

impl Default for SchedulerConfig {
    /// diffusers' DDIMScheduler defaults, which are also what google/ddpm-* models get.
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            clip_sample: true,
            clip_sample_range: 1.0,
            set_alpha_to_one: true,
            steps_offset: 0,
            prediction_type: PredictionType::Epsilon,
            timestep_spacing: TimestepSpacing::Leading,
            thresholding: false,
            rescale_betas_zero_snr: false,
        }
    }
}

impl SchedulerConfig {
    pub fn from_json_file(path: &Path) -> Result<Self, DiffusionError> {
        crate::read_json_config(path, Self::validate)
    }

    pub fn to_diffusers_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("SchedulerConfig serialises");
        let obj = v.as_object_mut().expect("object");
        obj.insert("_class_name".into(), "DDIMScheduler".into());
        obj.insert("_diffusers_version".into(), "0.35.2".into());
        v
    }

    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.num_train_timesteps < 2 {
            problems.push(format!(
                "num_train_timesteps: must be ≥ 2, got {}",
                self.num_train_timesteps
            ));
        }
        if !(self.beta_start > 0.0 && self.beta_end < 1.0 && self.beta_start <= self.beta_end) {
            problems.push(format!(
                "beta_start/beta_end: need 0 < beta_start ≤ beta_end < 1, got {}/{}",
                self.beta_start, self.beta_end
            ));
        }
        if self.thresholding {
            problems.push("thresholding: dynamic thresholding is not supported".into());
        }
        if self.rescale_betas_zero_snr {
            problems.push("rescale_betas_zero_snr: not supported".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// βₜ as diffusers computes them (float32).
    fn betas(&self) -> Tensor {
        let t = self.num_train_timesteps;
        let opts = (Kind::Float, Device::Cpu);
        match self.beta_schedule {
            BetaSchedule::Linear => Tensor::linspace(self.beta_start, self.beta_end, t, opts),
            BetaSchedule::ScaledLinear => {
                Tensor::linspace(self.beta_start.sqrt(), self.beta_end.sqrt(), t, opts).square()
            }
            BetaSchedule::SquaredcosCapV2 => {
                let alpha_bar = |x: f64| {
                    ((x + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                        .cos()
                        .powi(2)
                };
                let betas: Vec<f32> = (0..t)
                    .map(|i| {
                        let (t1, t2) = (i as f64 / t as f64, (i + 1) as f64 / t as f64);
                        (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
                    })
                    .collect();
                Tensor::from_slice(&betas)
            }
        }
    }
}

/// How a step's x_{t−1} is obtained.
pub enum PrevSample<'a> {
    /// Draw x_{t−1} = μ + σ·z with this z (shape of the sample).
    Noise(&'a Tensor),
    /// Score this given x_{t−1} (the trainer recomputing log-probs of stored trajectories).
    Given(&'a Tensor),
}

/// The result of one step for a batch.
#[derive(Debug)]
pub struct DdimStep {
    /// x_{t−1}, `[B, C, H, W]`.
    pub prev: Tensor,
    /// μ_θ, the mean of the step's Gaussian.
    pub mean: Tensor,
    /// x̂₀ as used inside μ (clamped when clip_sample).
    pub pred_original: Tensor,
    /// log p(x_{t−1} | x_t), averaged over non-batch dims, `[B]`; 0 for degenerate steps.
    pub log_prob: Tensor,
    /// σ of the step per sample, `[B]`.
    pub std: Tensor,
}

#[derive(Debug)]
pub struct DdimScheduler {
    config: SchedulerConfig,
    /// Inference timesteps, noisiest first; index i is "step i" everywhere in hrf.
    timesteps: Vec<i64>,
    sigma_min: f64,
    /// The tables the per-sample lookups index, float32 (timesteps int64), on the device
    /// `to_device` chose (the CPU until then): on a GPU a lookup then needs no copy from the
    /// host, which would make the host wait for the device at every step.
    /// ᾱ over all training timesteps, `[T]`.
    alphas_cumprod: Tensor,
    /// ᾱ_t, ᾱ_prev and the η = 1 variance per inference step, `[N]`.
    alpha_t: Tensor,
    alpha_prev: Tensor,
    variance: Tensor,
    /// `timesteps` as a tensor, `[N]`.
    timesteps_t: Tensor,
    /// Host copies of ᾱ and the variance, for host-side queries (`alpha_cumprod`, `sigma`).
    host_alphas_cumprod: Vec<f32>,
    host_variance: Vec<f32>,
}

impl DdimScheduler {
    /// A scheduler for `num_inference_steps` steps. `sigma_min` marks degenerate steps.
    pub fn new(
        config: SchedulerConfig,
        num_inference_steps: i64,
        sigma_min: f64,
    ) -> Result<Self, DiffusionError> {
        config
            .validate()
            .map_err(|message| DiffusionError::Scheduler { message })?;
        let big_t = config.num_train_timesteps;
        if num_inference_steps < 1 || num_inference_steps > big_t {
            return Err(DiffusionError::Scheduler {
                message: format!("steps: must be in 1..={big_t}, got {num_inference_steps}"),
            });
        }
        let n = num_inference_steps;
        let alphas: Tensor = 1.0 - config.betas();
        let alphas_cumprod = alphas.cumprod(0, Kind::Float);
        let timesteps: Vec<i64> = match config.timestep_spacing {
            TimestepSpacing::Leading => {
                let ratio = big_t / n;
                (0..n)
                    .rev()
                    .map(|i| i * ratio + config.steps_offset)
                    .collect()
            }
            TimestepSpacing::Trailing => {
                let ratio = big_t as f64 / n as f64;
                (0..n)
                    .map(|i| (big_t as f64 - i as f64 * ratio).round_ties_even() as i64 - 1)
                    .collect()
            }
            TimestepSpacing::Linspace => {
                let last = (big_t - 1) as f64;
                let denom = (n - 1).max(1) as f64;
                (0..n)
                    .rev()
                    .map(|i| (i as f64 * last / denom).round_ties_even() as i64)
                    .collect()
            }
        };
        if let Some(&t) = timesteps.iter().find(|&&t| t < 0 || t >= big_t) {
            return Err(DiffusionError::Scheduler {
                message: format!("steps_offset: timestep {t} falls outside 0..{big_t}"),
            });
        }
        let final_alpha = if config.set_alpha_to_one {
            Tensor::from(1.0f32)
        } else {
            alphas_cumprod.get(0)
        };
        let ratio = big_t / n;
        let alpha_t = alphas_cumprod.index_select(0, &Tensor::from_slice(&timesteps));
        let prev: Vec<Tensor> = timesteps
            .iter()
            .map(|&t| {
                let p = t - ratio;
                if p >= 0 {
                    alphas_cumprod.get(p)
                } else {
                    final_alpha.shallow_clone()
                }
            })
            .collect();
        let alpha_prev = Tensor::stack(&prev, 0);
        let (beta_prev, beta_t): (Tensor, Tensor) = (1.0 - &alpha_prev, 1.0 - &alpha_t);
        let ratio_term: Tensor = 1.0 - &alpha_t / &alpha_prev;
        let variance = beta_prev / beta_t * ratio_term;
        let host = |t: &Tensor| Vec::<f32>::try_from(t).expect("a float32 table");
        Ok(Self {
            config,
            timesteps_t: Tensor::from_slice(&timesteps),
            timesteps,
            sigma_min,
            host_alphas_cumprod: host(&alphas_cumprod),
            host_variance: host(&variance),
            alphas_cumprod,
            alpha_t,
            alpha_prev,
            variance,
        })
    }

    /// The same scheduler with its per-sample lookup tables on `device`, where the samples
    /// live (results are unchanged; on a GPU no step waits for a host-to-device copy).
    pub fn to_device(&self, device: tch::Device) -> Self {
        Self {
            config: self.config.clone(),
            timesteps: self.timesteps.clone(),
            sigma_min: self.sigma_min,
            alphas_cumprod: self.alphas_cumprod.to_device(device),
            alpha_t: self.alpha_t.to_device(device),
            alpha_prev: self.alpha_prev.to_device(device),
            variance: self.variance.to_device(device),
            timesteps_t: self.timesteps_t.to_device(device),
            host_alphas_cumprod: self.host_alphas_cumprod.clone(),
            host_variance: self.host_variance.clone(),
        }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    pub fn num_steps(&self) -> usize {
        self.timesteps.len()
    }

    /// Training timesteps, noisiest first.
    pub fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    /// The training timesteps of the given step indices, `[B]` int64 on their device.
    pub fn timesteps_at(&self, step_index: &Tensor) -> Tensor {
        self.timesteps_t
            .to_device(step_index.device())
            .index_select(0, step_index)
    }

    /// σ of step i at η = 1.
    pub fn sigma(&self, step: usize) -> f64 {
        (self.host_variance[step] as f64).max(0.0).sqrt()
    }

    /// Whether step i enters the loss (σ ≥ sigma_min at η = 1).
    pub fn is_trainable(&self, step: usize) -> bool {
        self.sigma(step) >= self.sigma_min
    }

    /// The trainable step indices at or after `start`, in chain order.
    pub fn trainable_steps(&self, start: usize) -> Vec<usize> {
        (start..self.num_steps())
            .filter(|&i| self.is_trainable(i))
            .collect()
    }

    /// ᾱ at each of the training timesteps `timesteps` (`[B]`, any device), float32 `[B]`.
    pub fn alphas_cumprod_at(&self, timesteps: &Tensor) -> Tensor {
        self.alphas_cumprod
            .to_device(timesteps.device())
            .index_select(0, timesteps)
    }

    /// ᾱ at training timestep t.
    pub fn alpha_cumprod(&self, t: i64) -> f64 {
        self.host_alphas_cumprod[t as usize] as f64
    }

    fn per_sample(&self, table: &Tensor, step_index: &Tensor, like: &Tensor) -> Tensor {
        let b = step_index.size()[0];
        let mut shape = vec![b];
        shape.extend(std::iter::repeat_n(1, like.dim() - 1));
        table
            .to_device(step_index.device())
            .index_select(0, step_index)
            .to_kind(like.kind())
            .view(shape.as_slice())
    }

    /// (x̂₀, ε̂) from the model output at x_t, before any clamp.
    fn predictions(
        &self,
        model_output: &Tensor,
        a_t: &Tensor,
        sample: &Tensor,
    ) -> (Tensor, Tensor) {
        let beta_t: Tensor = 1.0 - a_t;
        match self.config.prediction_type {
            PredictionType::Epsilon => {
                let x0 = (sample - beta_t.sqrt() * model_output) / a_t.sqrt();
                (x0, model_output.shallow_clone())
            }
            PredictionType::Sample => {
                let eps = (sample - a_t.sqrt() * model_output) / beta_t.sqrt();
                (model_output.shallow_clone(), eps)
            }
            PredictionType::VPrediction => {
                let x0 = a_t.sqrt() * sample - beta_t.sqrt() * model_output;
                let eps = a_t.sqrt() * model_output + beta_t.sqrt() * sample;
                (x0, eps)
            }
        }
    }

    /// x̂₀ predicted at x_t (clamped when clip_sample), e.g. for the reward trajectory.
    pub fn pred_original(
        &self,
        model_output: &Tensor,
        step_index: &Tensor,
        sample: &Tensor,
    ) -> Tensor {
        let a_t = self.per_sample(&self.alpha_t, step_index, sample);
        let (x0, _) = self.predictions(model_output, &a_t, sample);
        self.clip(x0)
    }

    fn clip(&self, x0: Tensor) -> Tensor {
        if self.config.clip_sample {
            let r = self.config.clip_sample_range;
            x0.clamp(-r, r)
        } else {
            x0
        }
    }

    /// One DDIM step from x_t (`sample`) at the given step indices, with noise scale `eta`.
    pub fn step(
        &self,
        model_output: &Tensor,
        step_index: &Tensor,
        sample: &Tensor,
        eta: f64,
        prev: PrevSample<'_>,
    ) -> DdimStep {
        let a_t = self.per_sample(&self.alpha_t, step_index, sample);
        let a_prev = self.per_sample(&self.alpha_prev, step_index, sample);
        let variance = self.per_sample(&self.variance, step_index, sample);
        let (x0, eps) = self.predictions(model_output, &a_t, sample);
        let x0 = self.clip(x0);
        let std = variance.sqrt() * eta;
        let remaining: Tensor = 1.0 - &a_prev - std.square();
        let direction = remaining.sqrt() * eps;
        let mean = a_prev.sqrt() * &x0 + direction;
        let prev = match prev {
            PrevSample::Noise(z) => &mean + &std * z,
            PrevSample::Given(x) => x.shallow_clone(),
        };
        // Degenerate steps (σ below sigma_min at η = 1) get log-prob 0 rather than ±inf/NaN.
        let sigma1 = variance.sqrt();
        let trainable = sigma1.ge(self.sigma_min).logical_and(&std.gt(0.0));
        let safe_std = std.where_self(&trainable, &std.ones_like());
        let sq_err: Tensor = (prev.detach() - &mean).square();
        let log_prob: Tensor = -sq_err / (2.0 * safe_std.square())
            - safe_std.log()
            - (2.0 * std::f64::consts::PI).sqrt().ln();
        let reduce: Vec<i64> = (1..log_prob.dim() as i64).collect();
        let log_prob = log_prob.mean_dim(reduce.as_slice(), false, log_prob.kind());
        let mask = trainable.flatten(0, -1);
        let log_prob = log_prob.where_self(&mask, &log_prob.zeros_like());
        DdimStep {
            prev,
            mean,
            pred_original: x0,
            log_prob,
            std: std.flatten(0, -1),
        }
    }

    /// q(x_t | x₀): √ᾱ_t·x₀ + √(1−ᾱ_t)·noise at one training timestep per sample, `[B]`.
    pub fn add_noise(&self, original: &Tensor, noise: &Tensor, timesteps: &Tensor) -> Tensor {
        let a = self.per_sample(&self.alphas_cumprod, timesteps, original);
        let one_minus: Tensor = 1.0 - &a;
        a.sqrt() * original + one_minus.sqrt() * noise
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(cfg: SchedulerConfig, n: i64) -> DdimScheduler {
        DdimScheduler::new(cfg, n, 1e-4).unwrap()
    }

    #[test]
    fn leading_spacing_matches_diffusers() {
        let s = sched(SchedulerConfig::default(), 40);
        assert_eq!(s.timesteps()[0], 975);
        assert_eq!(*s.timesteps().last().unwrap(), 0);
        assert_eq!(s.num_steps(), 40);
    }

    #[test]
    fn trailing_and_linspace_spacing() {
        let trailing = SchedulerConfig {
            timestep_spacing: TimestepSpacing::Trailing,
            ..Default::default()
        };
        assert_eq!(sched(trailing, 4).timesteps(), [999, 749, 499, 249]);
        let lin = SchedulerConfig {
            timestep_spacing: TimestepSpacing::Linspace,
            ..Default::default()
        };
        // np.linspace(0, 999, 4).round()[::-1] = [999, 666, 333, 0]
        assert_eq!(sched(lin, 4).timesteps(), [999, 666, 333, 0]);
    }

    #[test]
    fn last_step_is_degenerate_with_or_without_alpha_to_one() {
        for set_alpha_to_one in [true, false] {
            let cfg = SchedulerConfig {
                set_alpha_to_one,
                ..Default::default()
            };
            let s = sched(cfg, 40);
            assert!(!s.is_trainable(39));
            assert!(s.is_trainable(38));
            assert_eq!(s.trainable_steps(0).len(), 39);
        }
    }

    #[test]
    fn steps_out_of_range_are_refused() {
        assert!(DdimScheduler::new(SchedulerConfig::default(), 0, 1e-4).is_err());
        assert!(DdimScheduler::new(SchedulerConfig::default(), 1001, 1e-4).is_err());
    }
}
