//! `--set key.path=value` overrides of a pipeline file, shared by `hrf run`, `hrf validate` and
//! `hrf pretrain`: applied to the parsed document, and every error carried back to its place in
//! the file or to the override that caused it.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::span::SpanIndex;
use crate::{parse_yaml, ConfigError, ConfigErrors};

/// Parses `text` (read from `file`) as a `T` with `sets` applied, then `validate`s it; every
/// error names its place in the file, or the override that set the field.
pub fn parse_validated<T: DeserializeOwned, V>(
    file: &Path,
    text: &str,
    sets: &[String],
    validate: impl FnOnce(T) -> Result<V, ConfigErrors>,
) -> Result<V, ConfigErrors> {
    let index = SpanIndex::of(text);
    let (raw, overridden) = if sets.is_empty() {
        (parse_yaml::<T>(file, text)?, Vec::new())
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
        // JSON is YAML: parse the merged document as text so that serde errors still name
        // their place, then carry that place back to the file (or to the override).
        let merged = serde_json::to_string_pretty(&doc).expect("plain data");
        let raw = parse_yaml::<T>(file, &merged).map_err(|e| {
            let merged_index = SpanIndex::of(&merged);
            ConfigErrors(
                e.0.into_iter()
                    .map(|mut err| {
                        let path = err
                            .line
                            .and_then(|l| merged_index.path_at_line(l))
                            .map(str::to_string);
                        err.line = None;
                        err.column = None;
                        if let Some(p) = path.filter(|p| !p.is_empty()) {
                            err.field = Some(p);
                        }
                        err
                    })
                    .collect(),
            )
        });
        let raw = raw.map_err(|e| locate(e, &index, &overridden))?;
        (raw, overridden)
    };
    validate(raw).map_err(|e| locate(e, &index, &overridden))
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
