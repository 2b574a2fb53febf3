//! DDPM pretraining of a (class-conditional) UNet: ε-prediction MSE at uniform timesteps, class
//! dropout to the null class so one model samples both conditionally and unconditionally, AdamW,
//! EMA weights, sample grids, and checkpoints that resume exactly (batches and noise are drawn per
//! (seed, step), never from a running generator).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use hrf_data::Dataset;
use hrf_diffusion::{DdimScheduler, DiffusersModel, SchedulerConfig};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::policy::{to_images, Policy};
use crate::rng::KeyedRng;
use crate::sampling::{keyed_noise, sample, SampleRequest};
use crate::{ema, AdamW, AdamWConfig};

pub use hrf_config::pretrain_pipeline::{AdamWSettings, PretrainSettings};

impl From<AdamWSettings> for AdamWConfig {
    fn from(s: AdamWSettings) -> Self {
        AdamWConfig {
            lr: s.lr,
            beta1: s.beta1,
            beta2: s.beta2,
            eps: s.eps,
            weight_decay: s.weight_decay,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PretrainError {
    #[error("{0}")]
    Diffusion(#[from] hrf_diffusion::DiffusionError),
    #[error("{path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("data: {0}")]
    Data(String),
    #[error("training diverged: the loss was not finite ({loss}) by step {step}")]
    Diverged { step: i64, loss: f64 },
    #[error("interrupted after step {step}: its checkpoint is written, nothing was exported")]
    Interrupted { step: i64 },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PretrainError {
    let path = path.to_path_buf();
    move |source| PretrainError::Io { path, source }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointState {
    step: i64,
    settings: PretrainSettings,
}

/// What a finished (or resumed-and-finished) pretraining reports.
#[derive(Debug, Clone, Serialize)]
pub struct PretrainSummary {
    /// Steps trained in all (resumed ones included).
    pub steps: i64,
    /// Steps the pipeline asked for (more than `steps` when the time limit ended the run).
    pub planned_steps: i64,
    /// Whether `training.max_seconds` ended the run before `planned_steps`.
    pub stopped_by_time_limit: bool,
    pub final_loss: f64,
    pub wall_s: f64,
    pub images_per_s: f64,
    pub parameters: i64,
}

/// The learning rate at optimiser step `step` (1-based): linear warm-up, then cosine decay.
pub fn lr_at(s: &PretrainSettings, step: i64) -> f64 {
    let lr = s.optimizer.lr;
    if step <= s.warmup_steps {
        return lr * step as f64 / s.warmup_steps.max(1) as f64;
    }
    let span = (s.steps - s.warmup_steps).max(1) as f64;
    let progress = ((step - s.warmup_steps) as f64 / span).min(1.0);
    let floor = lr * s.min_lr_ratio;
    floor + (lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// The whole dataset as a u8 tensor `[N, C, H, W]` and labels `[N]`.
fn dataset_tensors(data: &Dataset) -> (Tensor, Tensor) {
    let (c, h, w) = (
        data.channels.count() as i64,
        data.height as i64,
        data.width as i64,
    );
    let mut bytes = Vec::with_capacity(data.len() * (c * h * w) as usize);
    for i in 0..data.len() {
        bytes.extend_from_slice(data.pixels(i));
    }
    let x = Tensor::from_slice(&bytes)
        .view([data.len() as i64, h, w, c])
        .permute([0, 3, 1, 2])
        .contiguous();
    let y = Tensor::from_slice(&data.labels.iter().map(|&l| l as i64).collect::<Vec<_>>());
    (x, y)
}

/// Min-SNR-γ weights (Hang et al. 2023) for samples at noise levels ᾱ: with SNR = ᾱ/(1 − ᾱ),
/// min(SNR, γ)/SNR for ε-prediction, min(SNR, γ)/(SNR + 1) for v-prediction and min(SNR, γ)
/// for x₀-prediction — the same weighting of the x₀ error in each parametrisation.
pub fn min_snr_weight(
    alpha_bar: &Tensor,
    gamma: f64,
    prediction: hrf_diffusion::ddim::PredictionType,
) -> Tensor {
    use hrf_diffusion::ddim::PredictionType;
    let snr: Tensor = alpha_bar / (1.0 - alpha_bar);
    let clipped = snr.clamp_max(gamma);
    match prediction {
        PredictionType::Epsilon => clipped / snr,
        PredictionType::VPrediction => clipped / (snr + 1.0),
        PredictionType::Sample => clipped,
    }
}

/// The permutation of epoch `epoch`: epochs are seeded permutations of the dataset.
fn epoch_permutation(n: i64, seed: u64, epoch: i64) -> Tensor {
    let perm: Vec<i64> = KeyedRng::new(&[seed, 0xE90C, epoch as u64])
        .permutation(n as usize)
        .into_iter()
        .map(|i| i as i64)
        .collect();
    Tensor::from_slice(&perm)
}

/// The sample order, one permutation per epoch, each drawn once (not once per step) and kept on
/// the training device (so a step's indices need no copy from the host).
struct EpochOrder {
    device: Device,
    /// The epochs drawn and still needed, oldest first.
    epochs: Vec<(i64, Tensor)>,
}

impl EpochOrder {
    fn new(device: Device) -> Self {
        Self {
            device,
            epochs: Vec::new(),
        }
    }

    /// Sample indices of step `step` (0-based) on the device: positions `step·batch ..` of the
    /// epochs' permutations laid end to end. The same for a given (seed, step) however it is
    /// reached.
    fn batch(&mut self, n: i64, batch: i64, seed: u64, step: i64) -> Tensor {
        let start = step * batch;
        self.epochs.retain(|(e, _)| *e >= start / n);
        let mut parts = Vec::new();
        let mut pos = start;
        while pos < start + batch {
            let (epoch, offset) = (pos / n, pos % n);
            let take = (batch - (pos - start)).min(n - offset);
            if !self.epochs.iter().any(|(e, _)| *e == epoch) {
                let perm = epoch_permutation(n, seed, epoch).to_device(self.device);
                self.epochs.push((epoch, perm));
            }
            let perm = &self
                .epochs
                .iter()
                .find(|(e, _)| *e == epoch)
                .expect("drawn")
                .1;
            parts.push(perm.narrow(0, offset, take));
            pos += take;
        }
        Tensor::cat(&parts, 0)
    }
}

/// Keeps the lines of `metrics.jsonl` logged at steps ≤ `step` (those of the checkpoint a run
/// resumes from; none for a fresh run), so a run killed after logging past its last checkpoint
/// does not log those steps twice when resumed.
fn keep_metrics_up_to(path: &Path, step: i64) -> Result<(), PretrainError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_i64())
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    if kept.len() != text.len() {
        let tmp = path.with_extension("jsonl.tmp");
        std::fs::write(&tmp, kept).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err(path))?;
    }
    Ok(())
}

fn checkpoint_dirs(out: &Path) -> Vec<(i64, PathBuf)> {
    let mut v: Vec<(i64, PathBuf)> = std::fs::read_dir(out.join("checkpoints"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("step-")?.parse().ok()?;
            e.path()
                .join("state.json")
                .exists()
                .then(|| (step, e.path()))
        })
        .collect();
    v.sort();
    v
}

pub struct Pretrainer<'a> {
    pub settings: PretrainSettings,
    pub scheduler: SchedulerConfig,
    pub data: &'a Dataset,
    pub out_dir: PathBuf,
    pub device: Device,
    pub show_progress: bool,
    /// Test hook: end the process (exit code 137, as SIGKILL) right after the checkpoint of this
    /// step is written, to prove that `--resume` continues exactly.
    pub abort_after_checkpoint: Option<i64>,
    /// Set (e.g. by a signal handler) to stop after the current step: a checkpoint of that step
    /// is written and `run` returns `Interrupted`, exporting nothing.
    pub stop: &'a std::sync::atomic::AtomicBool,
}

impl Pretrainer<'_> {
    /// Trains `model` (its EMA copy is kept alongside) and returns the EMA model.
    pub fn run(
        &self,
        model: DiffusersModel,
        resume: bool,
    ) -> Result<(DiffusersModel, PretrainSummary), PretrainError> {
        let s = &self.settings;
        let dev = self.device;
        let cfg = model.unet.config().clone();
        let null = model.unet.null_condition();
        if let Some(null) = null {
            if self.data.num_classes() as i64 > null {
                return Err(PretrainError::Data(format!(
                    "{} classes need num_class_embeds ≥ {} (one extra for the null class), the model has {}",
                    self.data.num_classes(),
                    self.data.num_classes() + 1,
                    null + 1
                )));
            }
        }
        let size = cfg.sample_size.unwrap_or(32) as u32;
        if self.data.width != size
            || self.data.height != size
            || self.data.channels.count() as i64 != cfg.in_channels
        {
            return Err(PretrainError::Data(format!(
                "images are {}×{}×{}, the model takes {size}×{size}×{}",
                self.data.width,
                self.data.height,
                self.data.channels.count(),
                cfg.in_channels
            )));
        }
        std::fs::create_dir_all(&self.out_dir).map_err(io_err(&self.out_dir))?;
        let sched = DdimScheduler::new(self.scheduler.clone(), s.grid_steps, 1e-4)?.to_device(dev);
        let ema_model = DiffusersModel::new(&cfg, dev)?;
        ema::copy_weights(&ema_model.vs, &model.vs);
        let mut params: Vec<(String, Tensor)> = model
            .vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let mut opt = AdamW::new(params, s.optimizer.into());
        let ema_update = ema::ModelEma::new(&ema_model.vs, &opt);

        let mut start_step = 0;
        if resume {
            if let Some((step, dir)) = checkpoint_dirs(&self.out_dir).pop() {
                let mut m = DiffusersModel::load(&dir.join("model"), dev)?;
                ema::copy_weights(&model.vs, &m.vs);
                m = DiffusersModel::load(&dir.join("ema"), dev)?;
                ema::copy_weights(&ema_model.vs, &m.vs);
                opt.load(&dir.join("optimizer.safetensors"))
                    .map_err(|message| PretrainError::Checkpoint {
                        path: dir.clone(),
                        message,
                    })?;
                start_step = step;
                eprintln!("resuming from {} (step {step})", dir.display());
            }
        }

        // The whole dataset lives on the training device (Fashion-MNIST: 61 MB as bytes).
        let (x_all, y_all) = dataset_tensors(self.data);
        let (x_all, y_all) = (x_all.to_device(dev), y_all.to_device(dev));
        let mut order = EpochOrder::new(dev);
        let n = self.data.len() as i64;
        let t_max = self.scheduler.num_train_timesteps;
        let metrics_path = self.out_dir.join("metrics.jsonl");
        keep_metrics_up_to(&metrics_path, start_step)?;
        let mut metrics = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)
            .map_err(io_err(&metrics_path))?;
        let bar = if self.show_progress {
            indicatif::ProgressBar::new(s.steps as u64)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps · {msg} · {elapsed} elapsed, ETA {eta}",
            )
            .expect("template"),
        );
        bar.set_position(start_step as u64);
        let started = Instant::now();
        // (since, images, loss sum on the device, count): the loss and the gradient norm are read
        // back only when a line is logged, so a GPU is not made to wait every step.
        let mut window = (
            Instant::now(),
            0i64,
            Tensor::from(0f32).to_device(dev),
            0i64,
        );
        let mut last_loss = f64::NAN;
        // (a budget too large for the clock is no budget)
        let deadline = s
            .max_seconds
            .and_then(|m| std::time::Duration::try_from_secs_f64(m).ok())
            .and_then(|d| started.checked_add(d));
        let mut done = start_step;
        let mut out_of_time = false;

        for step in start_step..s.steps {
            // Everything random in this step is keyed by (seed, step): exact resume.
            let idx = order.batch(n, s.batch_size, s.seed, step);
            // (drawn on the host from keyed streams, never from libtorch's global generator)
            let mut draw = KeyedRng::new(&[s.seed, 0x57E9, step as u64]);
            let x0 = (x_all.index_select(0, &idx).to_kind(Kind::Float) / 127.5) - 1.0;
            let mut y = y_all.index_select(0, &idx);
            if let Some(null) = null {
                let drop: Vec<bool> = (0..s.batch_size)
                    .map(|_| draw.uniform() < s.class_dropout)
                    .collect();
                let drop = Tensor::from_slice(&drop).to_device(dev);
                y = y.where_self(&drop.logical_not(), &y.full_like(null));
            }
            let t: Vec<i64> = (0..s.batch_size)
                .map(|_| draw.below(t_max as u64) as i64)
                .collect();
            let t = Tensor::from_slice(&t).to_device(dev);
            let rows: Vec<u64> = (0..s.batch_size as u64).collect();
            let noise = keyed_noise(
                s.seed,
                &rows,
                0x57E9_0000 + step as u64,
                &x0.size()[1..],
                dev,
            );
            let x_t = sched.add_noise(&x0, &noise, &t);
            let pred = model.unet.forward(&x_t, &t, null.map(|_| &y));
            let target = match self.scheduler.prediction_type {
                hrf_diffusion::ddim::PredictionType::Epsilon => noise,
                hrf_diffusion::ddim::PredictionType::Sample => x0.shallow_clone(),
                hrf_diffusion::ddim::PredictionType::VPrediction => {
                    // v = √ᾱ·ε − √(1−ᾱ)·x₀
                    let abar = sched.alphas_cumprod_at(&t).view([-1, 1, 1, 1]);
                    let one_minus: Tensor = 1.0 - &abar;
                    abar.sqrt() * &noise - one_minus.sqrt() * &x0
                }
            };
            let loss = match s.min_snr_gamma {
                None => (pred - target).square().mean(Kind::Float),
                Some(gamma) => {
                    let per_sample =
                        (pred - target)
                            .square()
                            .mean_dim(&[1i64, 2, 3][..], false, Kind::Float);
                    let w = min_snr_weight(
                        &sched.alphas_cumprod_at(&t),
                        gamma,
                        self.scheduler.prediction_type,
                    );
                    (per_sample * w).mean(Kind::Float)
                }
            };
            opt.zero_grad();
            loss.backward();
            let grad_norm = opt.clip_grad_norm_deferred(s.max_grad_norm);
            let lr = lr_at(s, step + 1);
            opt.step_with_lr(lr);
            let decay = ema::warmed_decay(s.ema_decay, step);
            ema_update.update(&ema_model.vs, &model.vs, decay);

            window.1 += s.batch_size;
            let _ = window.2.g_add_(&loss.detach());
            window.3 += 1;
            done = step + 1;
            bar.set_position(done as u64);
            out_of_time = deadline.is_some_and(|d| Instant::now() >= d) && done < s.steps;
            let interrupted = self.stop.load(std::sync::atomic::Ordering::SeqCst);
            // The last step: the planned one, or the one during which the time ran out.
            let last = done == s.steps || out_of_time;
            let log_now = done % s.log_every == 0 || last || interrupted;
            let checkpoint_now = done % s.checkpoint_every == 0 || last || interrupted;
            let mut loss_sum = f64::NAN;
            if log_now || checkpoint_now || done % s.sample_every == 0 {
                // A non-finite loss anywhere in the window makes the sum non-finite: nothing
                // diverged is logged, sampled or checkpointed.
                loss_sum = window.2.double_value(&[]);
                if !loss_sum.is_finite() {
                    return Err(PretrainError::Diverged {
                        step: done,
                        loss: loss_sum,
                    });
                }
                last_loss = loss.double_value(&[]);
            }
            if log_now {
                let grad_norm = grad_norm.double_value(&[]);
                let secs = window.0.elapsed().as_secs_f64().max(1e-9);
                let ips = window.1 as f64 / secs;
                let mean_loss = loss_sum / window.3 as f64;
                bar.set_message(format!("loss {mean_loss:.4} · {ips:.0} img/s"));
                if !self.show_progress {
                    eprintln!(
                        "step {done}/{}: loss {mean_loss:.4}, {ips:.0} img/s",
                        s.steps
                    );
                }
                let line = serde_json::json!({
                    "step": done, "loss": mean_loss, "lr": lr, "grad_norm": grad_norm,
                    "images_per_s": ips, "elapsed_s": started.elapsed().as_secs_f64(),
                });
                writeln!(metrics, "{line}").map_err(io_err(&metrics_path))?;
                window = (Instant::now(), 0, window.2.zero_(), 0);
            }
            if done % s.sample_every == 0 || last {
                self.write_grid(&ema_model, &sched, done)?;
            }
            if checkpoint_now {
                self.write_checkpoint(&model, &ema_model, &opt, done)?;
                if self.abort_after_checkpoint == Some(done) {
                    std::process::exit(137);
                }
            }
            if interrupted {
                bar.finish_and_clear();
                return Err(PretrainError::Interrupted { step: done });
            }
            if out_of_time {
                bar.suspend(|| {
                    eprintln!(
                        "the time limit (training.max_seconds) ended training at step {done} of {}",
                        s.steps
                    )
                });
                break;
            }
        }
        bar.finish_and_clear();
        let wall = started.elapsed().as_secs_f64();
        let trained = (done - start_step).max(0);
        let summary = PretrainSummary {
            steps: done,
            planned_steps: s.steps,
            stopped_by_time_limit: out_of_time,
            final_loss: last_loss,
            wall_s: wall,
            images_per_s: (trained * s.batch_size) as f64 / wall.max(1e-9),
            parameters: model.num_parameters(),
        };
        let mut ema_model = ema_model;
        ema_model.scheduler = Some(self.scheduler.clone());
        Ok((ema_model, summary))
    }

    /// A grid of EMA samples: rows of one sample per class, then a row of unconditional ones.
    fn write_grid(
        &self,
        model: &DiffusersModel,
        sched: &DdimScheduler,
        step: i64,
    ) -> Result<(), PretrainError> {
        let classes = self.data.num_classes() as i64;
        let null = model.unet.null_condition();
        let rows = 3i64;
        let mut labels: Vec<i64> = (0..rows * classes).map(|i| i % classes).collect();
        if let Some(null) = null {
            labels.extend(std::iter::repeat_n(null, classes as usize));
        }
        let keys: Vec<u64> = (0..labels.len() as u64).collect();
        let y = Tensor::from_slice(&labels).to_device(self.device);
        let x = sample(
            &model.unet,
            sched,
            &SampleRequest {
                labels: null.map(|_| &y),
                keys: &keys,
                seed: self.settings.seed ^ 0x6121,
                eta: 0.0,
                guidance: self.settings.grid_guidance,
            },
            self.device,
        );
        let path = self
            .out_dir
            .join("samples")
            .join(format!("step-{step:06}.png"));
        hrf_data::grid::save_grid(&to_images(&x), classes as usize, 2, &path)
            .map_err(|message| PretrainError::Checkpoint { path, message })
    }

    fn write_checkpoint(
        &self,
        model: &DiffusersModel,
        ema_model: &DiffusersModel,
        opt: &AdamW,
        step: i64,
    ) -> Result<(), PretrainError> {
        let root = self.out_dir.join("checkpoints");
        let dir = root.join(format!("step-{step:06}"));
        let tmp = root.join(format!(".step-{step:06}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        model.save(&tmp.join("model"), Some(&self.scheduler))?;
        ema_model.save(&tmp.join("ema"), Some(&self.scheduler))?;
        let opt_path = tmp.join("optimizer.safetensors");
        opt.save(&opt_path).map_err(|e| PretrainError::Checkpoint {
            path: opt_path.clone(),
            message: e.to_string(),
        })?;
        let state = CheckpointState {
            step,
            settings: self.settings.clone(),
        };
        let state_path = tmp.join("state.json");
        std::fs::write(
            &state_path,
            serde_json::to_string_pretty(&state).expect("json"),
        )
        .map_err(io_err(&state_path))?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).map_err(io_err(&dir))?;
        let all = checkpoint_dirs(&self.out_dir);
        for (_, old) in all.iter().take(
            all.len()
                .saturating_sub(self.settings.keep_checkpoints.max(1)),
        ) {
            std::fs::remove_dir_all(old).map_err(io_err(old))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> PretrainSettings {
        PretrainSettings {
            steps: 1000,
            warmup_steps: 100,
            min_lr_ratio: 0.1,
            optimizer: AdamWSettings {
                lr: 1e-3,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// Known values: ᾱ = 0.5 → SNR 1; ᾱ = 10/11 → SNR 10; ᾱ = 1/11 → SNR 0.1 (γ = 5).
    #[test]
    fn min_snr_weights_match_the_paper() {
        use hrf_diffusion::ddim::PredictionType::*;
        let a = Tensor::from_slice(&[0.5f64, 10.0 / 11.0, 1.0 / 11.0]);
        let get = |p| Vec::<f64>::try_from(min_snr_weight(&a, 5.0, p)).unwrap();
        let close = |got: Vec<f64>, want: [f64; 3]| {
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-12, "{got:?} vs {want:?}");
            }
        };
        close(get(Epsilon), [1.0, 0.5, 1.0]);
        close(get(VPrediction), [0.5, 5.0 / 11.0, 0.1 / 1.1]);
        close(get(Sample), [1.0, 5.0, 0.1]);
    }

    #[test]
    fn lr_warms_up_then_decays() {
        let s = settings();
        assert!((lr_at(&s, 50) - 5e-4).abs() < 1e-12);
        assert!((lr_at(&s, 100) - 1e-3).abs() < 1e-12);
        assert!((lr_at(&s, 1000) - 1e-4).abs() < 1e-12);
        assert!(lr_at(&s, 550) < 1e-3 && lr_at(&s, 550) > 1e-4);
    }

    #[test]
    fn batches_cover_each_epoch_once() {
        let n = 10;
        let mut order = EpochOrder::new(Device::Cpu);
        let batches: Vec<Vec<i64>> = (0..5)
            .map(|s| Vec::<i64>::try_from(order.batch(n, 4, 1, s)).unwrap())
            .collect();
        let mut first: Vec<i64> = batches.concat();
        let second = first.split_off(10);
        assert_ne!(first, second, "each epoch has its own order");
        for mut epoch in [first, second] {
            epoch.sort();
            assert_eq!(epoch, (0..n).collect::<Vec<_>>());
        }
        // Same (seed, step) → same batch, whether reached in order (above) or directly (resume).
        assert_eq!(
            Vec::<i64>::try_from(EpochOrder::new(Device::Cpu).batch(n, 4, 1, 3)).unwrap(),
            batches[3]
        );
        assert_ne!(
            batches[0],
            Vec::<i64>::try_from(EpochOrder::new(Device::Cpu).batch(n, 4, 2, 0)).unwrap()
        );
    }
}
