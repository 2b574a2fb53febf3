//! What validation shares: the one list of problems every section pushes into (`Problems`, each
//! naming its field), the rule for names, and the folder relative paths resolve against.

use std::path::{Path, PathBuf};

use crate::limits::canonical;
use crate::ConfigError;

/// Problems found so far, each naming its field.
pub(super) struct Problems<'a> {
    file: &'a Path,
    pub(super) list: Vec<ConfigError>,
}

impl<'a> Problems<'a> {
    /// No problems yet, in `file`.
    pub(super) fn new(file: &'a Path) -> Self {
        Self {
            file,
            list: Vec::new(),
        }
    }

    pub(super) fn push(&mut self, field: impl AsRef<str>, message: impl Into<String>) {
        self.list
            .push(ConfigError::field(self.file, field.as_ref(), message));
    }

    /// `v` must be finite and satisfy `ok`; `rule` says what is expected.
    pub(super) fn real(
        &mut self,
        field: impl AsRef<str>,
        v: f64,
        ok: impl Fn(f64) -> bool,
        rule: &str,
    ) {
        if !(v.is_finite() && ok(v)) {
            self.push(field, format!("must be {rule}, got {v}"));
        }
    }

    /// `v` must be at most `max`; `what` says what it counts. False when it is not.
    pub(super) fn at_most(
        &mut self,
        field: impl AsRef<str>,
        v: usize,
        max: usize,
        what: &str,
    ) -> bool {
        if v > max {
            self.push(
                field,
                format!(
                    "must be ≤ {} ({what}), got {}",
                    crate::thousands(max as u64),
                    crate::thousands(v as u64)
                ),
            );
        }
        v <= max
    }

    pub(super) fn at_least(&mut self, field: impl AsRef<str>, v: usize, min: usize) {
        if v < min {
            let rule = if min == 1 {
                "positive".to_string()
            } else {
                format!("≥ {min}")
            };
            self.push(field, format!("must be {rule}, got {v}"));
        }
    }
}

/// A name of a reward or a run: letters, digits, '.', '_' and '-'.
pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The folder relative paths resolve against: the YAML file's, absolute and in one spelling.
pub(super) struct Base(PathBuf);

impl Base {
    pub(super) fn of(abs_file: &Path) -> Self {
        Self(canonical(abs_file.parent().unwrap_or(Path::new("."))))
    }

    /// The folder itself.
    pub(super) fn dir(&self) -> &Path {
        &self.0
    }

    /// `rel` resolved against the folder.
    pub(super) fn at(&self, rel: &Path) -> PathBuf {
        canonical(&self.0.join(rel))
    }
}
