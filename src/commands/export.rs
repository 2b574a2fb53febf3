//! `hrf export --merge LORA_DIR -o OUT`: a LoRA folder a run wrote (final/, best/) merged into
//! the Stable Diffusion pipeline it adapts, as a full diffusers folder that
//! `StableDiffusionPipeline.from_pretrained` loads without peft.

use std::path::PathBuf;
use std::process::ExitCode;

use hrf_diffusion::device;
use hrf_train::text_to_image::TextToImage;
use hrf_train::tuned::{AdapterInfo, TunedModel, ADAPTER_INFO_FILE};

use crate::usage::UsageError;

#[derive(clap::Args)]
pub struct ExportArgs {
    /// A LoRA folder written by `hrf run` (a run's final/ or best/).
    pub model: PathBuf,
    /// Fold the adapters into the UNet's weights (W + alpha/rank·B·A) and write the whole
    /// pipeline. (The LoRA folder itself is already what diffusers' `load_lora_weights` reads.)
    #[arg(long)]
    pub merge: bool,
    /// The new pipeline folder (must not exist yet).
    #[arg(short, long)]
    pub output: PathBuf,
    /// auto, cpu, cuda or cuda:N
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(a: ExportArgs) -> anyhow::Result<ExitCode> {
    if !a.merge {
        return Err(UsageError(
            "hrf export writes a merged pipeline: pass --merge (for the LoRA itself, point diffusers' load_lora_weights at the folder)".into(),
        )
        .into());
    }
    let dev = device::parse_device(&a.device).map_err(|e| UsageError(format!("--{e}")))?;
    let dir = &a.model;
    let model_err =
        |e: hrf_diffusion::DiffusionError| UsageError(format!("{}: {e}", dir.display()));
    let Some(info) = AdapterInfo::read(dir).map_err(model_err)? else {
        return Err(UsageError(format!(
            "{}: not a LoRA folder written by hrf run (no {ADAPTER_INFO_FILE})",
            dir.display()
        ))
        .into());
    };
    if a.output.exists() {
        return Err(UsageError(format!(
            "-o {}: already exists; give a new folder",
            a.output.display()
        ))
        .into());
    }
    let base = std::fs::canonicalize(&info.base_pipeline).unwrap_or(info.base_pipeline.clone());
    let out_parent = a
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .and_then(|p| std::fs::canonicalize(p).ok());
    if out_parent.is_some_and(|p| p.starts_with(&base)) {
        return Err(UsageError(format!(
            "-o {}: inside the base pipeline {}; write it elsewhere",
            a.output.display(),
            base.display()
        ))
        .into());
    }
    let t2i = TextToImage::load_adapter_folder(dir, dev, &[String::new()], None, None)
        .map_err(model_err)?;
    let layers = t2i.trainable().len() / 2;
    t2i.pipeline.export_merged(&a.output)?;
    println!(
        "merged {layers} LoRA layers (rank {}, alpha {}) into {} → {}",
        info.lora.rank,
        info.lora.alpha,
        base.display(),
        a.output.display()
    );
    Ok(ExitCode::SUCCESS)
}
