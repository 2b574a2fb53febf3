//! A WASM reward's settings (one validated `kind: wasm` entry) and the host's fixed bounds: the
//! `hrf:reward` versions it runs, the epoch tick, output buffers, grace periods, hostcall bytes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Versions of `hrf:reward` this host runs. Released versions are frozen.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.1.0"];
/// The package every plugin exports its `reward` interface from.
pub const PACKAGE: &str = "hrf:reward";

/// How often the engine's epoch advances: the resolution of call timeouts.
pub(super) const TICK: Duration = Duration::from_millis(10);
/// Bytes of guest stdout/stderr a store buffers; past half of it the store is rebuilt before the
/// next call, so a chatty plugin is never stopped by its own output. What reaches the log is
/// bounded by [`hrf_core::text`] (per line, per call, per run).
pub(super) const OUTPUT_BUFFER: usize = 1 << 20;
/// How long past its timeout a call may take before the host abandons it (a guest blocked in a
/// host call, which the epoch deadline cannot interrupt).
pub const GRACE: Duration = Duration::from_millis(250);
/// How often a waiting caller looks at the stop request.
pub(super) const POLL: Duration = Duration::from_millis(20);
/// Bytes a guest may hand the host in one crossing (a call's result, a log message, a model's
/// input): wasmtime's hostcall fuel; more traps.
pub const HOSTCALL_BYTES: usize = 128 << 20;
/// Abandoned, still blocked workers one plugin may have before its calls are refused.
pub const MAX_STUCK: usize = 4;

/// One `kind: wasm` entry of `rewards:`, validated.
#[derive(Debug, Clone)]
pub struct WasmSettings {
    /// The entry's name (used in every error and log line).
    pub name: String,
    pub path: PathBuf,
    /// The entry's `config:`, handed to the plugin's `configure` as JSON.
    pub config: serde_json::Value,
    pub timeout: Duration,
    pub memory_bytes: usize,
    /// Fuel per call (instructions, roughly); `None`: unlimited.
    pub fuel: Option<u64>,
    /// Lower-case hex sha256 the component file must have.
    pub sha256: Option<String>,
    /// Seeds the guest's insecure randomness, so runs stay reproducible.
    pub seed: u64,
    /// ONNX models the plugin may run through the host interface, by name.
    pub models: BTreeMap<String, PathBuf>,
}
