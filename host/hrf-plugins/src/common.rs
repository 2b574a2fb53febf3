//! What every plugin kind shares: the load error, the stop grace, the plugin log's lock, and how
//! a call's outcome becomes scores (the provisional info, extras kept, one score per sample).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use hrf_core::text::{self, PluginLog};
use hrf_core::{RewardError, RewardInfo, Score};

/// How long a call may still take once a stop is requested (Ctrl-C, SIGTERM) before it is
/// abandoned: a healthy call finishes, a blocked one does not hold up the stop.
pub const STOP_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("plugin {plugin} ({path}): {message}")]
    Load {
        plugin: String,
        path: PathBuf,
        message: String,
    },
}

/// The plugin's log, even if a worker panicked while holding it.
pub(crate) fn lock(log: &Mutex<PluginLog>) -> std::sync::MutexGuard<'_, PluginLog> {
    log.lock().unwrap_or_else(|p| p.into_inner())
}

/// The error of loading plugin `name` from `path`, for any message (shared by every kind).
pub(crate) fn load_err(name: &str, path: &Path) -> impl Fn(String) -> PluginError + Clone {
    let (plugin, path) = (name.to_string(), path.to_path_buf());
    move |message| PluginError::Load {
        plugin: plugin.clone(),
        path: path.clone(),
        message,
    }
}

/// A plugin call's outcome as [`Reward::score`] returns it: a failure names the plugin (`source`:
/// its kind and where it comes from, e.g. `wasm plugin PATH`), and there must be one score per
/// sample (values are the reward set's to check: `on_error`). Shared by every kind.
pub(crate) fn finish_score(
    info: &RewardInfo,
    source: std::fmt::Arguments<'_>,
    samples: usize,
    called: Result<Vec<Score>, String>,
) -> Result<Vec<Score>, RewardError> {
    let scores = called.map_err(|message| RewardError::Failed {
        reward: format!("{} ({source})", info.label()),
        message,
    })?;
    hrf_core::check_count(info, samples, &scores)?;
    Ok(scores)
}

/// What a plugin is known as before it has described itself.
pub(crate) fn provisional_info(name: &str) -> RewardInfo {
    RewardInfo {
        name: name.to_string(),
        version: "?".into(),
        higher_is_better: true,
        batch_hint: None,
    }
}

/// A plugin's scores as the host keeps them: extras' names cleaned ([`text::name`]), extras
/// with a non-finite value or past [`text::MAX_EXTRAS`] per sample dropped. Returns the scores
/// and a line saying what was dropped, if anything was. Shared by every kind.
pub(crate) fn kept_scores(
    raw: impl IntoIterator<Item = (f32, Vec<(String, f32)>)>,
) -> (Vec<Score>, Option<String>) {
    let (mut non_finite, mut over) = (0usize, 0usize);
    let scores = raw
        .into_iter()
        .map(|(value, extras)| {
            let mut kept = BTreeMap::new();
            for (name, v) in extras {
                if !v.is_finite() {
                    non_finite += 1;
                } else if kept.len() >= text::MAX_EXTRAS {
                    over += 1;
                } else {
                    kept.insert(text::name(&name), v);
                }
            }
            Score {
                value,
                extras: kept,
            }
        })
        .collect();
    let said = (non_finite + over > 0).then(|| {
        format!(
            "extras dropped: {non_finite} with a non-finite value, {over} past {} per sample",
            text::MAX_EXTRAS
        )
    });
    (scores, said)
}
