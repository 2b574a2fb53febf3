//! Native reward plugins: shared libraries implementing the C ABI of
//! `plugins/native/include/hrf_reward.h` (its Rust types: hrf-abi), loaded with libloading. They
//! run with the host's rights, so hrf loads one only when its pipeline entry says `trust: native`
//! and the command line says `--allow-native`. The ABI version function is checked first, then
//! the table's version and the sizes of both structs, then that none of its function pointers is
//! NULL; errors come back through `last_error`, never by unwinding. The library is opened by an
//! absolute path (a relative one is taken from the current folder; a pipeline's are already
//! resolved against the pipeline file), never looked up on the dynamic loader's search path.
//! Strings from the library are read up to a bound and pass [`hrf_core::text`] like any
//! plugin's text.

use std::ffi::{c_char, c_void, CString};
use std::path::PathBuf;

use hrf_abi::{
    AbiVersionFn, DestroyFn, LastErrorFn, Sample as CSample, ScoreFn, TableFn, ABI_VERSION_SYMBOL,
    SAMPLE_SIZE, TABLE_SIZE, TABLE_SYMBOL,
};
use hrf_core::text;
use hrf_core::{Reward, RewardError, RewardInfo, Sample, Score};

use crate::PluginError;

/// The ABI version this host speaks (`HRF_REWARD_ABI_VERSION`).
pub use hrf_abi::ABI_VERSION;

/// The table's functions, every one checked non-NULL.
#[derive(Clone, Copy)]
struct Functions {
    score: ScoreFn,
    last_error: LastErrorFn,
    destroy: DestroyFn,
}

/// One `kind: native` entry, validated.
#[derive(Debug, Clone)]
pub struct NativeSettings {
    pub name: String,
    pub path: PathBuf,
    pub config: serde_json::Value,
    /// The entry says `trust: native`.
    pub trusted_by_pipeline: bool,
    /// The command line says `--allow-native`.
    pub allowed_by_command_line: bool,
}

/// A loaded native plugin.
pub struct NativeReward {
    settings: NativeSettings,
    functions: Functions,
    state: *mut c_void,
    info: RewardInfo,
    // Declared last: dropped after `state` is destroyed (see Drop).
    _library: libloading::Library,
}

// SAFETY: the plugin's state is used from one thread at a time (`&mut self`), which the ABI
// allows; the table is immutable.
unsafe impl Send for NativeReward {}

/// Bytes of a string from the library read at most (it need not be NUL-terminated within them).
const MAX_C_STRING: usize = 64 << 10;

/// A string from the library, cut and cleaned ([`text::clean_bytes`]); `None` when NULL.
fn c_text(p: *const c_char, max: usize) -> Option<String> {
    if p.is_null() {
        return None;
    }
    let mut bytes = Vec::new();
    // SAFETY: the ABI promises NUL-terminated strings valid until the plugin's next call; no
    // more than MAX_C_STRING bytes are read, so an unterminated one is not read without end.
    unsafe {
        while bytes.len() < MAX_C_STRING {
            let b = *p.add(bytes.len()) as u8;
            if b == 0 {
                break;
            }
            bytes.push(b);
        }
    }
    Some(text::clean_bytes(&bytes, max))
}

/// What `last_error` said, or a clear note that it said nothing.
fn reason(p: *const c_char) -> String {
    match c_text(p, text::MAX_MESSAGE) {
        None => "no reason given (the plugin's last_error returned NULL)".into(),
        Some(s) if s.trim().is_empty() => {
            "no reason given (the plugin's last_error returned an empty string)".into()
        }
        Some(s) => s,
    }
}

impl NativeReward {
    pub fn load(settings: NativeSettings) -> Result<Self, PluginError> {
        let err = crate::load_err(&settings.name, &settings.path);
        match (
            settings.trusted_by_pipeline,
            settings.allowed_by_command_line,
        ) {
            (true, true) => {}
            (t, a) => {
                let mut missing = Vec::new();
                if !t {
                    missing.push("`trust: native` in its pipeline entry");
                }
                if !a {
                    missing.push("`--allow-native` on the command line");
                }
                return Err(err(format!(
                    "a native plugin runs with all of hrf's rights, so it needs {}",
                    missing.join(" and ")
                )));
            }
        }
        // An absolute path, so that dlopen never searches LD_LIBRARY_PATH and the system folders.
        let path = std::path::absolute(&settings.path)
            .map_err(|e| err(format!("cannot be resolved: {e}")))?;
        if !path.is_file() {
            return Err(err(format!(
                "{} not found (a relative path is taken from the current folder, or from the \
                 pipeline file's in a pipeline; the loader's search path is never used)",
                path.display()
            )));
        }
        // SAFETY: loading runs the library's initialisers: that is the trust both opt-ins grant.
        let library = unsafe { libloading::Library::new(&path) }
            .map_err(|e| err(format!("cannot be loaded: {e}")))?;
        // SAFETY: the symbols' types are those of hrf_reward.h (hrf-abi, checked against it); the
        // version function is checked before anything else is used.
        let table = unsafe {
            let version: libloading::Symbol<AbiVersionFn> =
                library.get(ABI_VERSION_SYMBOL.as_bytes()).map_err(|e| {
                    err(format!(
                        "not an hrf native plugin (no {ABI_VERSION_SYMBOL}): {e}"
                    ))
                })?;
            let v = version();
            if v != ABI_VERSION {
                return Err(err(format!(
                    "ABI version {v}; this hrf speaks native ABI version {ABI_VERSION} (rebuild it against plugins/native/include/hrf_reward.h)"
                )));
            }
            let get: libloading::Symbol<TableFn> = library
                .get(TABLE_SYMBOL.as_bytes())
                .map_err(|e| err(format!("no {TABLE_SYMBOL}: {e}")))?;
            get()
        };
        if table.is_null() {
            return Err(err(format!("{TABLE_SYMBOL} returned NULL")));
        }
        // SAFETY: non-null, and valid while the library is loaded (the ABI's promise).
        let t = unsafe { &*table };
        let sizes = (TABLE_SIZE, SAMPLE_SIZE);
        if t.abi_version != ABI_VERSION || (t.table_size, t.sample_size) != sizes {
            return Err(err(format!(
                "ABI mismatch: table says version {}, table {} bytes, sample {} bytes; this hrf expects version {ABI_VERSION}, {} and {} bytes",
                t.abi_version, t.table_size, t.sample_size, sizes.0, sizes.1
            )));
        }
        let null: Vec<&str> = [
            ("create", t.create.is_none()),
            ("score", t.score.is_none()),
            ("last_error", t.last_error.is_none()),
            ("destroy", t.destroy.is_none()),
        ]
        .into_iter()
        .filter_map(|(field, null)| null.then_some(field))
        .collect();
        let (Some(create), Some(score), Some(last_error), Some(destroy)) =
            (t.create, t.score, t.last_error, t.destroy)
        else {
            return Err(err(format!(
                "its function table holds NULL for {}: refusing to load it",
                null.iter()
                    .map(|f| format!("`{f}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        let config = CString::new(settings.config.to_string())
            .map_err(|_| err("config holds a NUL character".into()))?;
        // SAFETY: per the ABI; `config` outlives the call.
        let state = unsafe { create(config.as_ptr()) };
        if state.is_null() {
            // SAFETY: last_error(NULL) reports create's failure.
            let why = reason(unsafe { last_error(std::ptr::null_mut()) });
            return Err(err(format!("create failed: {why}")));
        }
        let field = |p| c_text(p, text::MAX_NAME).unwrap_or_else(|| "?".into());
        let info = RewardInfo {
            name: settings.name.clone(),
            version: format!("{} {}", field(t.name), field(t.version)),
            higher_is_better: t.higher_is_better != 0,
            batch_hint: (t.batch_hint > 0).then_some(t.batch_hint),
        };
        Ok(NativeReward {
            settings,
            functions: Functions {
                score,
                last_error,
                destroy,
            },
            state,
            info,
            _library: library,
        })
    }
}

impl Reward for NativeReward {
    fn info(&self) -> RewardInfo {
        self.info.clone()
    }

    fn score(&mut self, samples: &[Sample]) -> Result<Vec<Score>, RewardError> {
        let called = self.call_score(samples);
        crate::finish_score(
            &self.info,
            format_args!("native plugin {}", self.settings.path.display()),
            samples.len(),
            called,
        )
    }
}

impl NativeReward {
    /// One `score` call through the table; the plugin's `last_error` on failure.
    fn call_score(&mut self, samples: &[Sample]) -> Result<Vec<Score>, String> {
        let strings: Vec<(Option<CString>, CString)> = samples
            .iter()
            .map(|s| {
                (
                    s.prompt
                        .as_ref()
                        .map(|p| CString::new(p.replace('\0', " ")).unwrap_or_default()),
                    CString::new(s.metadata.to_string()).unwrap_or_default(),
                )
            })
            .collect();
        let c: Vec<CSample> = samples
            .iter()
            .zip(&strings)
            .map(|(s, (prompt, meta))| CSample {
                width: s.image.width(),
                height: s.image.height(),
                channels: s.image.channels().count() as u32,
                data: s.image.data().as_ptr(),
                prompt: prompt.as_ref().map_or(std::ptr::null(), |p| p.as_ptr()),
                metadata_json: meta.as_ptr(),
            })
            .collect();
        let mut out = vec![f32::NAN; samples.len()];
        // SAFETY: the functions and `state` are live; `c`, `strings` and `samples` outlive the call;
        // `out` has room for one score per sample.
        let rc =
            unsafe { (self.functions.score)(self.state, c.as_ptr(), c.len(), out.as_mut_ptr()) };
        if rc != 0 {
            // SAFETY: per the ABI.
            let why = reason(unsafe { (self.functions.last_error)(self.state) });
            return Err(format!("score failed ({rc}): {why}"));
        }
        Ok(out.into_iter().map(Score::new).collect())
    }
}

impl Drop for NativeReward {
    fn drop(&mut self) {
        // SAFETY: `state` came from create and is destroyed once, before the library unloads.
        unsafe { (self.functions.destroy)(self.state) };
    }
}
