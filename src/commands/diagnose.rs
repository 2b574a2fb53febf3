//! `hrf diagnose`: diagnostics of a model. `renoise` (HRF's motivation, arXiv 2410.08315):
//! re-noise base samples to the timestep of DDIM step k, denoise them again from k and measure,
//! per k, the mean reward change, the class-change rate (evaluation classifier) and the pixel
//! distance against the originals (hrf_train::renoise).

use std::path::PathBuf;
use std::process::ExitCode;

use hrf_diffusion::device;
use hrf_train::evaluation::Evaluator;
use hrf_train::renoise::{self, RenoiseReport, RenoiseRow, RenoiseSettings};
use serde_json::json;

use super::sample::{check_sampling_args, labels_for, load_model_arg, scheduler_for};
use crate::usage::UsageError;

/// The files `hrf diagnose renoise` writes into its output folder.
pub const RENOISE_JSON: &str = "renoise.json";
pub const RENOISE_PNG: &str = "renoise.png";

#[derive(clap::Subcommand)]
pub enum DiagnoseCommand {
    /// Re-noise n base samples to the timestep of each DDIM step k (as HRF's trajectories of
    /// interest start), denoise them again from k and report, per k, the mean reward change,
    /// the share of samples whose evaluation-classifier class changed and the pixel distance:
    /// whether the model is coarse to fine. Writes renoise.json and renoise.png.
    Renoise(RenoiseArgs),
}

#[derive(clap::Args)]
pub struct RenoiseArgs {
    /// A diffusers UNet2DModel folder (models/testbed, a run's best/ or final/).
    #[arg(long)]
    pub model: PathBuf,
    /// A built-in reward, as `hrf eval --reward` takes them: jpeg-compressibility,
    /// jpeg-incompressibility, aesthetic (repeatable: each gets its own column).
    #[arg(long = "reward", required = true)]
    pub rewards: Vec<String>,
    /// Base samples (unconditional), keyed 0..n as `hrf eval`'s.
    #[arg(short, default_value_t = 256)]
    pub n: usize,
    #[arg(long, default_value_t = 40)]
    pub steps: i64,
    /// DDIM η of the base samples and of the re-runs, as `hrf sample` / `hrf eval`.
    #[arg(long, default_value_t = super::sample::DEFAULT_ETA)]
    pub eta: f64,
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
    /// Measure every K-th start index (0, K, 2K, …) and the last step.
    #[arg(long, default_value_t = 1)]
    pub every: usize,
    /// Samples per UNet batch (changes no number: every draw is keyed by the sample).
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// The output folder (created): renoise.json and renoise.png.
    #[arg(short, long, default_value = "renoise")]
    pub output: PathBuf,
    /// auto, cpu, cuda or cuda:N
    #[arg(long, default_value = "auto")]
    pub device: String,
}

pub fn run(cmd: DiagnoseCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DiagnoseCommand::Renoise(a) => run_renoise(a),
    }
}

fn run_renoise(a: RenoiseArgs) -> anyhow::Result<ExitCode> {
    let dev = device::parse_device(&a.device).map_err(|e| UsageError(format!("--{e}")))?;
    if a.n < 2 {
        return Err(UsageError(format!(
            "-n {}: at least 2 samples (the report has standard errors)",
            a.n
        ))
        .into());
    }
    check_sampling_args(a.n, a.eta, 1.0)?;
    if a.every == 0 || a.batch_size == 0 {
        return Err(UsageError("--every and --batch-size are at least 1".into()).into());
    }
    if let Some(r) = a.rewards.iter().find(|r| *r == "prompt-alignment") {
        return Err(UsageError(format!(
            "--reward {r}: the diagnostic samples unconditionally, and {r} needs prompts"
        ))
        .into());
    }
    let model = load_model_arg(&a.model, dev)?;
    let sched = scheduler_for(&model, a.steps)?;
    let k = model.unet.config().num_class_embeds;
    let classes = super::testbed::class_names(&a.model, k)?;
    let models = super::testbed::models_dir();
    let mut rewards: Vec<_> = a
        .rewards
        .iter()
        .map(|r| hrf_rewards::builtin::builtin(r, &models, &classes).map_err(UsageError))
        .collect::<Result<_, _>>()?;
    let classifier_path = models.join(hrf_rewards::builtin::EVAL_CLASSIFIER);
    let mut classifier = Evaluator::classifier(&classifier_path, classes)?;
    let labels = labels_for(&model, &a.model, None, None, a.n)?;
    std::fs::create_dir_all(&a.output)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.output.display()))?;

    let n_steps = sched.num_steps();
    let settings = RenoiseSettings {
        n: a.n,
        seed: a.seed,
        eta: a.eta,
        guidance: 1.0,
        starts: renoise::starts_every(n_steps, a.every),
        batch_size: a.batch_size,
    };
    eprintln!(
        "renoise: {} base samples, {} DDIM steps, η = {}, starts {:?}",
        a.n, n_steps, a.eta, settings.starts
    );
    let started = std::time::Instant::now();
    let report = renoise::renoise_diagnostic(
        &model.unet,
        &sched,
        labels.as_deref(),
        &settings,
        &mut rewards,
        &mut classifier,
        dev,
        &mut |row: &RenoiseRow| {
            eprintln!(
                "  k {:>2}: class change {:>5.1}%, pixel RMS {:.3}, {:.1} s",
                row.k,
                row.class_change.mean * 100.0,
                row.pixel_distance.mean,
                row.wall_s
            )
        },
    )?;
    let wall_s = started.elapsed().as_secs_f64();

    let out = json!({
        "settings": {
            "model": a.model.display().to_string(), "rewards": a.rewards, "samples": a.n,
            "steps": n_steps, "eta": a.eta, "seed": a.seed, "every": a.every,
            "starts": settings.starts, "guidance": settings.guidance,
            "eval_classifier": hrf_rewards::builtin::EVAL_CLASSIFIER,
            "pixel_distance": renoise::PIXEL_DISTANCE,
            "renoise": "x_tau_k = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps, then DDIM steps k..N-1",
        },
        "base": {
            "reward": report.base_reward,
            "class_histogram": report.base_class_histogram,
        },
        "rows": report.rows,
        "wall_s": wall_s,
    });
    let json_path = a.output.join(RENOISE_JSON);
    std::fs::write(&json_path, serde_json::to_string_pretty(&out)? + "\n")
        .map_err(|e| anyhow::anyhow!("{}: {e}", json_path.display()))?;
    let png_path = a.output.join(RENOISE_PNG);
    hrf_report::chart::save_chart_stack(&renoise::renoise_charts(&report, n_steps), &png_path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", png_path.display()))?;
    print_table(&a, &report, wall_s);
    eprintln!("→ {} and {}", json_path.display(), png_path.display());
    Ok(ExitCode::SUCCESS)
}

fn print_table(a: &RenoiseArgs, report: &RenoiseReport, wall_s: f64) {
    println!(
        "re-noising {} ({} samples, η = {}, seed {}; {wall_s:.0} s)",
        a.model.display(),
        a.n,
        a.eta,
        a.seed
    );
    for b in &report.base_reward {
        println!("base mean {} = {:.4}", b.reward, b.value.mean);
    }
    let mut head = format!(
        "{:>3} {:>5} {:>10} {:>15} {:>9}",
        "k", "tau", "sqrt(abar)", "class change", "pixel RMS"
    );
    for b in &report.base_reward {
        head.push_str(&format!(" {:>24}", format!("Δ {}", b.reward)));
    }
    println!("{head}");
    for r in &report.rows {
        let mut line = format!(
            "{:>3} {:>5} {:>10.4} {:>15} {:>9.4}",
            r.k,
            r.timestep,
            r.sqrt_alpha_bar,
            format!(
                "{:.1}% ± {:.1}",
                r.class_change.mean * 100.0,
                r.class_change.sem * 100.0
            ),
            r.pixel_distance.mean
        );
        for c in &r.reward_change {
            line.push_str(&format!(
                " {:>24}",
                format!("{:+.4} ± {:.4}", c.value.mean, c.value.sem)
            ));
        }
        println!("{line}");
    }
}
