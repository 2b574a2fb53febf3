//! `hrf run PIPELINE.yaml`, `hrf validate`, `hrf schema`: load and check the pipeline, build the
//! models and rewards it names, create the run folder, and hand over to `hrf_train::finetune`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use hrf_config::model_spec::ModelSource;
use hrf_config::pipeline::RunPipeline;
use hrf_diffusion::device;
use hrf_plugins::RewardContext;
use hrf_report::records::SUMMARY_FILE;
use hrf_rewards::RewardWorker;
use hrf_train::evaluation::Evaluator;
use hrf_train::finetune::{KillPoint, Run, RunError, Verbosity};

use super::run_model::{self, RunModel};
use crate::usage::UsageError;

/// The resolved pipeline a run folder keeps; `--resume` reloads it.
use hrf_report::records::RESOLVED_FILE;

#[derive(clap::Args)]
pub struct RunArgs {
    /// The pipeline YAML (not needed with --resume).
    pub pipeline: Option<PathBuf>,
    /// Override a field: `--set training.optimizer.lr=3e-4` (repeatable).
    #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
    pub sets: Vec<String>,
    /// Continue the run in this folder from its newest checkpoint.
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    /// Write the run to this folder instead of `<run.output>/<run.name>-<timestamp>`.
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// Load every model and reward, sample and score one batch, estimate time and disk, write
    /// nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Only errors and the final summary.
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Also print the resolved pipeline.
    #[arg(short, long)]
    pub verbose: bool,
    /// Allow native reward plugins (`kind: native` with `trust: native`): they run with all
    /// of hrf's rights.
    #[arg(long)]
    pub allow_native: bool,
}

/// UTC `YYYYmmdd-HHMMSS` for run folder names.
fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `hrf validate`: a fine-tuning pipeline, or a pretraining one (it has a `data:` section).
pub fn validate(file: &Path, sets: &[String]) -> anyhow::Result<ExitCode> {
    let text = hrf_config::read_text(file).map_err(UsageError::from)?;
    if hrf_config::pipeline_kind(&text) == hrf_config::PipelineKind::Pretrain {
        let p = hrf_config::pretrain_pipeline::load_with_overrides(file, sets)
            .map_err(UsageError::from)?;
        println!(
            "{}: ok (pretraining: {} steps of {}, {} data{}, output {})",
            file.display(),
            p.training.steps,
            p.training.batch_size,
            serde_json::to_value(p.data.source)?.as_str().unwrap_or("?"),
            p.data
                .limit
                .map_or(String::new(), |n| format!(" (first {n} images)")),
            p.output.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let p = hrf_config::pipeline::load_with_overrides(file, sets).map_err(UsageError::from)?;
    println!(
        "{}: ok ({} epochs of {}, {} reward(s), {})",
        file.display(),
        p.training.epochs,
        serde_json::to_value(p.training.method)?
            .as_str()
            .unwrap_or("?"),
        p.rewards.len(),
        if p.prompts.is_empty() {
            "unconditional".to_string()
        } else {
            format!("{} prompts", p.prompts.len())
        }
    );
    Ok(ExitCode::SUCCESS)
}

pub fn schema() -> anyhow::Result<ExitCode> {
    print!("{}", hrf_config::pipeline::run_schema_text());
    Ok(ExitCode::SUCCESS)
}

fn class_names_of(p: &RunPipeline, model: &RunModel) -> anyhow::Result<Vec<String>> {
    let Some(model) = model.pixel() else {
        return Ok(Vec::new());
    };
    match &p.model.source {
        ModelSource::Folder(dir) => {
            super::testbed::class_names(dir, model.unet.config().num_class_embeds)
        }
        ModelSource::Named(_) => super::testbed::class_names(
            Path::new("/nonexistent"),
            model.unet.config().num_class_embeds,
        ),
    }
}

/// (text, condition id) for each prompt: for a pixel model the class the prompt must name; for
/// a text-to-image pipeline the prompt's own index (its row of encoded text states).
fn prompt_labels(
    p: &RunPipeline,
    model: &RunModel,
    classes: &[String],
) -> Result<Vec<(String, i64)>, UsageError> {
    if model.pixel().is_none() {
        return Ok(p
            .prompts
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as i64))
            .collect());
    }
    let mut out = Vec::new();
    for (i, text) in p.prompts.iter().enumerate() {
        let Some(label) = hrf_core::class_of_prompt(classes, text) else {
            return Err(UsageError(format!(
                "{}: prompts[{i}]: {text:?} names none of the model's classes ({})",
                p.file.display(),
                classes.join(", ")
            )));
        };
        out.push((text.clone(), label as i64));
    }
    Ok(out)
}

/// What a run needs in memory: the policy (and base, for a KL term), the DDIM chain, the prompts
/// with their labels, the reward worker and the evaluation classifier.
struct Loaded {
    model: RunModel,
    base: Option<RunModel>,
    chain: hrf_diffusion::DdimScheduler,
    prompts: Vec<(String, i64)>,
    rewards: RewardWorker,
    /// `evaluation.gold`, one set each.
    gold: Vec<hrf_rewards::RewardSet>,
    evaluator: Option<Evaluator>,
}

fn load_all(p: &RunPipeline, dev: tch::Device, allow_native: bool) -> anyhow::Result<Loaded> {
    let (model, scheduler) = run_model::load(p, dev, true)?;
    let classes = class_names_of(p, &model)?;
    let prompts = prompt_labels(p, &model, &classes)?;
    let class_conditional = model
        .pixel()
        .is_none_or(|m| m.unet.config().num_class_embeds.is_some());
    if !prompts.is_empty() && !class_conditional {
        return Err(UsageError(format!(
            "{}: prompts: the model is not class-conditional (no num_class_embeds)",
            p.file.display()
        ))
        .into());
    }
    // A pipeline's base is its own weights with the adapters off (`RunModel::base_view`).
    let base = if p.training.kl_coef > 0.0 && model.base_view().is_none() {
        Some(run_model::load(p, dev, false)?.0)
    } else {
        None
    };
    let chain = hrf_diffusion::DdimScheduler::new(
        scheduler.clone(),
        p.sampling.steps,
        p.sampling.sigma_min,
    )
    .map_err(|e| UsageError(format!("{}: sampling.steps: {e}", p.file.display())))?
    .to_device(dev);
    hrf_train::hrf::check_starts(&chain, &p.training)
        .map_err(|e| UsageError(format!("{}: {e}", p.file.display())))?;
    let models = super::testbed::models_dir();
    let cx = RewardContext {
        models: &models,
        classes: &classes,
        seed: p.run.seed,
        allow_native,
    };
    let rewards = RewardWorker::spawn(hrf_plugins::build_rewards(&p.rewards, &cx)?);
    let gold = p
        .gold
        .iter()
        .map(|spec| hrf_plugins::build_rewards(std::slice::from_ref(spec), &cx))
        .collect::<Result<Vec<_>, _>>()?;
    let evaluator = evaluator_for(p, &model)?;
    if let Some(g) = &p.guard {
        let floors = [
            ("vendi_floor", g.vendi_floor.is_some()),
            ("class_entropy_floor", g.class_entropy_floor.is_some()),
        ];
        if let Some((field, _)) = floors
            .iter()
            .find(|(_, set)| *set)
            .filter(|_| evaluator.is_none())
        {
            return Err(UsageError(format!(
                "{}: guard.{field}: this model's images are not ones the evaluation classifier takes, so no diversity is measured to guard",
                p.file.display()
            ))
            .into());
        }
    }
    Ok(Loaded {
        model,
        base,
        chain,
        prompts,
        rewards,
        gold,
        evaluator,
    })
}

/// The pipeline's base model evaluated exactly as its runs' final evaluation is (same fixed
/// seeds, sample count, chain, rewards and classifier): the reference `hrf compare` measures
/// gains and diversity against.
pub fn evaluate_base(
    p: &RunPipeline,
    dev: tch::Device,
    allow_native: bool,
) -> anyhow::Result<(hrf_report::records::EvalReport, Vec<hrf_core::Image>)> {
    let Loaded {
        model,
        chain,
        prompts,
        rewards,
        gold,
        evaluator,
        ..
    } = load_all(p, dev, allow_native)?;
    static NEVER: AtomicBool = AtomicBool::new(false);
    let mut run = Run {
        pipeline: p,
        model: model.tuned(),
        base: None,
        scheduler: &chain,
        prompts,
        rewards,
        gold,
        evaluator,
        dir: std::env::temp_dir(),
        device: dev,
        kill_at: None,
        verbosity: Verbosity::Quiet,
        stop: &NEVER,
    };
    Ok(run.evaluate(&chain, 0, p.evaluation.final_samples)?)
}

pub fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
    let (pipeline, dir_given) = match (&a.resume, &a.pipeline) {
        (Some(dir), _) => {
            let file = dir.join(RESOLVED_FILE);
            if !file.exists() {
                return Err(UsageError(format!(
                    "--resume {}: not a run folder (no {RESOLVED_FILE})",
                    dir.display()
                ))
                .into());
            }
            if dir.join(SUMMARY_FILE).exists() {
                // A finished run has nothing to continue: leave every file as it is.
                println!(
                    "{} has finished ({SUMMARY_FILE} is written); nothing to resume. To train further, start a new run with model.weights: {}",
                    dir.display(),
                    dir.join("final").display()
                );
                return Ok(ExitCode::SUCCESS);
            }
            (
                hrf_config::pipeline::load_with_overrides(&file, &a.sets),
                Some(dir.clone()),
            )
        }
        (None, Some(file)) => (
            hrf_config::pipeline::load_with_overrides(file, &a.sets),
            a.run_dir.clone(),
        ),
        (None, None) => {
            return Err(UsageError("give a pipeline file, or --resume RUN_DIR".into()).into())
        }
    };
    let p = pipeline.map_err(UsageError::from)?;
    let verbosity = match (a.quiet, a.verbose) {
        (true, _) => Verbosity::Quiet,
        (_, true) => Verbosity::Verbose,
        _ => Verbosity::Normal,
    };
    if verbosity == Verbosity::Verbose {
        eprintln!("{}", serde_json::to_string_pretty(&p.resolved())?);
    }
    let dev = device::parse_device(&p.model.device)
        .map_err(|e| UsageError(format!("{}: model.{e}", p.file.display())))?;

    // Everything is loaded before anything is written.
    let Loaded {
        model,
        base,
        chain,
        prompts,
        rewards,
        gold,
        evaluator,
    } = load_all(&p, dev, a.allow_native)?;

    if a.dry_run {
        return dry_run(&p, &model, &chain, rewards, dev);
    }

    let resume = a.resume.is_some();
    let dir = match dir_given {
        Some(d) => d,
        None => p.run.output.join(format!("{}-{}", p.run.name, timestamp())),
    };
    if !resume {
        if dir.join(RESOLVED_FILE).exists() {
            return Err(UsageError(format!(
                "{} already holds a run; use --resume {0}",
                dir.display()
            ))
            .into());
        }
        std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
        std::fs::write(dir.join("pipeline.yaml"), &p.text)
            .with_context(|| dir.display().to_string())?;
        std::fs::write(dir.join(RESOLVED_FILE), p.resolved_yaml())
            .with_context(|| dir.display().to_string())?;
    }
    if verbosity != Verbosity::Quiet {
        let (all, trained) = model.parameters();
        let params = if all == trained {
            format!("{all} parameters")
        } else {
            format!("{all} parameters ({trained} trained)")
        };
        eprintln!(
            "run {} on {dev:?}: {params}, {} epochs of {} samples, rewards: {}",
            dir.display(),
            p.training.epochs,
            p.sampling.batch_size * p.sampling.batches_per_epoch,
            p.rewards
                .iter()
                .map(|r| format!("{}×{}", r.weight, r.name))
                .collect::<Vec<_>>()
                .join(" + ")
        );
    }
    crate::signals::install();
    let kill_at = std::env::var("HRF_TEST_KILL_AT")
        .ok()
        .and_then(|v| KillPoint::parse(&v));
    let base_view = if p.training.kl_coef > 0.0 {
        model.base_view()
    } else {
        None
    };
    let run = Run {
        pipeline: &p,
        model: model.tuned(),
        base: base.as_ref().map(|b| b.policy()).or(base_view
            .as_ref()
            .map(|v| v as &dyn hrf_train::policy::Policy)),
        scheduler: &chain,
        prompts,
        rewards,
        gold,
        evaluator,
        dir: dir.clone(),
        device: dev,
        kill_at,
        verbosity,
        stop: &crate::signals::STOP,
    };
    match run.train(resume) {
        Ok(summary) => {
            println!("{}", describe_summary(&summary));
            Ok(ExitCode::SUCCESS)
        }
        Err(RunError::Interrupted { epochs_done }) => {
            eprintln!(
                "interrupted: checkpoint after epoch {epochs_done}; continue with `hrf run --resume {}`",
                dir.display()
            );
            Ok(ExitCode::from(130))
        }
        Err(e) => Err(e.into()),
    }
}

/// The run's last words: where it is, what the evaluation's reward and diversity did, and how
/// long it took (summary.json holds the whole record).
fn describe_summary(s: &hrf_report::records::RunSummary) -> String {
    let mut out = format!(
        "done: {} ({} epochs, {:.0} s)",
        s.dir.display(),
        s.epochs,
        s.wall_s
    );
    if let Some(base) = &s.base {
        out += &format!(
            "\n  evaluation reward {:.4} ± {:.4} → {:.4} ± {:.4} (s.e.; {} → {} samples)",
            base.reward_mean,
            base.reward_sem,
            s.last.reward_mean,
            s.last.reward_sem,
            base.samples,
            s.last.samples
        );
        if let (Some(a), Some(b)) = (&base.diversity, &s.last.diversity) {
            out += &format!(", Vendi {:.1} → {:.1}", a.vendi, b.vendi);
        }
    }
    if let Some(g) = &s.gain {
        out += &format!(
            "\n  gain on the {} seeds both evaluated: {:+.4} ± {:.4} (paired s.e.), {:.1} s.e.",
            g.samples,
            g.mean,
            g.sem,
            g.z()
        );
    }
    out + &format!(
        "\n  plots: {}  summary: {}",
        s.dir.join("plots").display(),
        s.dir.join(SUMMARY_FILE).display()
    )
}

/// The extractor `evaluation.features` names. The classifier (the independent evaluation
/// classifier with the real Fashion-MNIST test split as reference) only when the model makes
/// images it can judge (one channel) and the data is installed; else no diversity is measured.
fn evaluator_for(p: &RunPipeline, model: &RunModel) -> anyhow::Result<Option<Evaluator>> {
    if let Some(ev) = Evaluator::from_features(&p.evaluation.features)
        .map_err(|e| UsageError(format!("{}: evaluation.features: {e}", p.file.display())))?
    {
        if let hrf_config::features::FeatureExtractor::Pixels { .. } = p.evaluation.features {
            eprintln!("note: diversity is measured in downsampled pixels, a weak measure: give evaluation.features {{kind: onnx, model: …}} (an image encoder such as CLIP's) for a meaningful one");
        }
        return Ok(Some(ev));
    }
    let Some(model) = model.pixel() else {
        eprintln!("note: no diversity metrics (the evaluation classifier judges the testbed's 1-channel images)");
        return Ok(None);
    };
    let cfg = model.unet.config();
    let path = super::testbed::models_dir().join(hrf_rewards::builtin::EVAL_CLASSIFIER);
    if cfg.in_channels != 1 || !path.exists() {
        eprintln!("note: no diversity metrics (the evaluation classifier judges 1-channel images)");
        return Ok(None);
    }
    let size = cfg.sample_size.unwrap_or(32) as u32;
    let test = match hrf_data::fashion_mnist(None, hrf_data::Split::Test) {
        Ok(t) => t.fit_to(size, 0),
        Err(e) => {
            eprintln!("note: no diversity metrics: {e}");
            return Ok(None);
        }
    };
    Ok(Some(Evaluator::new(&path, &test)?))
}

fn dry_run(
    p: &RunPipeline,
    model: &RunModel,
    sched: &hrf_diffusion::DdimScheduler,
    mut rewards: RewardWorker,
    dev: tch::Device,
) -> anyhow::Result<ExitCode> {
    use hrf_train::sampling::{sample, SampleRequest};
    let n = p.sampling.batch_size;
    let keys: Vec<u64> = (0..n as u64).collect();
    let policy = model.policy();
    // A text-to-image pipeline samples its prompts; a pixel model its null class.
    let labels = match (model.pixel(), p.prompts.len()) {
        (None, k) if k > 0 => Some(tch::Tensor::from_slice(
            &(0..n as i64).map(|i| i % k as i64).collect::<Vec<_>>(),
        )),
        _ => policy
            .null_condition()
            .map(|c| tch::Tensor::full([n as i64], c, (tch::Kind::Int64, tch::Device::Cpu))),
    };
    let t0 = std::time::Instant::now();
    let x = sample(
        policy,
        sched,
        &SampleRequest {
            labels: labels.as_ref(),
            keys: &keys,
            seed: p.run.seed,
            eta: p.sampling.eta,
            guidance: p.sampling.guidance,
        },
        dev,
    );
    let sample_s = t0.elapsed().as_secs_f64();
    let samples: Vec<hrf_core::Sample> = policy
        .decode(&x)
        .into_iter()
        .enumerate()
        .map(|(i, image)| hrf_core::Sample {
            image,
            prompt: p.prompts.get(i % p.prompts.len().max(1)).cloned(),
            metadata: serde_json::Value::Null,
        })
        .collect();
    let t1 = std::time::Instant::now();
    let scores = rewards.score_now(samples)?;
    let reward_s = t1.elapsed().as_secs_f64();
    for why in &scores.skip_reasons {
        println!("warning: {why}");
    }
    let (mean, std) = hrf_report::stats::mean_std(&scores.kept_values(&scores.total));
    // Training recomputes one forward and backward per trained step: about 3× a sampling step.
    let trainable = sched.trainable_steps(0).len() as f64 * p.training.timestep_fraction;
    let batches = p.sampling.batches_per_epoch as f64;
    // HRF / HRF-D sample and train shorter chains, plus anchors and candidate rollouts.
    let (sampled, trained) = hrf_train::hrf::relative_cost(sched, &p.training);
    let epoch_s = batches * (sample_s * sampled + reward_s)
        + batches * sample_s * 3.0 * trainable * trained / p.sampling.steps as f64
            * p.training.inner_epochs as f64;
    let weights_mb = model.parameters().1 as f64 * 4.0 / 1e6;
    let checkpoints = (p.training.epochs / p.run.save_every).min(p.run.keep) as f64 + 2.0;
    println!(
        "dry run: one batch of {n} sampled in {sample_s:.2} s, scored in {reward_s:.2} s: reward {mean:.4} ± {std:.4}"
    );
    for (name, v) in &scores.components {
        println!(
            "  {name}: mean {:.4}",
            hrf_report::stats::mean_std(&scores.kept_values(v)).0
        );
    }
    println!(
        "estimated: {:.0} s per epoch, {:.1} min for {} epochs (evaluations extra); disk ≈ {:.1} MB (weights {weights_mb:.1} MB, optimiser 2×, {checkpoints} model folders, grids)",
        epoch_s,
        epoch_s * p.training.epochs as f64 / 60.0,
        p.training.epochs,
        weights_mb * 3.0 * checkpoints + 0.05 * p.training.epochs as f64
    );
    // The estimate validation checked against the machine's memory.
    if let Some(parts) = p.memory_estimate() {
        use hrf_config::limits::gib;
        let total: u128 = parts.iter().map(|x| x.bytes).sum();
        let (limit, limit_is) = hrf_config::limits::memory_limit();
        let mut by_size: Vec<_> = parts.iter().filter(|x| x.bytes > 0).collect();
        by_size.sort_by_key(|x| std::cmp::Reverse(x.bytes));
        println!(
            "memory ≈ {} ({}); limit {} ({limit_is})",
            gib(total),
            by_size
                .iter()
                .take(3)
                .map(|x| format!("{} {}", x.what, gib(x.bytes)))
                .collect::<Vec<_>>()
                .join(", "),
            gib(limit as u128)
        );
    }
    Ok(ExitCode::SUCCESS)
}
