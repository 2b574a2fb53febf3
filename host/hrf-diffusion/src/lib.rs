//! hrf-diffusion: the only crate with tch model code. A diffusers-compatible UNet2DModel, the DDIM
//! scheduler with per-step log-probabilities, diffusers folder load/save, and device selection;
//! CLIP's tokenizer and text encoder and the VAE decoder for text-to-image pipelines.

pub mod autocast;
pub mod clip_text;
pub mod clip_tokenizer;
pub mod config;
pub mod ddim;
pub mod device;
pub mod diffusers_model;
pub mod init;
pub mod lora;
pub mod named;
pub mod stable_diffusion;
pub mod unet;
pub mod unet_cond;
pub mod vae;

pub use config::{BlockType, UNetConfig};
pub use ddim::{DdimScheduler, DdimStep, PrevSample, SchedulerConfig};
pub use diffusers_model::DiffusersModel;
pub use unet::UNet2DModel;

use std::path::{Path, PathBuf};

/// Reads a diffusers JSON config (unknown fields ignored, as diffusers does) and validates it.
pub fn read_json_config<T: serde::de::DeserializeOwned>(
    path: &Path,
    validate: impl FnOnce(&T) -> Result<(), String>,
) -> Result<T, DiffusionError> {
    let text = std::fs::read_to_string(path).map_err(|source| DiffusionError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let cfg: T = serde_json::from_str(&text).map_err(|e| DiffusionError::Config {
        path: path.to_path_buf(),
        message: format!("line {} column {}: {e}", e.line(), e.column()),
    })?;
    validate(&cfg).map_err(|message| DiffusionError::Config {
        path: path.to_path_buf(),
        message,
    })?;
    Ok(cfg)
}

#[derive(Debug, thiserror::Error)]
pub enum DiffusionError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("scheduler: {message}")]
    Scheduler { message: String },
    #[error("{path}: weights do not fit the model: {message}")]
    Weights { path: PathBuf, message: String },
    #[error("{op} {path}: {source}")]
    Torch {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: tch::TchError,
    },
    #[error("model: {message}")]
    Model { message: String },
}
