//! The run pipeline's tests: a fixture folder and pipelines shared by the parts' tests.
//! `resolve`: defaults and resolution; `problems`: errors and their places; `overrides`:
//! `--set`; `sizes`: caps and the memory estimate; `schema`: the JSON Schema.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::problems::Problems;
use super::sizes::check_sizes;
use super::*;
use crate::limits::{self, canonical, ModelShape, RunSizes};
use crate::model_spec::ModelSource;
use crate::training::{
    AdvantageMode, AdvantageSettings, SamplingSettings, StartIndex, StepReduction,
    TrainingPrecision, TrainingSettings,
};

mod features;
mod guard;
mod http;
mod overrides;
mod presets;
mod problems;
mod resolve;
mod schema;
mod sizes;

/// A folder with a model, an ONNX file and a prompts file; removed on drop.
pub(super) struct Fixture(pub(super) PathBuf);

impl Fixture {
    pub(super) fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("hrf-run-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("models/base")).unwrap();
        std::fs::create_dir_all(dir.join("configs")).unwrap();
        std::fs::write(dir.join("models/base/config.json"), "{}").unwrap();
        std::fs::write(dir.join("models/head.onnx"), "onnx").unwrap();
        std::fs::write(
            dir.join("configs/prompts.txt"),
            "# classes\na photo of a shirt\n\n  a photo of a sneaker  \n",
        )
        .unwrap();
        Self(dir)
    }

    /// Writes `configs/p.yaml` and loads it.
    pub(super) fn load(&self, text: &str, sets: &[&str]) -> Result<RunPipeline, ConfigErrors> {
        let file = self.0.join("configs/p.yaml");
        std::fs::write(&file, text).unwrap();
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        load_with_overrides(&file, &sets)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) const MINIMAL: &str = "\
model: {weights: ../models/base}
rewards:
  - {kind: jpeg-compressibility}
run: {name: ddpo-compressibility}
";

pub(super) const FULL: &str = "\
model: {weights: ../models/base, device: cpu}
scheduler: {num_train_timesteps: 1000, beta_schedule: linear}
sampling: {steps: 20, eta: 1.0, guidance: 2.0, batch_size: 8, batches_per_epoch: 4}
training:
  method: ddpo-is
  epochs: 3
  optimizer: {lr: 3.0e-4, weight_decay: 0.0}
  inner_epochs: 2
  step_reduction: sum
advantages: {buffer_size: 64}
prompts: {file: prompts.txt}
rewards:
  - {kind: prompt-alignment, weight: 2}
  - kind: onnx
    name: my-score
    weight: -0.5
    stages:
      - {model: ../models/head.onnx, output: features, l2_normalize: true}
      - {model: ../models/head.onnx}
    input: {layout: nhwc, size: [224, 224]}
    score: prompted-class
    classes: [shirt, sneaker]
    batch_size: 16
evaluation:
  every: 0
  samples: 16
  best_by: {reward-with-diversity: {min_vendi_ratio: 0.8}}
run: {name: full.run_1, output: ../runs, seed: 7, save_every: 1, keep: 3}
";

pub(super) fn messages(e: &ConfigErrors) -> String {
    e.to_string()
}

/// A pipeline of two rewards, the second a `kind` entry with `field: value` added (the value
/// is on line 4, at column 16 + the lengths of `kind` and `field`).
pub(super) fn two_rewards(kind: &str, field: &str, value: &str) -> String {
    format!(
        "model: {{weights: ../models/base}}\nrewards:\n  - {{kind: aesthetic}}\n  - {{kind: {kind}, {field}: {value}}}\nrun: {{name: t}}\n"
    )
}

pub(super) fn serde_yaml_text(p: &RunPipeline) -> String {
    serde_json::to_string_pretty(&p.resolved()).unwrap()
}
