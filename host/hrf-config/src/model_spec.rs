//! The `model:` section: which model (a diffusers UNet folder, a Stable Diffusion pipeline folder
//! or a named config), its device, and for a pipeline the LoRA adapters that train and the
//! negative prompt.

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ConfigError, ConfigErrors};

/// `model:` as written in YAML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelSpecRaw {
    /// A diffusers UNet2DModel folder (config.json + diffusion_pytorch_model.safetensors), or
    /// a Stable Diffusion 1.x/2.x pipeline folder (model_index.json, unet/, vae/,
    /// text_encoder/, tokenizer/, scheduler/), relative to the YAML file.
    pub weights: Option<String>,
    /// A named architecture with random weights: testbed, testbed-wide, ddpm-celebahq-256,
    /// ddpm-cifar10-32.
    pub config: Option<String>,
    /// `auto` (CUDA when available), `cpu`, `cuda`, `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
    /// LoRA adapters on a Stable Diffusion pipeline's UNet: only they train, and best/ and
    /// final/ hold them as diffusers' LoRA file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraSettings>,
    /// A Stable Diffusion pipeline's negative prompt: classifier-free guidance's unconditional
    /// branch, in sampling and evaluation (default: the empty prompt, as diffusers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_prompt: Option<String>,
    /// A Stable Diffusion pipeline's frozen weights (UNet, VAE, text encoder): `fp32`
    /// (default), `bf16`, or `fp16` (CUDA only). LoRA adapters, their optimiser, the DDIM
    /// arithmetic and the log-probs stay fp32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<Precision>,
    /// A Stable Diffusion pipeline's UNet keeps only each level's inputs while training and
    /// recomputes the levels in the backward pass: less memory, about one more forward's time;
    /// the same gradients (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gradient_checkpointing: Option<bool>,
    /// On the CPU: run the UNet's passes on this many one-thread workers side by side (the
    /// epoch's sampling batches, HRF's anchor and HRF-D's candidate batches, the evaluations'
    /// batches and each train batch's forward/backward passes, dealt out in turn) instead of
    /// one pool of libtorch threads; about one per core. The numbers are those of a one-thread
    /// run (`OMP_NUM_THREADS=1`), bit for bit. Built for pixel UNet2DModels (default 1: one
    /// pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
}

/// The most `model.workers` a run takes.
pub const MAX_WORKERS: usize = 256;

/// The precision of a pipeline's frozen weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats.
    #[default]
    Fp32,
    /// bfloat16: fp32's range at 8 bits of mantissa; on CUDA and CPU.
    Bf16,
    /// IEEE half precision: CUDA only (libtorch's CPU kernels lack much of it).
    Fp16,
}

/// `model.lora:` (peft's LoraConfig, as diffusers' training scripts set it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoraSettings {
    /// The adapters' rank r.
    pub rank: i64,
    /// The update is scaled by alpha / rank (default: alpha = rank, scale 1).
    #[serde(default)]
    pub alpha: Option<f64>,
    /// The layers adapted, by name or name suffix: to_q, to_k, to_v, to_out.0 (attention),
    /// ff.net.0.proj, ff.net.2 (feed-forward), proj_in, proj_out (SD 2.x's linear projections).
    #[serde(default = "default_lora_targets")]
    pub targets: Vec<String>,
    /// peft's `lora_dropout`: the probability that an element of an adapter's input is zeroed
    /// (the rest scaled by 1 / (1 − p)) in the epoch's sampling and training passes, with one
    /// mask per (sample, step), so a step is trained with the mask it was sampled with; off in
    /// evaluations, `hrf sample` and exports (default 0: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropout: f64,
}

fn is_zero(p: &f64) -> bool {
    *p == 0.0
}

fn default_lora_targets() -> Vec<String> {
    ["to_q", "to_k", "to_v", "to_out.0"]
        .map(String::from)
        .to_vec()
}

/// The model kinds a folder can be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FolderKind {
    /// A UNet2DModel folder (or a pipeline folder holding one under unet/ without a VAE).
    PixelUNet,
    /// A Stable Diffusion pipeline (model_index.json with unet/ and vae/).
    StableDiffusion,
}

impl FolderKind {
    pub fn of(dir: &Path) -> Self {
        if dir.join("model_index.json").is_file() && dir.join("vae").is_dir() {
            Self::StableDiffusion
        } else {
            Self::PixelUNet
        }
    }
}

fn default_device() -> String {
    "auto".into()
}

#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    Folder(PathBuf),
    Named(String),
}

/// `model:` after validation: paths resolved against the YAML file's folder.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub source: ModelSource,
    pub device: String,
    /// For a Stable Diffusion pipeline: its adapters (alpha resolved) and negative prompt.
    pub lora: Option<LoraSettings>,
    pub negative_prompt: String,
    /// The frozen weights' precision (fp32 for every pixel model).
    pub dtype: Precision,
    /// Gradient checkpointing of a pipeline's UNet (false for every pixel model).
    pub gradient_checkpointing: bool,
    /// One-thread CPU workers that run the UNet's passes side by side (1: one thread pool).
    pub workers: usize,
}

impl ModelSpec {
    /// Whether the model is a Stable Diffusion pipeline.
    pub fn is_text_to_image(&self) -> bool {
        matches!(&self.source, ModelSource::Folder(d) if FolderKind::of(d) == FolderKind::StableDiffusion)
    }
}

pub const NAMED_CONFIGS: [&str; 4] = [
    "testbed",
    "testbed-wide",
    "ddpm-celebahq-256",
    "ddpm-cifar10-32",
];

impl ModelSpecRaw {
    /// Checks the section; `file` is the YAML it came from (paths are relative to its folder).
    pub fn validate(&self, file: &Path) -> Result<ModelSpec, ConfigErrors> {
        let err = |field: &str, message: String| ConfigError::field(file, field, message);
        let mut problems = Vec::new();
        let base = file.parent().unwrap_or(Path::new("."));
        let source = match (&self.weights, &self.config) {
            (Some(w), None) => {
                let dir = base.join(w);
                if !dir.join("config.json").exists()
                    && !dir.join("unet").join("config.json").exists()
                {
                    problems.push(err(
                        "model.weights",
                        format!(
                            "{} is not a diffusers model folder (no config.json)",
                            dir.display()
                        ),
                    ));
                }
                Some(ModelSource::Folder(dir))
            }
            (None, Some(name)) if NAMED_CONFIGS.contains(&name.as_str()) => {
                Some(ModelSource::Named(name.clone()))
            }
            (None, Some(name)) => {
                problems.push(err(
                    "model.config",
                    format!(
                        "unknown config {name:?}; known: {}",
                        NAMED_CONFIGS.join(", ")
                    ),
                ));
                None
            }
            (Some(_), Some(_)) => {
                problems.push(err(
                    "model",
                    "give either `weights` or `config`, not both".into(),
                ));
                None
            }
            (None, None) => {
                problems.push(err(
                    "model",
                    "give `weights` (a diffusers folder) or `config` (a named architecture)".into(),
                ));
                None
            }
        };
        let dev = self.device.as_str();
        let valid_device = matches!(dev, "auto" | "cpu" | "cuda")
            || dev
                .strip_prefix("cuda:")
                .is_some_and(|n| n.parse::<usize>().is_ok());
        if !valid_device {
            problems.push(err(
                "model.device",
                format!("expected auto, cpu, cuda or cuda:N, got {dev:?}"),
            ));
        }
        let pipeline = matches!(&source, Some(ModelSource::Folder(d)) if FolderKind::of(d) == FolderKind::StableDiffusion);
        let mut lora = self.lora.clone();
        match (&mut lora, pipeline) {
            (Some(l), true) => {
                if l.rank < 1 {
                    problems.push(err("model.lora.rank", format!("must be ≥ 1, got {}", l.rank)));
                }
                let alpha = *l.alpha.get_or_insert(l.rank as f64);
                if !(alpha.is_finite() && alpha > 0.0) {
                    problems.push(err("model.lora.alpha", format!("must be > 0, got {alpha}")));
                }
                if !(0.0..1.0).contains(&l.dropout) {
                    problems.push(err(
                        "model.lora.dropout",
                        format!("must be in [0, 1), got {}", l.dropout),
                    ));
                }
                if l.targets.is_empty() {
                    problems.push(err(
                        "model.lora.targets",
                        "is empty: name the layers to adapt (e.g. [to_q, to_k, to_v, to_out.0])".into(),
                    ));
                }
            }
            (None, true) => problems.push(err(
                "model.lora",
                "a Stable Diffusion pipeline trains LoRA adapters (full fine-tuning of its UNet is not built): give model.lora, e.g. {rank: 4}".into(),
            )),
            (Some(_), false) => problems.push(err(
                "model.lora",
                "LoRA is built for Stable Diffusion pipelines (a folder with model_index.json, unet/ and vae/); this model is a pixel UNet2DModel".into(),
            )),
            (None, false) => {}
        }
        if self.negative_prompt.is_some() && !pipeline {
            problems.push(err(
                "model.negative_prompt",
                "only a Stable Diffusion pipeline has a negative prompt".into(),
            ));
        }
        let dtype = self.dtype.unwrap_or_default();
        if dtype != Precision::Fp32 && !pipeline {
            problems.push(err(
                "model.dtype",
                "only a Stable Diffusion pipeline's frozen weights take another precision (a pixel UNet2DModel trains all its weights, in fp32)".into(),
            ));
        }
        let gradient_checkpointing = self.gradient_checkpointing.unwrap_or(false);
        if gradient_checkpointing && !pipeline {
            problems.push(err(
                "model.gradient_checkpointing",
                "is built for a Stable Diffusion pipeline's UNet; this model is a pixel UNet2DModel".into(),
            ));
        }
        let workers = self.workers.unwrap_or(1);
        if !(1..=MAX_WORKERS).contains(&workers) {
            problems.push(err(
                "model.workers",
                format!("must be between 1 and {MAX_WORKERS}, got {workers}"),
            ));
        } else if workers > 1 && pipeline {
            problems.push(err(
                "model.workers",
                "is built for pixel UNet2DModels; a Stable Diffusion pipeline's UNet carries per-pass state (adapter switches, dropout keys) and runs on one thread pool".into(),
            ));
        } else if workers > 1 && dev.starts_with("cuda") {
            problems.push(err(
                "model.workers",
                format!("splits the CPU's cores into one-thread workers; device {dev:?} runs every pass on the GPU: leave model.workers out"),
            ));
        }
        if dtype == Precision::Fp16 && dev == "cpu" {
            problems.push(err(
                "model.dtype",
                "fp16 runs on CUDA only: on CPU use bf16 (or fp32)".into(),
            ));
        }
        match source {
            Some(source) if problems.is_empty() => Ok(ModelSpec {
                source,
                device: self.device.clone(),
                lora,
                negative_prompt: self.negative_prompt.clone().unwrap_or_default(),
                dtype,
                gradient_checkpointing,
                workers,
            }),
            _ => Err(ConfigErrors(problems)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_yaml;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        #[allow(dead_code)]
        model: ModelSpecRaw,
    }

    #[test]
    fn unknown_keys_are_refused_with_their_place() {
        let text = "model:\n  config: testbed\n  wieghts: x\n";
        let e = parse_yaml::<Doc>(Path::new("p.yaml"), text).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("p.yaml:3:"), "{msg}");
        assert!(msg.contains("wieghts"), "{msg}");
    }

    #[test]
    fn wrong_types_are_refused_with_their_place() {
        let text = "model:\n  config: [1, 2]\n";
        let e = parse_yaml::<Doc>(Path::new("p.yaml"), text).unwrap_err();
        assert_eq!(e.0[0].line, Some(2), "{e}");
    }

    #[test]
    fn validation_reports_every_problem() {
        let raw = ModelSpecRaw {
            weights: None,
            config: Some("sd-xl".into()),
            device: "gpu".into(),
            lora: None,
            negative_prompt: None,
            dtype: None,
            gradient_checkpointing: None,
            workers: None,
        };
        let e = raw.validate(Path::new("dir/p.yaml")).unwrap_err();
        assert_eq!(e.0.len(), 2, "{e}");
        assert!(e.to_string().contains("model.config") && e.to_string().contains("model.device"));
    }

    #[test]
    fn weights_resolve_against_the_yaml_folder() {
        let dir = std::env::temp_dir().join(format!("hrf-config-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("m")).unwrap();
        std::fs::write(dir.join("m/config.json"), "{}").unwrap();
        let raw = ModelSpecRaw {
            weights: Some("m".into()),
            config: None,
            device: "cpu".into(),
            lora: None,
            negative_prompt: None,
            dtype: None,
            gradient_checkpointing: None,
            workers: None,
        };
        let spec = raw.validate(&dir.join("p.yaml")).unwrap();
        assert_eq!(spec.source, ModelSource::Folder(dir.join("m")));
        let missing = ModelSpecRaw {
            weights: Some("nope".into()),
            ..raw
        };
        assert!(missing
            .validate(&dir.join("p.yaml"))
            .unwrap_err()
            .to_string()
            .contains("model.weights"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_pipeline_folder_needs_lora_and_a_unet_folder_refuses_it() {
        let dir = std::env::temp_dir().join(format!("hrf-config-sd-{}", std::process::id()));
        for sub in ["sd/unet", "sd/vae", "px"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::write(dir.join("sd/model_index.json"), "{}").unwrap();
        std::fs::write(dir.join("sd/unet/config.json"), "{}").unwrap();
        std::fs::write(dir.join("px/config.json"), "{}").unwrap();
        let raw = |w: &str, lora: Option<LoraSettings>, neg: Option<&str>| ModelSpecRaw {
            weights: Some(w.into()),
            config: None,
            device: "cpu".into(),
            lora,
            negative_prompt: neg.map(String::from),
            dtype: None,
            gradient_checkpointing: None,
            workers: None,
        };
        let yaml = dir.join("p.yaml");
        let lora = |rank, alpha| LoraSettings {
            rank,
            alpha,
            targets: default_lora_targets(),
            dropout: 0.0,
        };
        let e = raw("sd", None, None)
            .validate(&yaml)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model.lora") && e.contains("give model.lora"),
            "{e}"
        );
        let spec = raw("sd", Some(lora(4, None)), Some("blurry"))
            .validate(&yaml)
            .unwrap();
        assert!(spec.is_text_to_image());
        assert_eq!(
            spec.lora.as_ref().unwrap().alpha,
            Some(4.0),
            "alpha defaults to rank"
        );
        assert_eq!(spec.negative_prompt, "blurry");
        let e = raw("sd", Some(lora(0, Some(-1.0))), None)
            .validate(&yaml)
            .unwrap_err();
        assert_eq!(e.0.len(), 2, "{e}");
        assert!(
            e.to_string().contains("model.lora.rank") && e.to_string().contains("model.lora.alpha")
        );
        for (p, ok) in [
            (0.1, true),
            (0.0, true),
            (1.0, false),
            (-0.1, false),
            (f64::NAN, false),
        ] {
            let settings = LoraSettings {
                dropout: p,
                ..lora(4, None)
            };
            let r = raw("sd", Some(settings), None).validate(&yaml);
            assert_eq!(r.is_ok(), ok, "dropout {p}");
            if let Err(e) = r {
                assert!(e.to_string().contains("model.lora.dropout"), "{e}");
            }
        }
        let e = raw("px", Some(lora(4, None)), Some("x"))
            .validate(&yaml)
            .unwrap_err();
        assert_eq!(e.0.len(), 2, "{e}");
        assert!(
            e.to_string().contains("pixel UNet2DModel")
                && e.to_string().contains("model.negative_prompt")
        );
        assert!(!raw("px", None, None)
            .validate(&yaml)
            .unwrap()
            .is_text_to_image());
        // model.dtype (a pipeline's frozen weights; fp16 on CUDA only) and
        // model.gradient_checkpointing: for pipelines only.
        let with = |w: &str, dtype: Precision, device: &str, checkpointing: bool| ModelSpecRaw {
            dtype: Some(dtype),
            device: device.into(),
            gradient_checkpointing: Some(checkpointing),
            ..raw(w, (w == "sd").then(|| lora(4, None)), None)
        };
        assert_eq!(spec.dtype, Precision::Fp32);
        let bf16 = with("sd", Precision::Bf16, "cpu", false)
            .validate(&yaml)
            .unwrap();
        assert_eq!(bf16.dtype, Precision::Bf16);
        assert!(with("sd", Precision::Fp16, "cuda", false)
            .validate(&yaml)
            .is_ok());
        let e = with("sd", Precision::Fp16, "cpu", false)
            .validate(&yaml)
            .unwrap_err();
        assert!(
            e.to_string().contains("model.dtype") && e.to_string().contains("on CPU use bf16"),
            "{e}"
        );
        let checkpointed = |w: &str| with(w, Precision::Fp32, "cpu", true);
        assert!(
            checkpointed("sd")
                .validate(&yaml)
                .unwrap()
                .gradient_checkpointing
        );
        assert!(!spec.gradient_checkpointing);
        let e = checkpointed("px").validate(&yaml).unwrap_err();
        assert!(
            e.to_string().contains("model.gradient_checkpointing"),
            "{e}"
        );
        let e = with("px", Precision::Bf16, "cpu", false)
            .validate(&yaml)
            .unwrap_err();
        assert!(
            e.to_string().contains("model.dtype") && e.to_string().contains("pixel UNet2DModel"),
            "{e}"
        );
        // model.workers: pixel UNets, off the GPU, 1..=MAX_WORKERS.
        let workers = |w: &str, n: usize, device: &str| ModelSpecRaw {
            workers: Some(n),
            device: device.into(),
            ..raw(w, (w == "sd").then(|| lora(4, None)), None)
        };
        assert_eq!(spec.workers, 1, "one pool by default");
        assert_eq!(workers("px", 2, "cpu").validate(&yaml).unwrap().workers, 2);
        assert_eq!(workers("px", 2, "auto").validate(&yaml).unwrap().workers, 2);
        assert_eq!(workers("sd", 1, "cpu").validate(&yaml).unwrap().workers, 1);
        for (w, n, device, says) in [
            ("px", 0, "cpu", "between 1 and"),
            ("px", MAX_WORKERS + 1, "cpu", "between 1 and"),
            ("sd", 2, "cpu", "pixel UNet2DModels"),
            ("px", 2, "cuda:0", "on the GPU"),
        ] {
            let e = workers(w, n, device)
                .validate(&yaml)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("model.workers") && e.contains(says),
                "{w} {n} {device}: {e}"
            );
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
