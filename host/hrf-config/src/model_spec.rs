//! The `model:` section: which UNet (a diffusers folder or a named config) and its scheduler.

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ConfigError, ConfigErrors};

/// `model:` as written in YAML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelSpecRaw {
    /// A diffusers UNet2DModel folder (config.json + diffusion_pytorch_model.safetensors),
    /// relative to the YAML file.
    pub weights: Option<String>,
    /// A named architecture with random weights: testbed, testbed-wide, ddpm-celebahq-256,
    /// ddpm-cifar10-32.
    pub config: Option<String>,
    /// `auto` (CUDA when available), `cpu`, `cuda`, `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
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
        match source {
            Some(source) if problems.is_empty() => Ok(ModelSpec {
                source,
                device: self.device.clone(),
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
}
