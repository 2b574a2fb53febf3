//! A diffusers Stable Diffusion 1.x / 2.x pipeline folder, as `StableDiffusionPipeline.save_pretrained`
//! writes it and the hub holds it: `model_index.json`, `unet/` (UNet2DConditionModel), `vae/`
//! (AutoencoderKL; the decoder is read), `text_encoder/` (CLIPTextModel), `tokenizer/` (CLIP BPE:
//! `vocab.json`, `merges.txt`, `tokenizer_config.json`) and `scheduler/`. What the pipeline does with
//! them is here too: prompts to text states (77 tokens, `last_hidden_state`), latents to images
//! (÷ `scaling_factor`, decode, [−1, 1]). A test checks every part and a whole 10-step DDIM sample
//! against diffusers.

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use crate::clip_text::ClipTextModel;
use crate::clip_tokenizer::ClipTokenizer;
use crate::diffusers_model::{write_folder, SCHEDULER_FILE, WEIGHTS_FILE};
use crate::lora::{self, LoraSpec};
use crate::unet_cond::UNet2DConditionModel;
use crate::vae::VaeDecoder;
use crate::{DiffusionError, SchedulerConfig};

pub const MODEL_INDEX: &str = "model_index.json";
/// The pipeline classes whose folders have this layout.
const PIPELINES: [&str; 3] = [
    "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionInpaintPipeline",
];
const PARTS: [&str; 5] = ["unet", "vae", "text_encoder", "tokenizer", "scheduler"];

pub struct StableDiffusion {
    pub dir: PathBuf,
    pub unet: UNet2DConditionModel,
    pub vae: VaeDecoder,
    pub text_encoder: ClipTextModel,
    pub tokenizer: ClipTokenizer,
    pub scheduler: SchedulerConfig,
}

fn config_err(path: &Path, message: impl Into<String>) -> DiffusionError {
    DiffusionError::Config {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// A string field of a tokenizer config: a plain string, or an AddedToken `{"content": …}`.
fn token_field(v: &serde_json::Value, key: &str) -> Option<String> {
    match v.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        other => other.get("content")?.as_str().map(str::to_string),
    }
}

/// The CLIP tokenizer of a pipeline's `tokenizer/`: padding token and length from
/// `tokenizer_config.json` (else `special_tokens_map.json`; SD 1.x pads with `<|endoftext|>`,
/// 2.x with `!`), 77 tokens unless it says fewer.
pub fn load_tokenizer(dir: &Path) -> Result<ClipTokenizer, DiffusionError> {
    let read = |name: &str| -> Result<Option<serde_json::Value>, DiffusionError> {
        let path = dir.join(name);
        path.exists()
            .then(|| crate::read_json_config::<serde_json::Value>(&path, |_| Ok(())))
            .transpose()
    };
    let config = read("tokenizer_config.json")?;
    let special = read("special_tokens_map.json")?;
    let pad = [&config, &special]
        .into_iter()
        .flatten()
        .find_map(|v| token_field(v, "pad_token"))
        .unwrap_or_else(|| "<|endoftext|>".to_string());
    let max_length = config
        .as_ref()
        .and_then(|v| v.get("model_max_length")?.as_f64())
        .map(|n| n.min(77.0) as usize)
        .unwrap_or(77);
    ClipTokenizer::from_folder(dir, &pad, max_length).map_err(|e| DiffusionError::Model {
        message: e.to_string(),
    })
}

impl StableDiffusion {
    /// Reads the folder onto `device`; with `lora`, the UNet gets fresh adapters
    /// (`UNet2DConditionModel::with_lora`). Every part is checked before any is built: a missing
    /// part or file is named with its path.
    pub fn load(
        dir: &Path,
        device: Device,
        lora: Option<(&LoraSpec, u64)>,
    ) -> Result<Self, DiffusionError> {
        let index_path = dir.join(MODEL_INDEX);
        let index: serde_json::Value = crate::read_json_config(&index_path, |_| Ok(()))?;
        let class = index
            .get("_class_name")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        if !PIPELINES.contains(&class) {
            return Err(config_err(
                &index_path,
                format!(
                    "_class_name {class:?} is not a Stable Diffusion 1.x/2.x pipeline ({})",
                    PIPELINES.join(", ")
                ),
            ));
        }
        for part in PARTS {
            if !dir.join(part).is_dir() {
                return Err(config_err(
                    &index_path,
                    format!("the pipeline has no {part}/ folder beside model_index.json"),
                ));
            }
        }
        let tokenizer = load_tokenizer(&dir.join("tokenizer"))?;
        let scheduler =
            SchedulerConfig::from_json_file(&dir.join("scheduler").join(SCHEDULER_FILE))?;
        let mut text_encoder = ClipTextModel::load(&dir.join("text_encoder"), device)?;
        let mut unet = UNet2DConditionModel::load_with_lora(&dir.join("unet"), device, lora)?;
        let mut vae = VaeDecoder::load(&dir.join("vae"), device)?;
        // Frozen: the text encoder and the VAE always, the UNet's own weights when LoRA
        // adapters are what trains (no gradient is kept for them).
        text_encoder.vs.freeze();
        vae.vs.freeze();
        if unet.lora.is_some() {
            unet.vs.freeze();
        }
        let unet_config = dir.join("unet").join("config.json");
        for (field, ours, other, theirs) in [
            (
                "cross_attention_dim",
                unet.config.cross_attention_dim,
                "the text encoder's hidden_size",
                text_encoder.config.hidden_size,
            ),
            (
                "in_channels",
                unet.config.in_channels,
                "the VAE's latent_channels",
                vae.config.latent_channels,
            ),
        ] {
            if ours != theirs {
                return Err(config_err(
                    &unet_config,
                    format!("{field} {ours} differs from {other} {theirs}"),
                ));
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            unet,
            vae,
            text_encoder,
            tokenizer,
            scheduler,
        })
    }

    /// Casts the frozen weights (UNet, VAE, text encoder) to `kind` (e.g. `Kind::BFloat16`);
    /// the LoRA adapters keep theirs (fp32), and each forward casts its inputs to its part's
    /// precision and returns what the caller works in.
    pub fn set_precision(&mut self, kind: Kind) {
        self.unet.vs.set_kind(kind);
        self.vae.vs.set_kind(kind);
        self.text_encoder.vs.set_kind(kind);
    }

    /// The shape of one latent `[C, h, w]`: the UNet's `sample_size` (64 for SD 1.5 at 512 px).
    pub fn latent_shape(&self) -> [i64; 3] {
        let size = self.unet.config.sample_size.unwrap_or(64);
        [self.unet.config.in_channels, size, size]
    }

    /// Token ids `[N, max_length]` of the prompts, padded and truncated as the pipeline does.
    pub fn token_ids(&self, prompts: &[&str]) -> Tensor {
        let rows: Vec<Tensor> = prompts
            .iter()
            .map(|p| {
                let ids: Vec<i64> = self
                    .tokenizer
                    .encode_padded(p)
                    .into_iter()
                    .map(i64::from)
                    .collect();
                Tensor::from_slice(&ids)
            })
            .collect();
        Tensor::stack(&rows, 0)
    }

    /// The text encoder's `last_hidden_state` `[N, 77, hidden]` of each prompt (no gradient):
    /// what the UNet cross-attends to.
    pub fn encode_prompts(&self, prompts: &[&str]) -> Tensor {
        let device = self.unet.vs.device();
        let ids = self.token_ids(prompts).to_device(device);
        tch::no_grad(|| self.text_encoder.forward(&ids))
    }

    /// Writes the pipeline with the UNet's LoRA adapters merged into its weights
    /// (W + alpha/rank·B·A) as a plain diffusers folder, which `StableDiffusionPipeline.
    /// from_pretrained` loads without peft: every other file of the base folder copied as it is,
    /// the UNet's weights written in their own precision. `out` appears whole or not at all.
    pub fn export_merged(&self, out: &Path) -> Result<(), DiffusionError> {
        let (spec, adapters) = self
            .unet
            .lora
            .as_ref()
            .ok_or_else(|| DiffusionError::Model {
                message: "the pipeline has no LoRA adapters to merge".into(),
            })?;
        let merged = lora::merged_variables(&self.unet.vs, adapters, spec.scale());
        write_folder(out, |tmp| {
            copy_tree(&self.dir, tmp, &|rel| {
                // The UNet's own weight files (any variant) are replaced by the merged ones.
                rel.starts_with("unet")
                    && rel
                        .extension()
                        .is_some_and(|e| e == "safetensors" || e == "bin")
            })?;
            let named: Vec<(String, Tensor)> = merged
                .into_iter()
                .map(|(k, v)| (k, v.to_device(Device::Cpu).contiguous()))
                .collect();
            let path = tmp.join("unet").join(WEIGHTS_FILE);
            Tensor::write_safetensors(&named, &path).map_err(|source| DiffusionError::Torch {
                op: "writing",
                path,
                source,
            })
        })
    }

    /// Final latents to images in [−1, 1] `[B, 3, H, W]` (÷ scaling_factor, the VAE decoder,
    /// clamped), in fp32.
    pub fn decode_to_unit(&self, latents: &Tensor) -> Tensor {
        let z = latents / self.vae.config.scaling_factor;
        tch::no_grad(|| self.vae.decode(&z.to_kind(self.vae.kind())))
            .to_kind(Kind::Float)
            .clamp(-1.0, 1.0)
    }
}

/// Copies the files under `from` into `to` (symbolic links followed, as a hub snapshot's are),
/// leaving out those whose path relative to `from` `skip` names.
fn copy_tree(from: &Path, to: &Path, skip: &dyn Fn(&Path) -> bool) -> Result<(), DiffusionError> {
    fn walk(
        root: &Path,
        dir: &Path,
        to: &Path,
        skip: &dyn Fn(&Path) -> bool,
    ) -> Result<(), DiffusionError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DiffusionError::Io { path, source }
        };
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let path = entry.map_err(io(dir))?.path();
            let rel = path.strip_prefix(root).expect("under root");
            if skip(rel) {
                continue;
            }
            let dest = to.join(rel);
            if path.is_dir() {
                std::fs::create_dir_all(&dest).map_err(io(&dest))?;
                walk(root, &path, to, skip)?;
            } else {
                std::fs::copy(&path, &dest).map_err(io(&dest))?;
            }
        }
        Ok(())
    }
    walk(from, from, to, skip)
}
