//! What separates a usage or configuration error (exit code 2) from a failed run (1).

/// A problem with what the user asked for (exit code 2), as opposed to a failed run (1).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

impl From<hrf_config::ConfigErrors> for UsageError {
    fn from(e: hrf_config::ConfigErrors) -> Self {
        Self(e.to_string())
    }
}
