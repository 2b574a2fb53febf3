//! A training run on disk (docs/ARCHITECTURE.md §7): epochs of DDPO, evaluations on fixed-seed
//! samples, metrics.jsonl, sample grids, plots, atomic checkpoints with everything an exact resume
//! needs, and the `best/` and `final/` model folders.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use hrf_config::pipeline::RunPipeline;
use hrf_core::Image;
use hrf_diffusion::DdimScheduler;
use hrf_report::diversity;
use hrf_report::records::{
    describe_eval, BestRecord, EvalReport, PairedGain, RunSummary, METRICS_FILE, SUMMARY_FILE,
};
use hrf_rewards::{RewardSet, RewardWorker};
use serde::{Deserialize, Serialize};
use tch::Device;

use crate::advantages::PerPromptTracker;
use crate::epoch::{Ddpo, EpochError, EpochObserver, EpochStats, Prompt};
use crate::evaluation::Evaluator;
use crate::guard::{branch_seed, GuardState};
use crate::policy::Policy;
use crate::tuned::TunedModel;
use crate::AdamW;
use hrf_config::guard::GuardAction;
use hrf_report::stats::mean_of_scored;

mod checkpoints;
mod evaluate;

const STATE_FILE: &str = "state.json";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const MODEL_DIR: &str = "model";

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Reward(#[from] hrf_core::RewardError),
    #[error(transparent)]
    Model(#[from] hrf_diffusion::DiffusionError),
    #[error(transparent)]
    Onnx(#[from] hrf_rewards::onnx::OnnxError),
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    /// Stopped on request (Ctrl-C) after writing a checkpoint.
    #[error("interrupted; checkpoint written at epoch {epochs_done}")]
    Interrupted { epochs_done: u64 },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RunError {
    let path = path.to_path_buf();
    move |e| RunError::Io {
        path,
        message: e.to_string(),
    }
}

/// Where a test hook kills the process (SIGKILL) to prove resumption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillPoint {
    /// After the first sampling batch of the epoch.
    Sampling(u64),
    /// After the first train batch of the epoch.
    Training(u64),
    /// Inside the checkpoint written after the epoch, before it is renamed into place.
    Checkpoint(u64),
}

impl KillPoint {
    /// `sampling:E`, `training:E` or `checkpoint:E` (epochs counted from 0).
    pub fn parse(s: &str) -> Option<Self> {
        let (what, e) = s.split_once(':')?;
        let e = e.parse().ok()?;
        match what {
            "sampling" => Some(Self::Sampling(e)),
            "training" => Some(Self::Training(e)),
            "checkpoint" => Some(Self::Checkpoint(e)),
            _ => None,
        }
    }
}

fn kill_now() -> ! {
    // SIGKILL, as an out-of-memory killer or a pulled plug would: no destructors, no flushing.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    unreachable!("SIGKILL returned")
}

/// How much a run prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
}

/// Everything besides weights and optimiser moments that an exact resume needs. Random draws
/// are keyed by (seed, epoch, sample, step), so no generator state is kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunState {
    epochs_done: u64,
    tracker: Option<PerPromptTracker>,
    best: Option<BestRecord>,
    base_eval: Option<EvalReport>,
    /// Length of metrics.jsonl when the checkpoint was written: later lines are replayed.
    metrics_len: u64,
    /// Wall seconds of every process of this run up to the checkpoint, so that a resumed run's
    /// summary counts all of them (checkpoints from before this field read as 0).
    #[serde(default)]
    wall_s: f64,
    /// The guards' state (docs/GUARDS.md); default for runs without a `guard:` section.
    #[serde(default)]
    guard: GuardState,
}

pub struct Run<'a> {
    pub pipeline: &'a RunPipeline,
    pub model: &'a dyn TunedModel,
    /// The frozen base model, for the KL-to-base term.
    pub base: Option<&'a dyn Policy>,
    /// The DDIM chain of sampling, training and evaluation (built once, by the caller).
    pub scheduler: &'a DdimScheduler,
    /// (text, class label); empty for unconditional runs.
    pub prompts: Vec<Prompt>,
    pub rewards: RewardWorker,
    /// `evaluation.gold`, one set per gold reward: scored at every evaluation, never trained
    /// on.
    pub gold: Vec<RewardSet>,
    /// The independent evaluation classifier and the real reference set; `None` skips the
    /// diversity metrics (a model whose images it cannot take).
    pub evaluator: Option<Evaluator>,
    pub dir: PathBuf,
    pub device: Device,
    pub kill_at: Option<KillPoint>,
    pub verbosity: Verbosity,
    /// Set from a signal handler: stop at the next safe point, checkpoint, return Interrupted.
    pub stop: &'a std::sync::atomic::AtomicBool,
}

struct Progress<'a> {
    bar: indicatif::ProgressBar,
    epoch: u64,
    /// Time left for the epochs after this one, from the mean epoch time so far.
    later_epochs: Option<std::time::Duration>,
    kill_at: Option<KillPoint>,
    stop: &'a std::sync::atomic::AtomicBool,
}

impl EpochObserver for Progress<'_> {
    fn advanced(&mut self, phase: &'static str, done: usize, total: usize, reward: f64) {
        let mut msg = format!("{phase} {done}/{total}");
        if reward.is_finite() {
            msg.push_str(&format!(" · reward {reward:.4}"));
        }
        if let Some(later) = self.later_epochs {
            let left = later + self.bar.eta();
            msg.push_str(&format!(" · run ETA {}", indicatif::HumanDuration(left)));
        }
        self.bar.set_message(msg);
        self.bar.inc(1);
        match (phase, self.kill_at) {
            ("sample", Some(KillPoint::Sampling(e))) | ("train", Some(KillPoint::Training(e)))
                if e == self.epoch && done == 1 =>
            {
                kill_now()
            }
            _ => {}
        }
    }
    fn stop_requested(&self) -> bool {
        self.stop.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Run<'_> {
    /// The one-thread CPU workers of the run's passes (`model.workers`): 1 on a GPU (device
    /// auto), where every pass runs there, and for a policy whose passes hold state.
    fn workers(&self) -> usize {
        if self.device == tch::Device::Cpu && self.model.policy().concurrent() {
            self.pipeline.model.workers
        } else {
            1
        }
    }

    fn metrics_path(&self) -> PathBuf {
        self.dir.join(METRICS_FILE)
    }

    fn append_metrics(&self, line: &serde_json::Value) -> Result<(), RunError> {
        let path = self.metrics_path();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        writeln!(f, "{line}").map_err(io_err(&path))?;
        f.sync_data().map_err(io_err(&path))
    }

    /// Writes up to 64 images as an 8-column grid `samples/NAME.png`; with prompts, also
    /// `samples/NAME.prompts.json`: the prompt of every cell, row by row.
    fn write_grid(
        &self,
        images: &[Image],
        prompts: &[Option<String>],
        name: &str,
    ) -> Result<(), RunError> {
        const COLUMNS: usize = 8;
        let path = self.dir.join("samples").join(format!("{name}.png"));
        let n = images.len().min(64);
        hrf_data::grid::save_grid(&images[..n], COLUMNS, 2, &path).map_err(|message| {
            RunError::Io {
                path: path.clone(),
                message,
            }
        })?;
        if prompts.iter().take(n).all(Option::is_none) {
            return Ok(());
        }
        let rows: Vec<&[Option<String>]> =
            prompts[..n.min(prompts.len())].chunks(COLUMNS).collect();
        let text =
            serde_json::json!({"grid": format!("{name}.png"), "columns": COLUMNS, "prompts": rows});
        let path = self
            .dir
            .join("samples")
            .join(format!("{name}.prompts.json"));
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&text).expect("json") + "\n",
        )
        .map_err(io_err(&path))
    }

    fn update_plots(&self) {
        if let Err(e) = hrf_report::run_plots::write_run_plots(&self.dir) {
            eprintln!("warning: plots: {e}");
        }
    }

    /// Trains (or resumes) the run to its last epoch and evaluates the final model. With a
    /// `guard:` section, every evaluation is checked and the run may stop early or go back to
    /// an earlier checkpoint (docs/GUARDS.md).
    pub fn train(mut self, resume: bool) -> Result<RunSummary, RunError> {
        let started = Instant::now();
        let p = self.pipeline;
        for sub in ["samples", "plots", "checkpoints"] {
            let d = self.dir.join(sub);
            std::fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        let scheduler = self.scheduler;
        let params = self.model.trainable();
        // With workers, what runs on this thread (the optimiser step, the gradient norm) runs
        // at one libtorch thread too, so every operation of the run is a one-thread one.
        if self.workers() > 1 {
            tch::set_num_threads(1);
        }
        if p.model.workers > 1 && self.workers() == 1 && self.verbosity != Verbosity::Quiet {
            eprintln!(
                "model.workers {} left unused: the run is on {:?}",
                p.model.workers, self.device
            );
        }
        let mut ddpo = Ddpo {
            sampling: p.sampling.clone(),
            training: p.training.clone(),
            advantages: p.advantages.clone(),
            policy: self.model.policy(),
            base: self.base,
            scheduler,
            optimizer: AdamW::new(params, p.training.optimizer.adamw().into()),
            tracker: (p.advantages.mode == hrf_config::training::AdvantageMode::PerPrompt)
                .then(|| PerPromptTracker::new(p.advantages.buffer_size, p.advantages.min_count)),
            prompts: self.prompts.clone(),
            device: self.device,
            lr_scale: 1.0,
            workers: self.workers(),
        };

        let resumed = if resume {
            self.load_checkpoint(&mut ddpo)?
        } else {
            None
        };
        let mut state = match resumed {
            Some(s) => {
                let path = self.metrics_path();
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                f.set_len(s.metrics_len).map_err(io_err(&path))?;
                if self.verbosity != Verbosity::Quiet {
                    eprintln!("resuming after epoch {}", s.epochs_done);
                }
                s
            }
            None => {
                let path = self.metrics_path();
                if path.exists() {
                    std::fs::remove_file(&path).map_err(io_err(&path))?;
                }
                let (report, images) = self.evaluate(scheduler, 0, p.evaluation.samples)?;
                self.append_metrics(&serde_json::json!({"kind": "eval", "report": report}))?;
                self.write_grid(&images, &self.eval_prompts(images.len()), "eval-0000")?;
                if self.verbosity != Verbosity::Quiet {
                    eprintln!("{}", describe_eval("base model", &report));
                }
                let mut state = RunState {
                    epochs_done: 0,
                    tracker: ddpo.tracker.clone(),
                    best: None,
                    guard: GuardState::after_base(&report),
                    base_eval: Some(report),
                    metrics_len: 0,
                    wall_s: 0.0,
                };
                // A rollback can go back as far as the base model.
                if p.guard
                    .as_ref()
                    .is_some_and(|g| g.action == GuardAction::Rollback)
                {
                    state.guard.last_good = Some(0);
                    state.metrics_len = file_len(&self.metrics_path());
                    self.write_checkpoint(&ddpo, &state)?;
                }
                state
            }
        };
        // A rolled-back run trains on with its own noise and its lower rate.
        ddpo.training.seed = branch_seed(p.training.seed, state.guard.rollbacks);
        ddpo.lr_scale = state.guard.lr_scale;
        self.update_plots();
        // This process's time counts from its start, on top of what earlier processes spent.
        let wall_before = state.wall_s;
        let wall_now = || wall_before + started.elapsed().as_secs_f64();

        let epochs = p.training.epochs as u64;
        let per_epoch = (p.sampling.batches_per_epoch
            + p.training.inner_epochs
                * (p.sampling.batch_size * p.sampling.batches_per_epoch)
                    .div_ceil(p.training.batch_size)) as u64;
        let (mut loop_start, mut first_epoch) = (std::time::Instant::now(), state.epochs_done);
        let mut epoch = state.epochs_done;
        while epoch < epochs && state.guard.stopped_at.is_none() {
            let later_epochs = (epoch > first_epoch).then(|| {
                loop_start.elapsed().div_f64((epoch - first_epoch) as f64)
                    * (epochs - epoch - 1) as u32
            });
            let bar = if self.verbosity == Verbosity::Quiet {
                indicatif::ProgressBar::hidden()
            } else {
                indicatif::ProgressBar::new(per_epoch)
            };
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "epoch {prefix} {bar:25} {msg} · {elapsed} (ETA {eta})",
                )
                .expect("template"),
            );
            bar.set_prefix(format!("{}/{epochs}", epoch + 1));
            let mut progress = Progress {
                bar,
                epoch,
                later_epochs,
                kill_at: self.kill_at,
                stop: self.stop,
            };
            let outcome = match ddpo.epoch(epoch, &mut self.rewards, &mut progress) {
                Ok(o) => o,
                // A reward call cut short by the stop request (every wait on a plugin ends on
                // it) is a stop during sampling too.
                Err(e)
                    if matches!(e, EpochError::Interrupted)
                        || self.stop.load(std::sync::atomic::Ordering::SeqCst) =>
                {
                    progress.bar.finish_and_clear();
                    state.metrics_len = file_len(&self.metrics_path());
                    state.wall_s = wall_now();
                    self.write_checkpoint(&ddpo, &state)?;
                    return Err(RunError::Interrupted {
                        epochs_done: state.epochs_done,
                    });
                }
                Err(EpochError::Reward(e)) => return Err(e.into()),
                Err(EpochError::Interrupted) => unreachable!("handled by the arm above"),
            };
            progress.bar.finish_and_clear();
            let images: Vec<Image> = outcome.samples.iter().map(|s| s.image.clone()).collect();
            let histogram = match self.evaluator.as_mut() {
                Some(ev) if !ev.class_names.is_empty() => Some(diversity::class_histogram(
                    &ev.classify(&images)?.probs,
                    ev.class_names.len(),
                )),
                _ => None,
            };
            let mut line = serde_json::to_value(&outcome.stats).expect("stats serialise");
            line["kind"] = "epoch".into();
            line["class_histogram"] = serde_json::to_value(&histogram).expect("histogram");
            self.append_metrics(&line)?;
            let prompts: Vec<Option<String>> =
                outcome.samples.iter().map(|s| s.prompt.clone()).collect();
            self.write_grid(&images, &prompts, &format!("epoch-{:04}", epoch + 1))?;
            if outcome.stats.skipped > 0 {
                eprintln!(
                    "warning: epoch {}: {} of {} samples skipped (on_error: skip): {}",
                    epoch + 1,
                    outcome.stats.skipped,
                    outcome.samples.len(),
                    outcome.stats.skip_reasons.join("; ")
                );
            }
            if self.verbosity != Verbosity::Quiet {
                self.describe_epoch(epoch, &outcome.stats, histogram.as_deref());
            }
            state.epochs_done = epoch + 1;
            state.tracker.clone_from(&ddpo.tracker);

            let every = p.evaluation.every as u64;
            let last = epoch + 1 == epochs;
            let mut verdict = Verdict::Ok;
            if every > 0 && (epoch + 1) % every == 0 && !last {
                let (report, images) = self.evaluate(scheduler, epoch + 1, p.evaluation.samples)?;
                self.append_metrics(&serde_json::json!({"kind": "eval", "report": report}))?;
                self.write_grid(
                    &images,
                    &self.eval_prompts(images.len()),
                    &format!("eval-{:04}", epoch + 1),
                )?;
                if self.verbosity != Verbosity::Quiet {
                    eprintln!(
                        "{}",
                        describe_eval(&format!("epoch {}", epoch + 1), &report)
                    );
                }
                verdict = self.guard_check(&mut state, &report, epoch + 1, false)?;
                if verdict.passed() {
                    self.keep_if_best(&report, &mut state)?;
                }
            }
            self.update_plots();
            let stopping = self.stop.load(std::sync::atomic::Ordering::SeqCst);
            if let Verdict::Rollback(to) = verdict {
                self.roll_back(&mut ddpo, &mut state, to, wall_now())?;
                (loop_start, first_epoch, epoch) = (std::time::Instant::now(), to, to);
            } else {
                // With rollbacks on, every passing evaluation leaves a checkpoint to go back to.
                let good = verdict == Verdict::Passed
                    && p.guard
                        .as_ref()
                        .is_some_and(|g| g.action == GuardAction::Rollback);
                if good {
                    state.guard.last_good = Some(epoch + 1);
                }
                let stopped = verdict == Verdict::Stop;
                if (epoch + 1) % p.run.save_every as u64 == 0 || last || stopping || good || stopped
                {
                    state.metrics_len = file_len(&self.metrics_path());
                    state.wall_s = wall_now();
                    self.write_checkpoint(&ddpo, &state)?;
                }
                epoch += 1;
            }
            if stopping && epoch < epochs {
                return Err(RunError::Interrupted {
                    epochs_done: state.epochs_done,
                });
            }
        }

        // The final evaluation, on the larger fixed-seed set.
        let done = state.epochs_done;
        let (report, images, gold_values) =
            self.evaluate_with_gold(scheduler, done, p.evaluation.final_samples)?;
        self.append_metrics(&serde_json::json!({"kind": "final", "report": report}))?;
        self.write_grid(&images, &self.eval_prompts(images.len()), "final")?;
        // The guards judge the final model on the seeds of the evaluations during training.
        let passed = match p.guard {
            Some(_) => {
                let n = p.evaluation.samples.min(images.len());
                let mut head = report.clone();
                if let Some(ev) = self.evaluator.as_mut() {
                    head.diversity = Some(ev.diversity(&images[..n])?.0);
                }
                head.gold = gold_values
                    .iter()
                    .map(|(name, v)| (name.clone(), mean_of_scored(&v[..n.min(v.len())])))
                    .collect();
                self.guard_check(&mut state, &head, done, true)?.passed()
            }
            None => true,
        };
        if passed {
            self.keep_if_best(&report, &mut state)?;
        }
        self.model
            .save(&self.dir.join("final"), self.scheduler.config())?;
        self.update_plots();
        if self.verbosity != Verbosity::Quiet {
            eprintln!("{}", describe_eval("final", &report));
        }
        let summary = RunSummary {
            dir: self.dir.clone(),
            epochs: done,
            base: state.base_eval.clone(),
            gain: state
                .base_eval
                .as_ref()
                .and_then(|b| PairedGain::between(b, &report)),
            last: report,
            best: state.best.clone(),
            wall_s: wall_now(),
            guard: p.guard.as_ref().map(|_| state.guard.summary()),
            machine: hrf_report::records::Machine {
                device: format!("{:?}", self.device),
                cpu: hrf_report::records::Machine::cpu_model(),
                threads: tch::get_num_threads().max(1) as usize,
                workers: self.workers(),
            },
        };
        let path = self.dir.join(SUMMARY_FILE);
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&summary).expect("summary") + "\n",
        )
        .map_err(io_err(&path))?;
        Ok(summary)
    }

    /// The epoch's line on the terminal (and its components, verbose).
    fn describe_epoch(&self, epoch: u64, s: &EpochStats, histogram: Option<&[usize]>) {
        let epochs = self.pipeline.training.epochs;
        eprintln!(
            "epoch {}/{epochs}: reward {:.4} ± {:.4}, loss {:.3e}, clipfrac {:.3}, approx-KL {:.2e}, grad norm {:.3} ({} of {} steps clipped), lr {:.2e} · sample {:.1} s, rewards {:.1} s, train {:.1} s",
            epoch + 1,
            s.reward_mean,
            s.reward_std,
            s.loss,
            s.clipfrac,
            s.approx_kl,
            s.grad_norm,
            s.grad_clipped_steps,
            s.optimizer_steps,
            s.lr,
            s.sample_s,
            s.reward_wait_s,
            s.train_s
        );
        if self.verbosity == Verbosity::Verbose {
            let parts: Vec<String> = s
                .reward_components
                .iter()
                .map(|(name, m)| format!("{name} {m:.4}"))
                .collect();
            eprintln!(
                "  components: {} · KL to base {:.3e} · optimiser steps {} · classes {:?}",
                parts.join(", "),
                s.kl_to_base,
                s.optimizer_steps,
                histogram.unwrap_or(&[])
            );
        }
    }

    /// The guards' verdict on an evaluation, logged as a `guard` line (and on the terminal when
    /// something fails); `Verdict::Ok` without a `guard:` section. The final evaluation
    /// (`at_final`) is only judged, for best/.
    fn guard_check(
        &self,
        state: &mut RunState,
        report: &EvalReport,
        epoch: u64,
        at_final: bool,
    ) -> Result<Verdict, RunError> {
        let (Some(g), Some(base)) = (&self.pipeline.guard, state.base_eval.as_ref()) else {
            return Ok(Verdict::Ok);
        };
        let event = if at_final {
            state.guard.at_final(g, base, report)
        } else {
            state.guard.decide(g, base, report, epoch)
        };
        let mut line = serde_json::to_value(&event).expect("guard event");
        line["kind"] = "guard".into();
        self.append_metrics(&line)?;
        let verdict = match (event.action.as_str(), event.to_epoch) {
            ("stop", _) => Verdict::Stop,
            ("rollback", Some(to)) => Verdict::Rollback(to),
            _ if event.failed() => Verdict::Failed,
            _ => Verdict::Passed,
        };
        if event.failed() && (self.verbosity != Verbosity::Quiet || verdict.acts()) {
            eprintln!("guard: {}", event.describe());
        }
        Ok(verdict)
    }
}

/// The guards' verdict on one evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// No guard.
    Ok,
    /// Every guard passed.
    Passed,
    /// A guard failed, within its patience (or at the final evaluation).
    Failed,
    Stop,
    Rollback(u64),
}

impl Verdict {
    /// The evaluation may become best/.
    fn passed(self) -> bool {
        matches!(self, Verdict::Ok | Verdict::Passed)
    }

    fn acts(self) -> bool {
        matches!(self, Verdict::Stop | Verdict::Rollback(_))
    }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}
