//! `hrf pretrain` pipelines: the model to train, the data, the scheduler, and the DDPM settings.

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model_spec::{ModelSpec, ModelSpecRaw};
use crate::{ConfigError, ConfigErrors};

/// AdamW's settings (torch.optim.AdamW's names).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWSettings {
    pub lr: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for AdamWSettings {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// The `training:` section of a pretraining pipeline, with its defaults in one place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PretrainSettings {
    pub steps: i64,
    pub batch_size: i64,
    pub optimizer: AdamWSettings,
    pub warmup_steps: i64,
    /// Cosine decay of the learning rate to `lr · min_lr_ratio` after warm-up.
    pub min_lr_ratio: f64,
    pub max_grad_norm: f64,
    pub ema_decay: f64,
    /// Probability of replacing a label with the null class (for classifier-free guidance).
    pub class_dropout: f64,
    pub seed: u64,
    pub log_every: i64,
    pub sample_every: i64,
    pub checkpoint_every: i64,
    pub keep_checkpoints: usize,
    /// DDIM steps and guidance weight of the sample grids.
    pub grid_steps: i64,
    pub grid_guidance: f64,
    /// A wall-clock budget for this process's training: after the step during which it runs
    /// out, training ends as if that step were the last (log line, sample grid, checkpoint,
    /// export), so a run on a lent machine always brings a model back. The learning-rate
    /// schedule still spans `steps`: size `steps` to the budget, and treat this as the safety
    /// net. `--resume` continues towards `steps` with a fresh budget.
    pub max_seconds: Option<f64>,
    /// Min-SNR-γ loss weighting (Hang et al. 2023, arXiv 2303.09556): each sample's loss is
    /// weighted by min(SNR(t), γ)/SNR(t) for ε-prediction (÷ (SNR + 1) for v, × 1 for x₀), which
    /// takes weight off the easy low-noise timesteps; the paper uses γ = 5. Unset: plain MSE.
    pub min_snr_gamma: Option<f64>,
}

impl Default for PretrainSettings {
    fn default() -> Self {
        Self {
            steps: 10_000,
            batch_size: 128,
            optimizer: AdamWSettings::default(),
            warmup_steps: 200,
            min_lr_ratio: 0.1,
            max_grad_norm: 1.0,
            ema_decay: 0.999,
            class_dropout: 0.1,
            seed: 0,
            log_every: 50,
            sample_every: 1000,
            checkpoint_every: 500,
            keep_checkpoints: 2,
            grid_steps: 40,
            grid_guidance: 2.0,
            max_seconds: None,
            min_snr_gamma: None,
        }
    }
}

/// `data:` — Fashion-MNIST (the Debian package's files, or IDX files in `path`) or a folder of
/// images with one sub-folder per class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataSpecRaw {
    pub source: DataSource,
    #[serde(default)]
    pub path: Option<String>,
    /// Use only the first `limit` images (quick runs, tests).
    #[serde(default)]
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DataSource {
    FashionMnist,
    Folder,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DataSpec {
    pub source: DataSource,
    pub path: Option<PathBuf>,
    pub limit: Option<usize>,
}

/// A pretraining pipeline file as written.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PretrainFile {
    pub model: ModelSpecRaw,
    pub data: DataSpecRaw,
    /// diffusers scheduler settings (scheduler_config.json's fields); defaults are DDPM's.
    #[serde(default)]
    pub scheduler: Option<serde_json::Value>,
    #[serde(default)]
    pub training: PretrainSettings,
    /// Where checkpoints, grids and metrics go (relative to the YAML file).
    pub output: String,
    /// Where the final EMA model is written as a diffusers folder (relative to the YAML file).
    pub export: Option<String>,
}

/// A validated pretraining pipeline.
#[derive(Debug, Clone)]
pub struct PretrainPipeline {
    pub file: PathBuf,
    pub model: ModelSpec,
    pub data: DataSpec,
    pub scheduler: serde_json::Value,
    pub training: PretrainSettings,
    pub output: PathBuf,
    pub export: Option<PathBuf>,
}

impl PretrainFile {
    pub fn validate(self, file: &Path) -> Result<PretrainPipeline, ConfigErrors> {
        let mut problems = Vec::new();
        let err = |field: &str, message: String| ConfigError::field(file, field, message);
        let base = file.parent().unwrap_or(Path::new("."));
        let model = self
            .model
            .validate(file)
            .map_err(|e| problems.extend(e.0))
            .ok();
        if model.as_ref().is_some_and(|m| m.workers > 1) {
            problems.push(err(
                "model.workers",
                "is for fine-tuning (`hrf run`); pretraining runs its batches on one thread pool"
                    .into(),
            ));
        }
        let t = &self.training;
        let positive = [
            ("training.steps", t.steps),
            ("training.batch_size", t.batch_size),
            ("training.log_every", t.log_every),
            ("training.sample_every", t.sample_every),
            ("training.checkpoint_every", t.checkpoint_every),
            ("training.grid_steps", t.grid_steps),
        ];
        for (field, v) in positive {
            if v <= 0 {
                problems.push(err(field, format!("must be positive, got {v}")));
            }
        }
        let max = crate::limits::MAX_BATCH;
        if t.batch_size > max as i64 {
            problems.push(err(
                "training.batch_size",
                format!(
                    "must be ≤ {} (images per batch), got {}",
                    crate::thousands(max as u64),
                    crate::thousands(t.batch_size as u64)
                ),
            ));
        }
        if t.warmup_steps < 0 {
            problems.push(err(
                "training.warmup_steps",
                format!("must be ≥ 0, got {}", t.warmup_steps),
            ));
        }
        let o = &t.optimizer;
        if o.weight_decay < 0.0 {
            problems.push(err(
                "training.optimizer.weight_decay",
                format!("must be ≥ 0, got {}", o.weight_decay),
            ));
        }
        for (field, b) in [
            ("training.optimizer.beta1", o.beta1),
            ("training.optimizer.beta2", o.beta2),
        ] {
            if !(0.0..1.0).contains(&b) {
                problems.push(err(field, format!("must be in [0, 1), got {b}")));
            }
        }
        for (field, v) in [
            ("training.ema_decay", t.ema_decay),
            ("training.class_dropout", t.class_dropout),
            ("training.min_lr_ratio", t.min_lr_ratio),
        ] {
            if !(0.0..=1.0).contains(&v) {
                problems.push(err(field, format!("must be in [0, 1], got {v}")));
            }
        }
        // Positive reals; the optional ones only when given.
        for (field, v) in [
            ("training.optimizer.lr", Some(o.lr)),
            ("training.max_grad_norm", Some(t.max_grad_norm)),
            ("training.min_snr_gamma", t.min_snr_gamma),
            ("training.max_seconds", t.max_seconds),
        ] {
            if let Some(v) = v.filter(|v| !(*v > 0.0 && v.is_finite())) {
                problems.push(err(field, format!("must be positive and finite, got {v}")));
            }
        }
        let path = self.data.path.as_ref().map(|p| base.join(p));
        if self.data.source == DataSource::Folder && path.as_ref().is_none_or(|p| !p.is_dir()) {
            problems.push(err(
                "data.path",
                "a folder source needs `path`, an existing folder".into(),
            ));
        }
        if let Some(s) = &self.scheduler {
            if !s.is_object() {
                problems.push(err(
                    "scheduler",
                    "must be a mapping of diffusers scheduler fields".into(),
                ));
            }
        }
        match model {
            Some(model) if problems.is_empty() => Ok(PretrainPipeline {
                file: file.to_path_buf(),
                model,
                data: DataSpec {
                    source: self.data.source,
                    path,
                    limit: self.data.limit,
                },
                scheduler: self.scheduler.unwrap_or_else(|| serde_json::json!({})),
                training: self.training,
                output: base.join(&self.output),
                export: self.export.map(|e| base.join(e)),
            }),
            _ => Err(ConfigErrors(problems)),
        }
    }
}

/// Reads and validates a pretraining pipeline.
pub fn load(file: &Path) -> Result<PretrainPipeline, ConfigErrors> {
    load_with_overrides(file, &[])
}

/// Reads a pretraining pipeline with `--set key.path=value` overrides applied, and validates it.
pub fn load_with_overrides(file: &Path, sets: &[String]) -> Result<PretrainPipeline, ConfigErrors> {
    let text = crate::read_text(file)?;
    let schema = pretrain_schema();
    crate::overrides::parse_validated(file, &text, sets, Some(&schema), |raw: PretrainFile| {
        raw.validate(file)
    })
}

/// The JSON Schema of a pretraining pipeline file (for reporting every unknown key and wrong
/// type at once).
pub fn pretrain_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(PretrainFile)).expect("a schema is plain data")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_yaml;
    use crate::ModelSource;

    #[test]
    fn defaults_fill_the_training_section() {
        let text = "model: {config: testbed}\ndata: {source: fashion-mnist}\noutput: runs/p\ntraining:\n  steps: 5\n  optimizer: {lr: 0.002}\n";
        let f: PretrainFile = parse_yaml(Path::new("/x/p.yaml"), text).unwrap();
        let p = f.validate(Path::new("/x/p.yaml")).unwrap();
        assert_eq!(p.training.steps, 5);
        assert_eq!(p.training.optimizer.lr, 0.002);
        assert_eq!(p.training.optimizer.beta2, 0.999);
        assert_eq!(p.output, Path::new("/x/runs/p"));
    }

    #[test]
    fn overrides_apply_and_every_error_has_its_place() {
        let file = Path::new("/x/p.yaml");
        let text = "model: {config: testbed}\ndata: {source: fashion-mnist}\noutput: o\ntraining:\n  steps: 5\n  optimizer: {lr: 0.002}\n";
        let load = |text: &str, sets: &[&str]| {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            crate::overrides::parse_validated(file, text, &sets, None, |raw: PretrainFile| {
                raw.validate(file)
            })
        };
        let p = load(text, &["training.steps=7", "model.config=testbed-wide"]).unwrap();
        assert_eq!(p.training.steps, 7);
        assert_eq!(p.model.source, ModelSource::Named("testbed-wide".into()));
        assert_eq!(p.training.optimizer.lr, 0.002);
        // A misspelt override names itself; a bad value set by an override has no line.
        let e = load(text, &["training.stepz=7"]).unwrap_err().to_string();
        assert!(e.contains("stepz"), "{e}");
        let e = load(text, &["training.steps=0"]).unwrap_err();
        assert_eq!(e.0[0].field.as_deref(), Some("training.steps"));
        assert_eq!(e.0[0].line, None, "{e}");
        assert_eq!(load(text, &[]).unwrap().training.max_seconds, None);
        let p = load(text, &["training.max_seconds=300"]).unwrap();
        assert_eq!(p.training.max_seconds, Some(300.0));
        let e = load(text, &["training.max_seconds=-5"]).unwrap_err();
        assert_eq!(e.0[0].field.as_deref(), Some("training.max_seconds"));
        let p = load(text, &["training.min_snr_gamma=5"]).unwrap();
        assert_eq!(p.training.min_snr_gamma, Some(5.0));
        let e = load(text, &["training.min_snr_gamma=0"]).unwrap_err();
        assert_eq!(e.0[0].field.as_deref(), Some("training.min_snr_gamma"));
        // A bad value in the file is placed at its line and column (of the value).
        let e = load(&text.replace("steps: 5", "steps: 0"), &[]).unwrap_err();
        assert_eq!((e.0[0].line, e.0[0].column), (Some(5), Some(10)), "{e}");
        // A batch past what can run is refused, not left to abort on its allocation.
        let e = load(text, &["training.batch_size=4294967295"]).unwrap_err();
        assert_eq!(e.0[0].field.as_deref(), Some("training.batch_size"), "{e}");
        assert!(e.to_string().contains("must be ≤ 65,536"), "{e}");
    }

    #[test]
    fn shipped_pretraining_pipelines_load() {
        let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut seen = std::collections::BTreeMap::new();
        for entry in std::fs::read_dir(&configs).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.contains("pretrain") && name.ends_with(".yaml") {
                let p = load(&path).unwrap_or_else(|e| panic!("{e}"));
                assert!(p.export.is_some(), "{}", path.display());
                seen.insert(name, p);
            }
        }
        let names: Vec<&str> = seen.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "testbed-pretrain-stage2.yaml",
                "testbed-pretrain.yaml",
                "testbed-wide-pretrain.yaml"
            ]
        );
        // The base model's two stages are chained: stage 2 starts from what stage 1 exports,
        // and exports the base model the fine-tuning configs use.
        let stage1 = seen["testbed-pretrain.yaml"].export.clone().unwrap();
        let stage2 = &seen["testbed-pretrain-stage2.yaml"];
        assert_eq!(stage2.model.source, ModelSource::Folder(stage1));
        assert!(stage2
            .export
            .as_ref()
            .unwrap()
            .ends_with("../models/testbed"));
    }

    #[test]
    fn every_problem_is_reported() {
        let text = "model: {config: testbed, workers: 2}\ndata: {source: folder}\noutput: o\ntraining:\n  steps: 0\n  optimizer: {lr: -1}\n";
        let f: PretrainFile = parse_yaml(Path::new("p.yaml"), text).unwrap();
        let e = f.validate(Path::new("p.yaml")).unwrap_err();
        let msg = e.to_string();
        assert_eq!(e.0.len(), 4, "{msg}");
        for field in [
            "training.steps",
            "training.optimizer.lr",
            "data.path",
            "model.workers",
        ] {
            assert!(msg.contains(field), "{msg}");
        }
    }

    #[test]
    fn every_unknown_key_and_wrong_type_is_reported_at_once() {
        let dir = std::env::temp_dir().join(format!("hrf-pretrain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("p.yaml");
        let text = "model: {config: testbed}\ndata: {source: mnist, limt: 3}\noutput: o\ntraining:\n  stpes: 5\n  batch_size: many\n";
        std::fs::write(&file, text).unwrap();
        let e = load(&file).unwrap_err();
        let at: Vec<(Option<u64>, Option<u64>)> = e.0.iter().map(|x| (x.line, x.column)).collect();
        assert_eq!(
            at,
            [
                (Some(2), Some(16)),
                (Some(2), Some(23)),
                (Some(5), Some(3)),
                (Some(6), Some(15))
            ],
            "{e}"
        );
        let msg = e.to_string();
        for word in ["mnist", "limt", "stpes", "got `many`"] {
            assert!(msg.contains(word), "{word}: {msg}");
        }
        std::fs::remove_dir_all(dir).unwrap();
        // Quiet on what parses: the shipped pipelines.
        let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        for name in [
            "testbed-pretrain.yaml",
            "testbed-pretrain-stage2.yaml",
            "testbed-wide-pretrain.yaml",
        ] {
            let text = std::fs::read_to_string(configs.join(name)).unwrap();
            assert_eq!(
                crate::check::problems(&pretrain_schema(), &text),
                [],
                "{name}"
            );
        }
    }

    #[test]
    fn unknown_training_keys_are_refused() {
        let text = "model: {config: testbed}\ndata: {source: fashion-mnist}\noutput: o\ntraining:\n  stpes: 5\n";
        let e = parse_yaml::<PretrainFile>(Path::new("p.yaml"), text).unwrap_err();
        assert_eq!(e.0[0].line, Some(5), "{e}");
        assert!(e.to_string().contains("stpes"));
    }
}
