//! `hrf run` pipelines (docs/ALGORITHM.md; docs/ARCHITECTURE.md §7): the YAML as written
//! (`RunFile`, unknown keys refused), `--set key.path=value` overrides, and the validated
//! `RunPipeline` (paths resolved against the YAML's folder, defaults filled, cross-field rules
//! checked, every problem reported at once). `run_schema` is the JSON Schema of the file.
//!
//! The parts, by file:
//! - `raw.rs`: the file's types as serde reads them (`RunFile`, `TrainingRaw`, …,
//!   `RunSettingsRaw`).
//! - `defaults.rs`: every default, the fixed ones and those that depend on the method, the
//!   prompts or the reward's kind.
//! - `validate.rs`: `RunFile::validate`, one function per section, every problem in one list
//!   (`problems.rs`: that list, the rule for names, the folder paths resolve against).
//! - `rewards.rs`: the rewards' checks, one function per kind.
//! - `window.rs`: HRF's `training.hrf` and its window schedule.
//! - `sizes.rs`: the size caps, the largest tensors and the memory estimate.
//! - `resolved.rs`: `RunPipeline` and its resolved sections, written back in the file's shape.
//! - `schema.rs`: the JSON Schema.
//! - here: loading (read, override, parse, validate).

use std::path::Path;

use crate::ConfigErrors;

mod defaults;
mod problems;
mod raw;
mod resolved;
mod rewards;
mod schema;
mod sizes;
mod validate;
mod window;

#[cfg(test)]
mod tests;

pub use raw::{
    AdvantagesRaw, BestBy, EvaluationRaw, HrfRaw, OnError, OptimizerRaw, PromptsFile, PromptsRaw,
    RewardKindName, RewardRaw, RunFile, RunSettingsRaw, ScoreRaw, TrainingRaw, Transform,
    WindowClusterRaw,
};
pub use resolved::{
    read_resolved, EvaluationSettings, HttpSpec, JudgeSpec, NativeSpec, ProcessSpec, RewardKind,
    RewardSpec, RunPipeline, RunSettings, ScoreFrom, ScoreSpec, ServerSpec, WasmSpec,
};
pub use schema::{run_schema, run_schema_text};

/// Reads, overrides (`--set key.path=value`, applied in order) and validates a run pipeline.
/// Every problem comes back at once, with line:column where the value is in the file.
pub fn load_with_overrides(file: &Path, sets: &[String]) -> Result<RunPipeline, ConfigErrors> {
    let text = crate::read_text(file)?;
    parse(file, &text, sets)
}

/// Reads and validates a run pipeline.
pub fn load(file: &Path) -> Result<RunPipeline, ConfigErrors> {
    load_with_overrides(file, &[])
}

/// `load_with_overrides` on text already read from `file` (relative paths resolve against
/// `file`'s folder).
pub fn parse(file: &Path, text: &str, sets: &[String]) -> Result<RunPipeline, ConfigErrors> {
    let schema = run_schema();
    crate::overrides::parse_validated(file, text, sets, Some(&schema), |raw: RunFile| {
        raw.validate(file, text.to_string())
    })
}
