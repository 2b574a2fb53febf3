//! `--set key.path=value` overrides of a pipeline file, shared by `hrf run`, `hrf validate` and
//! `hrf pretrain`: applied to the parsed document, and every error carried back to its place in
//! the file or to the override that caused it.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::span::SpanIndex;
use crate::{parse_yaml, ConfigError, ConfigErrors};

/// Parses `text` (read from `file`) as a `T` with `sets` applied, then `validate`s it; every
/// error names its place in the file, or the override that set the field. With `schema` (the
/// JSON Schema of `T`), a failed parse reports every unknown key and wrong type at once
/// (`check`), not only the first.
pub fn parse_validated<T: DeserializeOwned, V>(
    file: &Path,
    text: &str,
    sets: &[String],
    schema: Option<&Value>,
    validate: impl FnOnce(T) -> Result<V, ConfigErrors>,
) -> Result<V, ConfigErrors> {
    let index = SpanIndex::of(text);
    let (raw, overridden) = if sets.is_empty() {
        let raw = parse_yaml::<T>(file, text).map_err(|e| {
            // Placed in the file: the place says it all, as the parser's own errors do.
            let mut e = every_problem(file, text, e, schema);
            for err in &mut e.0 {
                if err.line.is_some() {
                    err.field = None;
                }
            }
            e
        })?;
        (raw, Vec::new())
    } else {
        let mut doc: Value = parse_yaml(file, text)?;
        if doc.is_null() {
            doc = Value::Object(Map::new());
        }
        let mut problems = Vec::new();
        let mut overridden = Vec::new();
        for set in sets {
            match apply_set(&mut doc, set) {
                Ok(path) => overridden.push(path),
                Err(message) => problems.push(ConfigError::field(
                    file,
                    "--set",
                    format!("{set:?}: {message}"),
                )),
            }
        }
        if !problems.is_empty() {
            return Err(ConfigErrors(problems));
        }
        // Read straight from the merged document (as the YAML reader reads it written as
        // JSON); each error names its field, and `locate` carries that to the field's place in
        // the file, or leaves it to the override that set it.
        let raw = crate::value_reader::from_value::<T>(&doc).map_err(|(path, message)| {
            let first = ConfigError {
                file: file.to_path_buf(),
                line: None,
                column: None,
                field: (!path.is_empty()).then_some(path),
                message,
            };
            every_problem_in(file, &doc, first, schema)
        });
        let raw = raw.map_err(|e| locate(e, &index, &overridden))?;
        (raw, overridden)
    };
    validate(raw).map_err(|e| locate(e, &index, &overridden))
}

/// `parse_error` (the typed parse's first error in `text`) and every other problem the schema
/// pass (`check`) finds from its place on, each with its field path and place in `text`. The
/// typed parse reads the document in order, so what lies before its first error it accepted:
/// the pass's findings there are left out, and so is a finding at the parser's own place
/// (its error says it). Without a schema, or when the pass finds nothing, `parse_error` alone.
fn every_problem(
    file: &Path,
    text: &str,
    parse_error: ConfigErrors,
    schema: Option<&Value>,
) -> ConfigErrors {
    let Some(schema) = schema else {
        return parse_error;
    };
    let Some(first) = parse_error.0.first().cloned() else {
        return parse_error;
    };
    let start = (first.line.unwrap_or(0), first.column.unwrap_or(0));
    let mut list: Vec<ConfigError> = crate::check::problems(schema, text)
        .into_iter()
        .filter(|f| (f.line, f.column) > start)
        .filter(|f| f.message != first.message)
        .map(|f| ConfigError {
            file: file.to_path_buf(),
            line: Some(f.line),
            column: Some(f.column),
            field: (!f.path.is_empty()).then_some(f.path),
            message: f.message,
        })
        .collect();
    if list.is_empty() {
        return parse_error;
    }
    list.insert(0, first);
    ConfigErrors(list)
}

/// `first` (the typed read's first error in the merged document `doc`, named by its field) and
/// every other problem the schema pass (`check`) finds in `doc` after that field, in the
/// document's order, each named by its field and without a place (`locate` gives them theirs).
/// As in `every_problem`, what the typed read accepted before its first error is left out, and
/// so is a finding with `first`'s message.
fn every_problem_in(
    file: &Path,
    doc: &Value,
    first: ConfigError,
    schema: Option<&Value>,
) -> ConfigErrors {
    let Some(schema) = schema else {
        return ConfigErrors(vec![first]);
    };
    let tree = crate::span::tree_of_value(doc);
    let start = SpanIndex::of_tree(&tree)
        .get(first.field.as_deref().unwrap_or(""))
        .unwrap_or((0, 0));
    let mut list: Vec<ConfigError> = crate::check::problems_in(schema, &tree)
        .into_iter()
        .filter(|f| (f.line, f.column) > start)
        .filter(|f| f.message != first.message)
        .map(|f| ConfigError {
            file: file.to_path_buf(),
            line: None,
            column: None,
            field: (!f.path.is_empty()).then_some(f.path),
            message: f.message,
        })
        .collect();
    list.insert(0, first);
    ConfigErrors(list)
}

/// Gives each error that names a field, and has no place yet, the place of that field (or of its
/// nearest written ancestor) in the file, unless an override set it.
fn locate(errors: ConfigErrors, index: &SpanIndex, overridden: &[String]) -> ConfigErrors {
    let is_overridden = |field: &str| {
        overridden.iter().any(|o| {
            field == o
                || field
                    .strip_prefix(o.as_str())
                    .is_some_and(|rest| rest.starts_with(['.', '[']))
        })
    };
    let mut errors: Vec<ConfigError> = errors
        .0
        .into_iter()
        .map(|mut e| {
            if e.line.is_none() {
                if let Some(f) = e.field.as_deref().filter(|f| *f != "--set") {
                    if !is_overridden(f) {
                        if let Some((l, c)) = index.get(f) {
                            e.line = Some(l);
                            e.column = Some(c);
                        }
                    }
                }
            }
            e
        })
        .collect();
    // In the file's order; those without a place (overrides) last.
    errors.sort_by_key(|e| (e.line.is_none(), e.line, e.column));
    ConfigErrors(errors)
}

/// One `--set key.path=value`: the value is YAML (`3e-4`, `[a, b]`, `{column: 1}`, text);
/// missing mappings on the way are created; `rewards.0.weight` and `rewards[0].weight` index a
/// list. Returns the canonical path it set.
fn apply_set(doc: &mut Value, set: &str) -> Result<String, String> {
    let (path, value) = set
        .split_once('=')
        .ok_or("expected key.path=value (no `=`)")?;
    let path = path.trim();
    if path.is_empty() {
        return Err("empty key path".into());
    }
    let segments: Vec<&str> = path.split(['.', '[']).collect();
    let segments: Vec<&str> = segments
        .iter()
        .map(|s| s.strip_suffix(']').unwrap_or(s))
        .collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(format!("malformed key path {path:?}"));
    }
    let value: Value = if value.trim().is_empty() {
        Value::Null
    } else {
        serde_saphyr::from_str(value).map_err(|e| format!("the value is not YAML: {e}"))?
    };
    let mut canonical = String::new();
    let mut cur = doc;
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        if cur.is_null() {
            *cur = Value::Object(Map::new());
        }
        let here = if canonical.is_empty() {
            "the document".to_string()
        } else {
            canonical.clone()
        };
        cur = match cur {
            Value::Object(m) => {
                if !canonical.is_empty() {
                    canonical.push('.');
                }
                canonical.push_str(seg);
                m.entry(seg.to_string()).or_insert(Value::Null)
            }
            Value::Array(items) => {
                let n = items.len();
                let idx = seg
                    .parse::<usize>()
                    .ok()
                    .filter(|&k| k < n)
                    .ok_or_else(|| format!("{here} is a list of {n}; {seg:?} is not an index"))?;
                canonical.push_str(&format!("[{idx}]"));
                &mut items[idx]
            }
            other => {
                return Err(format!(
                    "{here} is {}, not a mapping",
                    match other {
                        Value::Bool(_) => "a boolean",
                        Value::Number(_) => "a number",
                        _ => "text",
                    }
                ))
            }
        };
        if last {
            *cur = value;
            break;
        }
    }
    Ok(canonical)
}
