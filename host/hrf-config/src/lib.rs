//! hrf-config: pipeline YAML → raw structs (unknown keys rejected) → validated values, every
//! problem reported with the file and line:column. Knows nothing about tensors.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

mod check;
pub mod features;
pub mod guard;
pub mod limits;
pub mod model_spec;
mod overrides;
pub mod pipeline;
pub mod pretrain_pipeline;
pub mod reward;
mod span;
pub mod training;
mod value_reader;

pub use model_spec::{ModelSource, ModelSpec};
pub use pipeline::{load_with_overrides, run_schema, RunPipeline};

/// What a pipeline file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipelineKind {
    /// Fine-tuning (`hrf run`): `pipeline::load_with_overrides`.
    Run,
    /// Pretraining (`hrf pretrain`), which has a top-level `data:` section:
    /// `pretrain_pipeline::load_with_overrides`.
    Pretrain,
}

/// A document with a top-level `data:` key is a pretraining pipeline; anything else (a text
/// that does not parse included) is read as a fine-tuning pipeline, whose loader reports it.
pub fn pipeline_kind(text: &str) -> PipelineKind {
    let pretrain = span::tree(text).is_some_and(|root| match &root.value {
        span::Node::Map(entries) => entries.iter().any(|(k, _)| k.value.0 == "data"),
        _ => false,
    });
    if pretrain {
        PipelineKind::Pretrain
    } else {
        PipelineKind::Run
    }
}

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
        if let Some(message) = budget_message(&e) {
            return ConfigErrors(vec![ConfigError {
                file: file.to_path_buf(),
                line: loc.as_ref().map(|l| l.line()).filter(|&l| l > 0),
                column: loc.as_ref().map(|l| l.column()).filter(|&c| c > 0),
                field: None,
                message,
            }]);
        }
        ConfigErrors(vec![ConfigError {
            file: file.to_path_buf(),
            line: loc.as_ref().map(|l| l.line()),
            column: loc.as_ref().map(|l| l.column()),
            field: None,
            message: reader_message(&e),
        }])
    })
}

/// The YAML reader's message for `e`, without its snippet and without the " at line L column
/// C" the library appends (the location is ours to print).
pub(crate) fn reader_message(e: &serde_saphyr::Error) -> String {
    let message = e.without_snippet().to_string();
    message
        .split(" at line ")
        .next()
        .unwrap_or(&message)
        .trim()
        .to_string()
}

/// A breach of the YAML reader's size budget (a guard against documents built to exhaust memory)
/// in words, with the budget: the library's own text is its Debug form (`Nodes { nodes: 250001 }`).
fn budget_message(e: &serde_saphyr::Error) -> Option<String> {
    use serde_saphyr::budget::BudgetBreach as B;
    let mut err = e;
    while let serde_saphyr::Error::WithSnippet { error, .. }
    | serde_saphyr::Error::AliasError { error, .. } = err
    {
        err = error;
    }
    let serde_saphyr::Error::Budget { breach, .. } = err else {
        return None;
    };
    let b = serde_saphyr::Budget::default();
    let n = thousands;
    let what = match breach {
        B::Nodes { nodes } => format!(
            "{} nodes (mappings, sequences and scalars) so far; at most {} are read",
            n(*nodes as u64),
            n(b.max_nodes as u64)
        ),
        B::Events { events } => format!(
            "{} parser events so far; at most {} are read",
            n(*events as u64),
            n(b.max_events as u64)
        ),
        B::Depth { depth } => format!(
            "nesting {depth} deep; at most {} levels of mappings and sequences are read",
            b.max_depth
        ),
        B::Aliases { aliases } => format!(
            "{} aliases (*name); at most {} are read",
            n(*aliases as u64),
            n(b.max_aliases as u64)
        ),
        B::Anchors { anchors } => format!(
            "{} anchors (&name); at most {} are read",
            n(*anchors as u64),
            n(b.max_anchors as u64)
        ),
        B::Documents { documents } => format!(
            "{} documents; a pipeline is one document (at most {} are read)",
            n(*documents as u64),
            n(b.max_documents as u64)
        ),
        B::ScalarBytes { total_scalar_bytes } => format!(
            "{} bytes of scalar text; at most {} are read",
            n(*total_scalar_bytes as u64),
            n(b.max_total_scalar_bytes as u64)
        ),
        B::InputBytes { input_bytes } => format!(
            "{} bytes; at most {} are read",
            n(*input_bytes as u64),
            n(b.max_reader_input_bytes.unwrap_or(0) as u64)
        ),
        B::MergeKeys { merge_keys } => format!(
            "{} merge keys (<<); at most {} are read",
            n(*merge_keys as u64),
            n(b.max_merge_keys as u64)
        ),
        B::AliasAnchorRatio { aliases, anchors } => format!(
            "{aliases} aliases to {anchors} anchors (more than {} per anchor)",
            b.alias_anchor_ratio_multiplier
        ),
        other => format!("{other:?}"),
    };
    Some(format!(
        "too large to read as a pipeline: {what} (the YAML reader's budget, a guard against \
         documents made to exhaust memory)"
    ))
}

/// `1234567` → `1,234,567`.
pub(crate) fn thousands(v: u64) -> String {
    let digits = v.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_over_the_node_budget_is_named_in_words() {
        let text = format!("model:\n  config: [{}]\n", vec!["0"; 250_001].join(", "));
        let e = parse_yaml::<serde_json::Value>(Path::new("p.yaml"), &text).unwrap_err();
        let msg = e.to_string();
        assert_eq!(e.0.len(), 1, "{msg}");
        assert!(
            msg.starts_with("p.yaml") && msg.contains("too large to read as a pipeline"),
            "{msg}"
        );
        assert!(msg.contains("at most 250,000 are read"), "{msg}");
        assert!(!msg.contains("Nodes {"), "{msg}");
        // A small document is no problem.
        assert!(parse_yaml::<serde_json::Value>(Path::new("p.yaml"), "a: [1, 2]\n").is_ok());
    }

    #[test]
    fn pretraining_pipelines_are_told_by_their_data_section() {
        let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut kinds = Vec::new();
        for entry in std::fs::read_dir(&configs).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let kind = pipeline_kind(&std::fs::read_to_string(&path).unwrap());
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                assert_eq!(
                    kind == PipelineKind::Pretrain,
                    name.contains("pretrain"),
                    "{name}"
                );
                kinds.push(kind);
            }
        }
        assert!(kinds.contains(&PipelineKind::Run) && kinds.contains(&PipelineKind::Pretrain));
        for (text, kind) in [
            ("data: {source: folder}\n", PipelineKind::Pretrain),
            ("run: {data: 1}\n", PipelineKind::Run),
            ("- data\n", PipelineKind::Run),
            ("data: [unclosed\n", PipelineKind::Run),
        ] {
            assert_eq!(pipeline_kind(text), kind, "{text}");
        }
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(250_001), "250,001");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
