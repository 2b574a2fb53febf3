//! `hrf pretrain PIPELINE.yaml`: DDPM pretraining of a base model (the bundled testbed's recipe).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use hrf_config::model_spec::ModelSource;
use hrf_config::pretrain_pipeline::{DataSource, PretrainPipeline};
use hrf_diffusion::{device, DiffusersModel, SchedulerConfig, UNetConfig};
use hrf_train::pretraining::{PretrainError, Pretrainer};

use crate::usage::UsageError;

/// Loads a model folder, or builds a named architecture with initial weights from `seed`.
pub fn load_model(
    source: &ModelSource,
    dev: tch::Device,
    seed: u64,
) -> anyhow::Result<DiffusersModel> {
    Ok(match source {
        ModelSource::Folder(dir) => DiffusersModel::load(dir, dev)?,
        ModelSource::Named(name) => {
            let cfg =
                UNetConfig::named(name).with_context(|| format!("unknown model config {name}"))?;
            DiffusersModel::new_seeded(&cfg, dev, seed)?
        }
    })
}

pub fn run(file: &Path, sets: &[String], resume: bool, quiet: bool) -> anyhow::Result<ExitCode> {
    let p: PretrainPipeline =
        hrf_config::pretrain_pipeline::load_with_overrides(file, sets).map_err(UsageError::from)?;
    let dev = device::parse_device(&p.model.device)
        .map_err(|e| UsageError(format!("{}: model.{e}", file.display())))?;
    let scheduler: SchedulerConfig = serde_json::from_value(p.scheduler.clone())
        .map_err(|e| UsageError(format!("{}: scheduler: {e}", file.display())))?;
    scheduler
        .validate()
        .map_err(|e| UsageError(format!("{}: scheduler: {e}", file.display())))?;

    // The initial weights of a named architecture come from the run's seed too.
    let init_seed = hrf_train::sampling::mix_seed(&[p.training.seed, 0x1417]) as u64;
    let model = load_model(&p.model.source, dev, init_seed)?;
    let size = model.unet.config().sample_size.unwrap_or(32) as u32;
    let channels = hrf_core::Channels::from_count(model.unet.config().in_channels as usize)
        .context("the model must take 1 or 3 channels")?;
    let mut data = match p.data.source {
        DataSource::FashionMnist => {
            hrf_data::fashion_mnist(p.data.path.as_deref(), hrf_data::Split::Train)?.fit_to(size, 0)
        }
        DataSource::Folder => {
            hrf_data::image_folder(p.data.path.as_deref().expect("validated"), channels, size)?
        }
    };
    if let Some(limit) = p.data.limit {
        data = data.select(&(0..limit.min(data.len())).collect::<Vec<_>>());
    }
    std::fs::create_dir_all(&p.output).with_context(|| p.output.display().to_string())?;
    let recorded = p.output.join("pipeline.yaml");
    let pipeline_text = recorded_pipeline(file, sets)?;
    // Batches and the learning rate are keyed by step: a resume under other settings would not
    // continue the run it claims to.
    if resume {
        if let Ok(before) = std::fs::read_to_string(&recorded) {
            if before != pipeline_text {
                return Err(UsageError(format!(
                    "{}: --resume needs the pipeline and --set overrides the run started with; \
                     they differ from {}",
                    file.display(),
                    recorded.display()
                ))
                .into());
            }
        }
    }
    std::fs::write(&recorded, pipeline_text).with_context(|| recorded.display().to_string())?;
    eprintln!(
        "pretraining {} parameters on {} images ({} classes) on {dev:?} for {} steps of {}",
        model.num_parameters(),
        data.len(),
        data.num_classes(),
        p.training.steps,
        p.training.batch_size
    );
    let trainer = Pretrainer {
        settings: p.training.clone(),
        scheduler,
        data: &data,
        out_dir: p.output.clone(),
        device: dev,
        show_progress: !quiet,
        abort_after_checkpoint: std::env::var("HRF_TEST_ABORT_AFTER_CHECKPOINT")
            .ok()
            .and_then(|v| v.parse().ok()),
        stop: &crate::signals::STOP,
    };
    crate::signals::install();
    let (ema, summary) = match trainer.run(model, resume) {
        Err(PretrainError::Interrupted { step }) => {
            eprintln!(
                "interrupted after step {step}: its checkpoint is in {}; continue with the same \
                 command and --resume (nothing was exported)",
                p.output.join("checkpoints").display()
            );
            return Ok(ExitCode::from(130));
        }
        r => r?,
    };
    let final_dir = p.output.join("final");
    let classes = serde_json::to_string_pretty(&data.class_names)? + "\n";
    for dir in std::iter::once(&final_dir).chain(p.export.as_ref()) {
        ema.save(dir, None)?;
        std::fs::write(dir.join(super::testbed::CLASSES_FILE), &classes)
            .with_context(|| dir.display().to_string())?;
    }
    if let Some(export) = &p.export {
        eprintln!("exported the EMA model to {}", export.display());
    }
    println!("{}", serde_json::to_string(&summary)?);
    Ok(ExitCode::SUCCESS)
}

/// The pipeline file as run: its text, then the command line's overrides as comments, so the run
/// folder says exactly what was trained.
fn recorded_pipeline(file: &Path, sets: &[String]) -> anyhow::Result<String> {
    let mut text = std::fs::read_to_string(file).with_context(|| file.display().to_string())?;
    if !sets.is_empty() {
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str("# overridden on the command line (hrf pretrain --set):\n");
        for set in sets {
            let one_line = set.replace('\n', "\\n").replace('\r', "\\r");
            text.push_str(&format!("#   {one_line}\n"));
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    /// hrf-config validates `model.config` against its list (it links no libtorch); the names
    /// must be the ones `load_model` can build.
    #[test]
    fn the_config_layer_accepts_exactly_the_named_architectures() {
        assert_eq!(
            hrf_config::model_spec::NAMED_CONFIGS,
            hrf_diffusion::UNetConfig::NAMED
        );
    }
}
