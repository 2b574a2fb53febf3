//! `hrf sample`: a grid of samples from a model folder, deterministic per seed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use hrf_diffusion::{device, DdimScheduler, DiffusersModel};
use hrf_train::evaluation::{generate, Generation};

use crate::usage::UsageError;

#[derive(clap::Args)]
pub struct SampleArgs {
    /// A diffusers UNet2DModel folder.
    #[arg(long)]
    pub model: PathBuf,
    /// A prompt naming a class ("a photo of a sneaker"); default: unconditional.
    #[arg(long, conflicts_with = "class")]
    pub prompt: Option<String>,
    /// A class index instead of a prompt.
    #[arg(long)]
    pub class: Option<usize>,
    /// Number of samples (1 or more).
    #[arg(short, default_value_t = 64)]
    pub n: usize,
    #[arg(long, default_value_t = 40)]
    pub steps: i64,
    /// DDIM η in [0, 1], as `hrf eval`: 1 (ancestral-like, as DDPO samples) suits the small
    /// testbed model better than the deterministic 0.
    #[arg(long, default_value_t = DEFAULT_ETA)]
    pub eta: f64,
    /// Classifier-free guidance weight of a prompted class (1 = none; unconditional samples are
    /// never guided), as `hrf eval`'s default: the base model's best.
    #[arg(long, default_value_t = DEFAULT_GUIDANCE)]
    pub guidance: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(short, long, default_value = "samples.png")]
    pub output: PathBuf,
    /// Also write one PNG per sample into this folder.
    #[arg(long)]
    pub each: Option<PathBuf>,
    /// auto, cpu, cuda or cuda:N
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// `hrf sample` and `hrf eval` sample alike by default: η 1 and guidance 1.25 (the committed
/// testbed model's best FID-like, measured from 1 to 1.75 in steps of 0.25).
pub const DEFAULT_ETA: f64 = 1.0;
pub const DEFAULT_GUIDANCE: f64 = 1.25;

/// Checks the sampling options both commands share (usage errors, exit 2).
pub fn check_sampling_args(n: usize, eta: f64, guidance: f64) -> Result<(), UsageError> {
    if n == 0 {
        return Err(UsageError("-n 0: ask for at least one sample".into()));
    }
    if !(0.0..=1.0).contains(&eta) {
        return Err(UsageError(format!(
            "--eta {eta}: DDIM's η is between 0 (deterministic) and 1 (DDPM-like)"
        )));
    }
    if !(guidance.is_finite() && guidance >= 0.0) {
        return Err(UsageError(format!(
            "--guidance {guidance}: a finite weight ≥ 0 (1 = no guidance)"
        )));
    }
    Ok(())
}

/// Loads `--model`: a missing folder, or one that is not a diffusers model, is a usage error.
pub fn load_model_arg(dir: &Path, dev: tch::Device) -> anyhow::Result<DiffusersModel> {
    if !dir.is_dir() {
        return Err(UsageError(format!("--model {}: no such folder", dir.display())).into());
    }
    let unet = DiffusersModel::resolve_dir(dir);
    if !unet
        .join(hrf_diffusion::diffusers_model::CONFIG_FILE)
        .exists()
    {
        return Err(UsageError(format!(
            "--model {}: not a diffusers UNet2DModel folder (no {} here or in unet/)",
            dir.display(),
            hrf_diffusion::diffusers_model::CONFIG_FILE
        ))
        .into());
    }
    Ok(DiffusersModel::load(dir, dev)?)
}

/// The label of every sample: the prompted class, or the null class (unconditional).
pub fn labels_for(
    model: &DiffusersModel,
    model_dir: &Path,
    prompt: Option<&str>,
    class: Option<usize>,
    n: usize,
) -> anyhow::Result<Option<Vec<i64>>> {
    let Some(k) = model.unet.config().num_class_embeds else {
        if prompt.is_some() || class.is_some() {
            return Err(UsageError(
                "this model is unconditional: --prompt/--class do not apply".into(),
            )
            .into());
        }
        return Ok(None);
    };
    let classes = super::testbed::class_names(model_dir, Some(k))?;
    let label = match (prompt, class) {
        (Some(p), _) => hrf_core::class_of_prompt(&classes, p).ok_or_else(|| {
            UsageError(format!(
                "--prompt {p:?} names none of the classes {classes:?}"
            ))
        })? as i64,
        (None, Some(c)) if c < classes.len() => c as i64,
        (None, Some(c)) => {
            return Err(UsageError(format!(
                "--class {c}: the model has classes 0..{}",
                classes.len()
            ))
            .into())
        }
        (None, None) => k - 1,
    };
    Ok(Some(vec![label; n]))
}

pub fn scheduler_for(model: &DiffusersModel, steps: i64) -> anyhow::Result<DdimScheduler> {
    let cfg = model.scheduler.clone().unwrap_or_default();
    let sched =
        DdimScheduler::new(cfg, steps, 1e-4).map_err(|e| UsageError(format!("--steps: {e}")))?;
    Ok(sched.to_device(model.vs.device()))
}

pub fn run(a: SampleArgs) -> anyhow::Result<ExitCode> {
    let dev = device::parse_device(&a.device).map_err(|e| UsageError(format!("--{e}")))?;
    check_sampling_args(a.n, a.eta, a.guidance)?;
    let model = load_model_arg(&a.model, dev)?;
    let labels = labels_for(&model, &a.model, a.prompt.as_deref(), a.class, a.n)?;
    let sched = scheduler_for(&model, a.steps)?;
    let started = std::time::Instant::now();
    let images = generate(
        &model.unet,
        &sched,
        &Generation {
            labels: labels.as_deref(),
            n: a.n,
            seed: a.seed,
            eta: a.eta,
            guidance: a.guidance,
            batch_size: 64,
        },
        dev,
    );
    let secs = started.elapsed().as_secs_f64();
    let cols = (a.n as f64).sqrt().ceil() as usize;
    hrf_data::grid::save_grid(&images, cols, 2, &a.output).map_err(anyhow::Error::msg)?;
    if let Some(dir) = &a.each {
        for (i, img) in images.iter().enumerate() {
            hrf_data::grid::save_png(img, &dir.join(format!("{i:05}.png")))
                .map_err(anyhow::Error::msg)?;
        }
    }
    eprintln!(
        "{} samples × {} steps in {secs:.1} s → {}",
        a.n,
        a.steps,
        a.output.display()
    );
    Ok(ExitCode::SUCCESS)
}
