//! hrf-config: pipeline YAML → raw structs (unknown keys rejected) → validated values, every
//! problem reported with the file and line:column. Knows nothing about tensors.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

pub mod ddpo;
pub mod model;
mod overrides;
pub mod pretrain;
pub mod reward;
pub mod run;
mod span;

pub use model::{ModelSource, ModelSpec};
pub use run::{load_with_overrides, run_schema, RunPipeline};

/// One problem in a configuration file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line and column, when the problem has a place in the text.
    pub line: Option<u64>,
    pub column: Option<u64>,
    /// The dotted path of the field, when known (`model.weights`).
    pub field: Option<String>,
    pub message: String,
}

impl ConfigError {
    /// A problem with a field after parsing (no line/column: validation sees values, not text).
    pub fn field(file: &Path, field: &str, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            line: None,
            column: None,
            field: Some(field.into()),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let (Some(l), Some(c)) = (self.line, self.column) {
            write!(f, ":{l}:{c}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// All the problems found in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Parses YAML text from `file` into `T`. Syntax errors, unknown keys and wrong types come back
/// with their line and column.
pub fn parse_yaml<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T, ConfigErrors> {
    serde_saphyr::from_str::<T>(text).map_err(|e| {
        let loc = e.location();
        let message = e.without_snippet().to_string();
        // The library appends its own " at line L column C"; the location is ours to print.
        let message = message
            .split(" at line ")
            .next()
            .unwrap_or(&message)
            .trim()
            .to_string();
        ConfigErrors(vec![ConfigError {
            file: file.to_path_buf(),
            line: loc.as_ref().map(|l| l.line()),
            column: loc.as_ref().map(|l| l.column()),
            field: None,
            message,
        }])
    })
}

/// Reads and parses a YAML file.
pub fn read_yaml<T: DeserializeOwned>(file: &Path) -> Result<T, ConfigErrors> {
    parse_yaml(file, &read_text(file)?)
}

/// Reads a configuration file's text; a failure names the file.
pub fn read_text(file: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(file).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.to_path_buf(),
            line: None,
            column: None,
            field: None,
            message: format!("cannot read: {e}"),
        }])
    })
}
