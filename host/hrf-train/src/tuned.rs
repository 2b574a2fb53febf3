//! What a run fine-tunes: its policy, the variables the optimiser changes, and the folder that
//! holds them. A pixel UNet trains every weight and is written as a diffusers UNet folder; a
//! Stable Diffusion pipeline trains its LoRA adapters and is written as diffusers' LoRA file
//! (`pytorch_lora_weights.safetensors`, read by `pipe.load_lora_weights(folder)`).

use std::path::{Path, PathBuf};

use hrf_diffusion::diffusers_model::write_folder;
use hrf_diffusion::lora::{self, LORA_FILE};
use hrf_diffusion::stable_diffusion::StableDiffusion;
use hrf_diffusion::{DiffusersModel, DiffusionError, SchedulerConfig};
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::policy::Policy;
use crate::text_to_image::TextToImage;

/// The file beside the LoRA that names the pipeline it adapts and the adapter's settings.
pub const ADAPTER_INFO_FILE: &str = "hrf_adapter.json";

/// `hrf_adapter.json`: which pipeline a LoRA folder adapts, with what, and the run's prompts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdapterInfo {
    /// The Stable Diffusion folder the adapters were trained on (absolute when it was written).
    pub base_pipeline: PathBuf,
    pub lora: lora::LoraSpec,
    pub negative_prompt: String,
    /// The prompts the run trained on (defaults for `hrf sample`).
    #[serde(default)]
    pub prompts: Vec<String>,
}

impl AdapterInfo {
    /// Reads `dir/hrf_adapter.json`; None when the folder has none (not an adapter folder).
    pub fn read(dir: &Path) -> Result<Option<Self>, DiffusionError> {
        let path = dir.join(ADAPTER_INFO_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        hrf_diffusion::read_json_config(&path, |_| Ok(())).map(Some)
    }
}

impl TextToImage {
    /// The pipeline an adapter folder (a run's final/ or best/) names, with its LoRA file
    /// loaded into fresh adapters: the fine-tuned model, ready to sample.
    pub fn load_adapter_folder(
        dir: &Path,
        device: Device,
        prompts: &[String],
        negative_prompt: Option<&str>,
        precision: Option<tch::Kind>,
    ) -> Result<Self, DiffusionError> {
        let info = AdapterInfo::read(dir)?.ok_or_else(|| DiffusionError::Config {
            path: dir.join(ADAPTER_INFO_FILE),
            message: "missing: not a LoRA folder written by hrf".into(),
        })?;
        let mut sd = StableDiffusion::load(&info.base_pipeline, device, Some((&info.lora, 0)))?;
        if let Some(kind) = precision {
            sd.set_precision(kind);
        }
        let negative = negative_prompt.unwrap_or(&info.negative_prompt);
        let t2i = TextToImage::new(sd, prompts, negative);
        t2i.restore(dir)?;
        Ok(t2i)
    }
}

pub trait TunedModel {
    fn policy(&self) -> &dyn Policy;

    /// The variables the optimiser updates, sorted by name.
    fn trainable(&self) -> Vec<(String, Tensor)>;

    /// Writes the model's folder atomically (best/, final/, a checkpoint's model/).
    fn save(&self, dir: &Path, scheduler: &SchedulerConfig) -> Result<(), DiffusionError>;

    /// Reads what `save` wrote back into the trainable variables (resume, rollback).
    fn restore(&self, dir: &Path) -> Result<(), DiffusionError>;
}

fn sorted(vars: std::collections::HashMap<String, Tensor>) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vars.into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

impl TunedModel for DiffusersModel {
    fn policy(&self) -> &dyn Policy {
        &self.unet
    }

    fn trainable(&self) -> Vec<(String, Tensor)> {
        sorted(self.vs.variables())
    }

    fn save(&self, dir: &Path, scheduler: &SchedulerConfig) -> Result<(), DiffusionError> {
        DiffusersModel::save(self, dir, Some(scheduler))
    }

    fn restore(&self, dir: &Path) -> Result<(), DiffusionError> {
        let weights = DiffusersModel::load(dir, Device::Cpu)?;
        let src = weights.vs.variables();
        tch::no_grad(|| {
            for (name, mut dst) in self.vs.variables() {
                let v = src.get(&name).ok_or_else(|| DiffusionError::Weights {
                    path: dir.to_path_buf(),
                    message: format!("weights lack {name}"),
                })?;
                dst.copy_(&v.to_device(dst.device()));
            }
            Ok(())
        })
    }
}

impl TextToImage {
    fn adapters(&self) -> Result<(&lora::LoraSpec, &tch::nn::VarStore), DiffusionError> {
        self.pipeline
            .unet
            .lora
            .as_ref()
            .map(|(spec, vs)| (spec, vs))
            .ok_or_else(|| DiffusionError::Model {
                message: "this Stable Diffusion pipeline has no LoRA adapters to train".into(),
            })
    }
}

impl TunedModel for TextToImage {
    fn policy(&self) -> &dyn Policy {
        self
    }

    fn trainable(&self) -> Vec<(String, Tensor)> {
        self.adapters()
            .map(|(_, vs)| sorted(vs.variables()))
            .unwrap_or_default()
    }

    fn save(&self, dir: &Path, _scheduler: &SchedulerConfig) -> Result<(), DiffusionError> {
        let (spec, vs) = self.adapters()?;
        write_folder(dir, |tmp| {
            lora::save_diffusers(vs, spec, &tmp.join(LORA_FILE))?;
            let info = AdapterInfo {
                base_pipeline: std::fs::canonicalize(&self.pipeline.dir)
                    .unwrap_or_else(|_| self.pipeline.dir.clone()),
                lora: spec.clone(),
                negative_prompt: self.negative_prompt().to_string(),
                prompts: self.prompts().to_vec(),
            };
            let path = tmp.join(ADAPTER_INFO_FILE);
            std::fs::write(
                &path,
                serde_json::to_string_pretty(&info).expect("json") + "\n",
            )
            .map_err(|source| DiffusionError::Io { path, source })
        })
    }

    fn restore(&self, dir: &Path) -> Result<(), DiffusionError> {
        let (_, vs) = self.adapters()?;
        lora::load_diffusers(vs, &dir.join(LORA_FILE))
    }
}
