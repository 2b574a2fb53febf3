//! The wasmtime side of loading a component: the process's engines (with and without fuel) and
//! their epoch tickers, the on-disk cache of compiled components, and the `hrf:reward` version
//! check.

use std::path::PathBuf;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine};

use super::settings::{PACKAGE, SUPPORTED_VERSIONS, TICK};

/// The process's engine for plugins without fuel, or (`metered`) the one for plugins with a
/// `fuel:` budget. Fuel metering is compiled into every function and costs time on every call,
/// so plugins that did not ask for it run on an engine without it; both engines interrupt by
/// epoch (the timeout) and are made once per process, each with its epoch ticker.
pub(super) fn engine(metered: bool) -> &'static Engine {
    static PLAIN: OnceLock<Engine> = OnceLock::new();
    static METERED: OnceLock<Engine> = OnceLock::new();
    (if metered { &METERED } else { &PLAIN }).get_or_init(|| {
        let mut c = Config::new();
        c.wasm_component_model(true)
            .epoch_interruption(true)
            .consume_fuel(metered);
        let engine = Engine::new(&c).expect("wasmtime engine");
        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("hrf-wasm-epoch".into())
            .spawn(move || {
                while let Some(e) = ticker.upgrade() {
                    e.increment_epoch();
                    drop(e);
                    std::thread::sleep(TICK);
                }
            })
            .expect("epoch thread");
        engine
    })
}

/// Where compiled components are cached: `HRF_CACHE_DIR`, else `$XDG_CACHE_HOME/hrf`, else
/// `~/.cache/hrf`; `wasm/` inside it.
pub fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("HRF_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("hrf")))
        .or_else(|| std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/hrf")))?;
    Some(base.join("wasm"))
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compiles `bytes`, or loads the compiled form cached under the hash of the bytes and of this
/// engine's settings (wasmtime checks its own version and settings again when loading).
pub(super) fn compile(engine: &Engine, bytes: &[u8]) -> Result<Component, String> {
    if !bytes.starts_with(b"\0asm") {
        return Err(format!(
            "not a WebAssembly file ({} bytes that do not start with the \\0asm magic; build the plugin for wasm32-wasip2)",
            bytes.len()
        ));
    }
    let mut h = Sha256::new();
    h.update(bytes);
    let mut settings = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut settings);
    h.update(std::hash::Hasher::finish(&settings).to_le_bytes());
    let key = hex(&h.finalize());
    let cached = cache_dir().map(|d| d.join(format!("{key}.cwasm")));
    if let Some(path) = cached.as_ref().filter(|p| p.exists()) {
        // SAFETY: the file is one this host wrote from a component it compiled itself, named by
        // the hash of the source and of the engine's settings; wasmtime refuses files made by
        // another version or configuration.
        if let Ok(c) = unsafe { Component::deserialize_file(engine, path) } {
            return Ok(c);
        }
    }
    let component = Component::new(engine, bytes).map_err(|e| {
        // (wasmtime's parse errors can span lines and quote bytes: one clean, bounded line)
        format!(
            "not a valid component: {}",
            hrf_core::text::message(&format!("{e:#}"))
        )
    })?;
    if let (Some(path), Ok(compiled)) = (cached, component.serialize()) {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        // One temporary file per writer (threads of a process may compile the same component).
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
        if std::fs::write(&tmp, compiled).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
    Ok(component)
}

/// The `hrf:reward` version a component exports its reward from, checked against
/// [`SUPPORTED_VERSIONS`].
pub(super) fn check_version(engine: &Engine, component: &Component) -> Result<String, String> {
    let ty = component.component_type();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    let prefix = format!("{PACKAGE}/reward@");
    let Some(name) = exports.iter().find(|n| n.starts_with(&prefix)) else {
        return Err(format!(
            "exports no {PACKAGE}/reward interface (exports: {}); build it from the WIT in wit/",
            if exports.is_empty() {
                "none".to_string()
            } else {
                exports.join(", ")
            }
        ));
    };
    let version = name[prefix.len()..].to_string();
    if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
        return Err(format!(
            "targets {PACKAGE}@{version}; this hrf runs {PACKAGE}@{}",
            SUPPORTED_VERSIONS.join(", @")
        ));
    }
    Ok(version)
}
