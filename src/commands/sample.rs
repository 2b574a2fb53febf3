//! `hrf sample`: a grid of samples from a model folder, deterministic per seed: a pixel
//! UNet2DModel, a Stable Diffusion pipeline, or a LoRA folder a run wrote (final/, best/) on
//! the pipeline it names.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use hrf_config::model_spec::{FolderKind, Precision};
use hrf_diffusion::stable_diffusion::StableDiffusion;
use hrf_diffusion::{device, DdimScheduler, DiffusersModel};
use hrf_train::evaluation::{generate, Generation};
use hrf_train::policy::Policy;
use hrf_train::sampling::{denoise_from, keyed_noise, SampleRequest};
use hrf_train::text_to_image::TextToImage;
use hrf_train::tuned::AdapterInfo;
use tch::Tensor;

use crate::usage::UsageError;

#[derive(clap::Args)]
pub struct SampleArgs {
    /// A diffusers UNet2DModel folder, a Stable Diffusion pipeline folder (model_index.json),
    /// or a LoRA folder written by `hrf run` (its hrf_adapter.json names the pipeline).
    #[arg(long)]
    pub model: PathBuf,
    /// A prompt: for the testbed, one naming a class ("a photo of a sneaker"; default:
    /// unconditional); for Stable Diffusion, the text (default: a LoRA folder's training
    /// prompts in turn, else the empty prompt).
    #[arg(long, conflicts_with = "class")]
    pub prompt: Option<String>,
    /// Stable Diffusion: guidance's negative prompt (default: the run's, else empty).
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// A class index instead of a prompt.
    #[arg(long)]
    pub class: Option<usize>,
    /// Number of samples (1 or more).
    #[arg(short, default_value_t = 64)]
    pub n: usize,
    /// DDIM steps (default 40; Stable Diffusion 50, as its pipeline).
    #[arg(long)]
    pub steps: Option<i64>,
    /// DDIM η in [0, 1]. Default 1 for the testbed, as `hrf eval` (ancestral-like, as DDPO
    /// samples, suits the small model better than the deterministic 0); 0 for Stable Diffusion,
    /// as its pipeline.
    #[arg(long)]
    pub eta: Option<f64>,
    /// Classifier-free guidance weight (1 = none; unconditional testbed samples are never
    /// guided). Default: 1.25 for the testbed (the base model's best, as `hrf eval`), 7.5 for
    /// Stable Diffusion (its pipeline's).
    #[arg(long)]
    pub guidance: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(short, long, default_value = "samples.png")]
    pub output: PathBuf,
    /// Also write one PNG per sample into this folder.
    #[arg(long)]
    pub each: Option<PathBuf>,
    /// Stable Diffusion: start from these initial latents (a safetensors file with a tensor
    /// `latents` [N, C, h, w]; N replaces -n) instead of the seed's noise.
    #[arg(long, value_name = "FILE")]
    pub latents: Option<PathBuf>,
    /// Stable Diffusion: also write the initial latents (`latents`) and the decoded images in
    /// [0, 1] before 8-bit rounding (`images`, [N, 3, H, W] fp32) to this safetensors file, to
    /// compare with diffusers from the same latents.
    #[arg(long, value_name = "FILE")]
    pub tensors: Option<PathBuf>,
    /// auto, cpu, cuda or cuda:N
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Stable Diffusion: the frozen weights' precision, as a run's `model.dtype`: fp32, bf16
    /// (CUDA or CPU) or fp16 (CUDA only); LoRA adapters and the DDIM arithmetic stay fp32.
    #[arg(long, default_value = "fp32", value_parser = parse_precision)]
    pub dtype: Precision,
}

fn parse_precision(s: &str) -> Result<Precision, String> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|_| format!("{s:?}: expected fp32, bf16 or fp16"))
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
    if let Some(t2i) = load_text_to_image(&a, dev)? {
        return sample_text_to_image(&a, &t2i, dev);
    }
    for (flag, given) in [
        ("--negative-prompt", a.negative_prompt.is_some()),
        ("--latents", a.latents.is_some()),
        ("--tensors", a.tensors.is_some()),
    ] {
        if given {
            return Err(UsageError(format!(
                "{flag}: only for a Stable Diffusion pipeline or LoRA folder ({} is a UNet2DModel folder)",
                a.model.display()
            ))
            .into());
        }
    }
    let (steps, eta, guidance) = (
        a.steps.unwrap_or(40),
        a.eta.unwrap_or(DEFAULT_ETA),
        a.guidance.unwrap_or(DEFAULT_GUIDANCE),
    );
    check_sampling_args(a.n, eta, guidance)?;
    let model = load_model_arg(&a.model, dev)?;
    let labels = labels_for(&model, &a.model, a.prompt.as_deref(), a.class, a.n)?;
    let sched = scheduler_for(&model, steps)?;
    let started = std::time::Instant::now();
    let images = generate(
        &model.unet,
        &sched,
        &Generation {
            labels: labels.as_deref(),
            n: a.n,
            seed: a.seed,
            eta,
            guidance,
            batch_size: 64,
        },
        dev,
    );
    write_samples(&a, &images, steps, started)
}

fn write_samples(
    a: &SampleArgs,
    images: &[hrf_core::Image],
    steps: i64,
    started: std::time::Instant,
) -> anyhow::Result<ExitCode> {
    let secs = started.elapsed().as_secs_f64();
    let cols = (images.len() as f64).sqrt().ceil() as usize;
    hrf_data::grid::save_grid(images, cols, 2, &a.output).map_err(anyhow::Error::msg)?;
    if let Some(dir) = &a.each {
        for (i, img) in images.iter().enumerate() {
            hrf_data::grid::save_png(img, &dir.join(format!("{i:05}.png")))
                .map_err(anyhow::Error::msg)?;
        }
    }
    eprintln!(
        "{} samples × {steps} steps in {secs:.1} s → {}",
        images.len(),
        a.output.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `--model` as a text-to-image model: a LoRA folder a run wrote (with its pipeline), or a
/// Stable Diffusion pipeline folder; None for a pixel UNet folder.
fn load_text_to_image(a: &SampleArgs, dev: tch::Device) -> anyhow::Result<Option<TextToImage>> {
    let dir = &a.model;
    let model_err =
        |e: hrf_diffusion::DiffusionError| UsageError(format!("--model {}: {e}", dir.display()));
    let info = AdapterInfo::read(dir).map_err(model_err)?;
    let prompts = match (&a.prompt, &info) {
        (Some(p), _) => vec![p.clone()],
        (None, Some(info)) if !info.prompts.is_empty() => info.prompts.clone(),
        _ => vec![String::new()],
    };
    if a.class.is_some() && (info.is_some() || FolderKind::of(dir) == FolderKind::StableDiffusion) {
        return Err(
            UsageError("--class: a Stable Diffusion pipeline takes --prompt".into()).into(),
        );
    }
    let is_pipeline = info.is_some() || FolderKind::of(dir) == FolderKind::StableDiffusion;
    if !is_pipeline {
        if a.dtype != Precision::Fp32 {
            return Err(UsageError(
                "--dtype: a pixel UNet2DModel samples in fp32; --dtype is for Stable Diffusion pipelines".into(),
            )
            .into());
        }
        return Ok(None);
    }
    let kind = super::run_model::frozen_kind(a.dtype, dev)
        .map_err(|e| UsageError(format!("--dtype: {e}")))?;
    if info.is_some() {
        let negative = a.negative_prompt.as_deref();
        let t2i = TextToImage::load_adapter_folder(dir, dev, &prompts, negative, kind)
            .map_err(model_err)?;
        return Ok(Some(t2i));
    }
    let mut sd = StableDiffusion::load(dir, dev, None).map_err(model_err)?;
    if let Some(kind) = kind {
        sd.set_precision(kind);
    }
    let negative = a.negative_prompt.clone().unwrap_or_default();
    Ok(Some(TextToImage::new(sd, &prompts, &negative)))
}

/// Reads `--latents`: a tensor `latents` of the pipeline's latent shape, any number of rows.
fn read_latents(path: &std::path::Path, shape: [i64; 3]) -> anyhow::Result<Tensor> {
    let err = |m: String| UsageError(format!("--latents {}: {m}", path.display()));
    let tensors = Tensor::read_safetensors(path).map_err(|e| err(e.to_string()))?;
    let (_, t) = tensors
        .into_iter()
        .find(|(k, _)| k == "latents")
        .ok_or_else(|| err("no tensor named `latents`".into()))?;
    let size = t.size();
    if size.len() != 4 || size[1..] != shape || size[0] == 0 {
        return Err(err(format!(
            "latents {size:?}: expected [N, {}, {}, {}] with N ≥ 1",
            shape[0], shape[1], shape[2]
        ))
        .into());
    }
    Ok(t.to_kind(tch::Kind::Float))
}

/// Samples a Stable Diffusion pipeline (LoRA-adapted or not): prompt i % P for sample i, the
/// seed's keyed noise or `--latents`, guidance against the negative prompt, the VAE's RGB.
fn sample_text_to_image(
    a: &SampleArgs,
    t2i: &TextToImage,
    dev: tch::Device,
) -> anyhow::Result<ExitCode> {
    let (steps, eta, guidance) = (
        a.steps.unwrap_or(50),
        a.eta.unwrap_or(0.0),
        a.guidance.unwrap_or(7.5),
    );
    let start = a
        .latents
        .as_ref()
        .map(|p| read_latents(p, t2i.latent_shape()))
        .transpose()?;
    let n = start.as_ref().map_or(a.n, |l| l.size()[0] as usize);
    check_sampling_args(n, eta, guidance)?;
    let sched = DdimScheduler::new(t2i.pipeline.scheduler.clone(), steps, 1e-4)
        .map_err(|e| UsageError(format!("--steps: {e}")))?
        .to_device(dev);
    let started = std::time::Instant::now();
    let keys: Vec<u64> = (0..n as u64).collect();
    let prompts = t2i.prompts().len() as i64;
    let (mut initial, mut finals) = (Vec::new(), Vec::new());
    for chunk in keys.chunks(16) {
        let ids: Vec<i64> = chunk.iter().map(|&k| k as i64 % prompts).collect();
        let labels = Tensor::from_slice(&ids);
        let req = SampleRequest {
            labels: Some(&labels),
            keys: chunk,
            seed: a.seed,
            eta,
            guidance,
        };
        let x_t = match &start {
            Some(l) => l
                .narrow(0, chunk[0] as i64, chunk.len() as i64)
                .to_device(dev),
            None => keyed_noise(a.seed, chunk, 0, &t2i.latent_shape(), dev),
        };
        initial.push(x_t.to_device(tch::Device::Cpu));
        finals.push(denoise_from(t2i, &sched, x_t, 0, &req, dev, &mut |_, _| {}));
    }
    let x0 = Tensor::cat(&finals, 0);
    if let Some(path) = &a.tensors {
        let unit = (t2i.pipeline.decode_to_unit(&x0) / 2.0 + 0.5).clamp(0.0, 1.0);
        let named = [
            ("latents", Tensor::cat(&initial, 0)),
            ("images", unit.to_device(tch::Device::Cpu).contiguous()),
        ];
        Tensor::write_safetensors(&named, path)
            .map_err(|e| anyhow::anyhow!("--tensors {}: {e}", path.display()))?;
    }
    let images = t2i.decode(&x0);
    for (i, p) in t2i.prompts().iter().enumerate().take(n) {
        eprintln!("prompt {i}: {p:?}");
    }
    write_samples(a, &images, steps, started)
}
