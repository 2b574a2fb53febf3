//! hrf-plugins: rewards written as WebAssembly components against the `hrf:reward` WIT package
//! (`wit/reward.wit`, docs/ARCHITECTURE.md §5), run sandboxed in wasmtime.
//!
//! One engine per process (component model, epoch interruption; a second one with fuel metering
//! for plugins given a `fuel:` budget), components compiled once and cached on disk, one store
//! per plugin, owned by a worker thread. Each call runs under an epoch deadline (the YAML's
//! timeout), a memory cap (`StoreLimits`, growth past it traps) and optional fuel, and the
//! caller waits for it at most the timeout plus [`GRACE`] (or until a stop is requested): a
//! guest blocked inside a host call is abandoned with its store (see [`WasmReward`]). The
//! guest's WASI context inherits nothing: no preopened directories, no environment, no sockets
//! or name lookups; clocks are real, insecure randomness is seeded from the run's seed; stdout
//! and stderr go to bounded buffers. Everything the guest says (log lines, output, error
//! messages, names, extras) passes [`hrf_core::text`] on its way in: cut, escaped, prefixed,
//! bounded per call and per run. A trap, a timeout or a broken store makes the call fail with
//! an error naming the plugin, and the next call starts from a fresh store. Native plugins (C
//! ABI, trusted only on two opt-ins) are in [`native`], child-process rewards in [`process`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hrf_core::text::{self, PluginLog};
use hrf_core::{Reward, RewardError, RewardInfo, Sample, Score};
use hrf_rewards::onnx::OnnxModel;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

pub mod native;
pub mod process;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "reward-plugin-onnx",
    });
}

use bindings::hrf::reward::{log, onnx, types};

/// Versions of `hrf:reward` this host runs. Released versions are frozen.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.1.0"];
/// The package every plugin exports its `reward` interface from.
pub const PACKAGE: &str = "hrf:reward";

/// How often the engine's epoch advances: the resolution of call timeouts.
const TICK: Duration = Duration::from_millis(10);
/// Bytes of guest stdout/stderr a store buffers; past half of it the store is rebuilt before the
/// next call, so a chatty plugin is never stopped by its own output. What reaches the log is
/// bounded by [`hrf_core::text`] (per line, per call, per run).
const OUTPUT_BUFFER: usize = 1 << 20;
/// How long past its timeout a call may take before the host abandons it (a guest blocked in a
/// host call, which the epoch deadline cannot interrupt).
pub const GRACE: Duration = Duration::from_millis(250);
/// How often a waiting caller looks at the stop request.
const POLL: Duration = Duration::from_millis(20);
/// How long a call may still take once a stop is requested (Ctrl-C, SIGTERM) before it is
/// abandoned: a healthy call finishes, a blocked one does not hold up the stop.
pub const STOP_GRACE: Duration = Duration::from_secs(1);
/// Bytes a guest may hand the host in one crossing (a call's result, a log message, a model's
/// input): wasmtime's hostcall fuel; more traps.
pub const HOSTCALL_BYTES: usize = 128 << 20;
/// Abandoned, still blocked workers one plugin may have before its calls are refused.
pub const MAX_STUCK: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("plugin {plugin} ({path}): {message}")]
    Load {
        plugin: String,
        path: PathBuf,
        message: String,
    },
}

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

/// The process's engine for plugins without fuel, or (`metered`) the one for plugins with a
/// `fuel:` budget. Fuel metering is compiled into every function and costs time on every call,
/// so plugins that did not ask for it run on an engine without it; both engines interrupt by
/// epoch (the timeout) and are made once per process, each with its epoch ticker.
fn engine(metered: bool) -> &'static Engine {
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compiles `bytes`, or loads the compiled form cached under the hash of the bytes and of this
/// engine's settings (wasmtime checks its own version and settings again when loading).
fn compile(engine: &Engine, bytes: &[u8]) -> Result<Component, String> {
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
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, compiled).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
    Ok(component)
}

/// The `hrf:reward` version a component exports its reward from, checked against
/// [`SUPPORTED_VERSIONS`].
fn check_version(engine: &Engine, component: &Component) -> Result<String, String> {
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

/// What a store holds for its plugin.
struct State {
    limits: StoreLimits,
    wasi: WasiCtx,
    table: ResourceTable,
    /// The plugin's output on its way to the log: shared with the caller, which owns the
    /// per-run budget; unused once the worker is abandoned.
    log: Arc<Mutex<PluginLog>>,
    /// Set by the caller when it gives up on this worker: nothing more is logged or sent.
    abandoned: Arc<AtomicBool>,
    events: Sender<Event>,
    /// The declared ONNX models, loaded once and shared by every store of the plugin.
    models: Arc<Mutex<BTreeMap<String, OnnxModel>>>,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The plugin's log, even if a worker panicked while holding it.
pub(crate) fn lock(log: &Mutex<PluginLog>) -> std::sync::MutexGuard<'_, PluginLog> {
    log.lock().unwrap_or_else(|p| p.into_inner())
}

impl State {
    /// Sends the lines `f` makes of the shared log to the caller, unless abandoned.
    fn emit(&self, f: impl FnOnce(&mut PluginLog) -> Vec<String>) {
        if self.abandoned.load(Ordering::SeqCst) {
            return;
        }
        let lines = f(&mut lock(&self.log));
        for line in lines {
            let _ = self.events.send(Event::Line(line));
        }
    }
}

impl log::Host for State {
    fn log(&mut self, level: log::Level, message: String) {
        let level = match level {
            log::Level::Debug => "debug",
            log::Level::Info => "info",
            log::Level::Warn => "warn",
            log::Level::Error => "error",
        };
        self.emit(|log| log.line(level, &message).into_iter().collect());
    }
}

impl types::Host for State {}

impl State {
    fn with_model<R>(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut OnnxModel) -> Result<R, String>,
    ) -> Result<R, String> {
        let mut models = self
            .models
            .lock()
            .map_err(|_| "model lock poisoned".to_string())?;
        let known: Vec<String> = models.keys().cloned().collect();
        let m = models.get_mut(name).ok_or_else(|| {
            format!(
                "no model {:?} declared in this plugin's `models:` (declared: {})",
                text::name(name),
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            )
        })?;
        f(m)
    }
}

impl onnx::Host for State {
    fn describe(&mut self, model: String) -> Result<onnx::ModelInfo, String> {
        self.with_model(&model, |m| {
            Ok(onnx::ModelInfo {
                inputs: m.input_names().to_vec(),
                outputs: m.output_names().to_vec(),
            })
        })
    }

    fn run(
        &mut self,
        model: String,
        inputs: Vec<onnx::NamedTensor>,
    ) -> Result<Vec<onnx::NamedTensor>, String> {
        let [input] = <[onnx::NamedTensor; 1]>::try_from(inputs).map_err(|v| {
            format!(
                "model {:?}: one input expected, got {}",
                text::name(&model),
                v.len()
            )
        })?;
        let shape: Vec<i64> = input.tensor.shape.iter().map(|&d| d as i64).collect();
        let want = input
            .tensor
            .shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d));
        if want != Some(input.tensor.data.len() as u64) {
            return Err(format!(
                "model {:?}: input {:?} has shape {:?} but {} values",
                text::name(&model),
                text::name(&input.name),
                input.tensor.shape,
                input.tensor.data.len()
            ));
        }
        self.with_model(&model, |m| {
            let names = m.output_names().to_vec();
            let outs = m
                .run(Some(&input.name), shape, input.tensor.data)
                .map_err(|e| e.to_string())?;
            Ok(names
                .into_iter()
                .zip(outs)
                .map(|(name, (shape, data))| onnx::NamedTensor {
                    name,
                    tensor: onnx::Tensor {
                        shape: shape.iter().map(|&d| d.max(0) as u64).collect(),
                        data,
                    },
                })
                .collect())
        })
    }
}

/// What a worker tells the caller.
enum Event {
    /// A line of the plugin's output (cleaned, prefixed, within budget), to print now.
    Line(String),
    /// The store is instantiated, `info` read and `configure` called (or why not).
    Started(Result<types::PluginInfo, String>),
    /// A `score` call's outcome; `retire`: the store is done (trapped, or its output buffers
    /// half full), the next call needs a new worker.
    Scored {
        result: Result<Vec<types::SampleScore>, String>,
        retire: bool,
    },
}

/// What a worker thread needs to build and drive its store.
struct WorkerCtx {
    settings: WasmSettings,
    pre: bindings::RewardPluginOnnxPre<State>,
    models: Arc<Mutex<BTreeMap<String, OnnxModel>>>,
    log: Arc<Mutex<PluginLog>>,
    abandoned: Arc<AtomicBool>,
    events: Sender<Event>,
}

/// A worker thread owning one store, and the caller's ends of its channels.
struct Worker {
    jobs: Sender<Vec<types::Sample>>,
    events: Receiver<Event>,
    abandoned: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

struct Live {
    store: Store<State>,
    plugin: bindings::RewardPluginOnnx,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
    /// Bytes of stdout/stderr already copied into the log.
    seen: (usize, usize),
}

/// A WASM reward plugin, ready to score.
///
/// Every call into the guest (instantiation, `info`, `configure`, `score`) runs on a worker
/// thread that owns the store, while the caller waits at most the timeout plus [`GRACE`], and
/// returns early on a stop request ([`hrf_core::interrupt`]). Guest code is stopped at the
/// timeout by the epoch deadline; a guest blocked inside a host call (a WASI sleep or poll) is
/// not reachable that way, so the caller abandons its worker (also [`STOP_GRACE`] after a stop
/// request): the call fails, the worker's
/// store is never used again (it only ends when the host call returns and the guest traps),
/// and the next call starts a new one. At most [`MAX_STUCK`] abandoned workers of one plugin
/// may be alive at once; past that its calls fail at once.
pub struct WasmReward {
    settings: WasmSettings,
    models: Arc<Mutex<BTreeMap<String, OnnxModel>>>,
    pre: bindings::RewardPluginOnnxPre<State>,
    info: RewardInfo,
    version: String,
    log: Arc<Mutex<PluginLog>>,
    worker: Option<Worker>,
    /// Abandoned workers, possibly still blocked.
    stuck: Vec<JoinHandle<()>>,
    /// A call was abandoned after a stop request: later calls fail at once.
    abandoned_on_stop: bool,
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

/// The guest's new stdout/stderr bytes, as log lines.
fn output_lines(live: &mut Live, log: &mut PluginLog) -> Vec<String> {
    let mut lines = Vec::new();
    for (pipe, seen, stream) in [
        (&live.stdout, &mut live.seen.0, "stdout"),
        (&live.stderr, &mut live.seen.1, "stderr"),
    ] {
        let all = pipe.contents();
        if all.len() > *seen {
            lines.extend(log.output(stream, &all[*seen..]));
            *seen = all.len();
        }
    }
    lines
}

impl WorkerCtx {
    fn new_store(&self) -> (Store<State>, MemoryOutputPipe, MemoryOutputPipe) {
        let s = &self.settings;
        let (stdout, stderr) = (
            MemoryOutputPipe::new(OUTPUT_BUFFER),
            MemoryOutputPipe::new(OUTPUT_BUFFER),
        );
        // Nothing inherited: no preopens, no environment, no arguments; no network at all.
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .insecure_random_seed(s.seed as u128)
            .build();
        let limits = StoreLimitsBuilder::new()
            .memory_size(s.memory_bytes)
            .instances(16)
            .tables(64)
            .memories(16)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(
            engine(s.fuel.is_some()),
            State {
                limits,
                wasi,
                table: ResourceTable::new(),
                log: self.log.clone(),
                abandoned: self.abandoned.clone(),
                events: self.events.clone(),
                models: self.models.clone(),
            },
        );
        store.limiter(|st| &mut st.limits);
        store.set_hostcall_fuel(HOSTCALL_BYTES);
        (store, stdout, stderr)
    }

    /// Arms the per-call limits: the epoch deadline and the fuel.
    fn arm(store: &mut Store<State>, timeout: Duration, fuel: Option<u64>) -> Result<(), String> {
        let ticks = (timeout.as_millis() / TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        match fuel {
            Some(fuel) => store.set_fuel(fuel).map_err(|e| format!("{e:#}")),
            None => Ok(()),
        }
    }

    /// Sends the guest's new output and the end-of-call line to the caller, unless abandoned.
    fn flush(&self, live: &mut Live) {
        if self.abandoned.load(Ordering::SeqCst) {
            return;
        }
        let lines = {
            let mut log = lock(&self.log);
            let mut lines = output_lines(live, &mut log);
            lines.extend(log.end_call());
            lines
        };
        for line in lines {
            let _ = self.events.send(Event::Line(line));
        }
    }

    /// Instantiates a fresh store, reads `info` and calls `configure`.
    fn start(&self) -> Result<(Live, types::PluginInfo), String> {
        let (mut store, stdout, stderr) = self.new_store();
        Self::arm(&mut store, self.settings.timeout, self.settings.fuel)?;
        let plugin = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| self.trap_message("instantiation", &e))?;
        let r = plugin.hrf_reward_reward();
        let info = r
            .call_info(&mut store)
            .map_err(|e| self.trap_message("info", &e))?;
        let config = self.settings.config.to_string();
        let configured = r
            .call_configure(&mut store, &config)
            .map_err(|e| self.trap_message("configure", &e))?;
        let mut live = Live {
            store,
            plugin,
            stdout,
            stderr,
            seen: (0, 0),
        };
        self.flush(&mut live);
        configured.map_err(|e| format!("configure: {}", describe(&e)))?;
        Ok((live, info))
    }

    fn trap_message(&self, call: &str, e: &wasmtime::Error) -> String {
        let s = &self.settings;
        if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
            return match trap {
                wasmtime::Trap::Interrupt => format!(
                    "{call}: timed out after {:.1} s (rewards.{}.timeout_s)",
                    s.timeout.as_secs_f64(),
                    s.name
                ),
                wasmtime::Trap::OutOfFuel => format!(
                    "{call}: ran out of fuel ({} units, rewards.{}.fuel)",
                    s.fuel.unwrap_or(0),
                    s.name
                ),
                _ => format!("{call}: trapped: {trap}"),
            };
        }
        // The cause without wasmtime's wasm backtrace.
        let text = text::message(&e.root_cause().to_string());
        if text.contains("memory") && text.contains("limit") || text.contains("grow") {
            format!(
                "{call}: exceeded its memory cap of {} MiB (rewards.{}.memory_mb): {text}",
                s.memory_bytes >> 20,
                s.name
            )
        } else {
            format!("{call}: trapped: {text}")
        }
    }

    /// The worker thread: starts the store, then scores each batch it is sent until the caller
    /// hangs up or the store is done.
    fn serve(self, jobs: Receiver<Vec<types::Sample>>) {
        let mut live = match self.start() {
            Ok((live, info)) => {
                let _ = self.events.send(Event::Started(Ok(info)));
                live
            }
            Err(e) => {
                let _ = self.events.send(Event::Started(Err(e)));
                return;
            }
        };
        for wire in jobs {
            let (timeout, fuel) = (self.settings.timeout, self.settings.fuel);
            if let Err(e) = Self::arm(&mut live.store, timeout, fuel) {
                let _ = self.events.send(Event::Scored {
                    result: Err(e),
                    retire: true,
                });
                return;
            }
            let out = live
                .plugin
                .hrf_reward_reward()
                .call_score(&mut live.store, &wire);
            self.flush(&mut live);
            let worn = live.seen.0.max(live.seen.1) > OUTPUT_BUFFER / 2;
            let (result, retire) = match out {
                Ok(Ok(scores)) => (Ok(scores), worn),
                Ok(Err(e)) => (Err(describe(&e)), worn),
                // A trapped instance may be in any state: the next call starts afresh.
                Err(e) => (Err(self.trap_message("score", &e)), true),
            };
            if self.events.send(Event::Scored { result, retire }).is_err() || retire {
                return;
            }
        }
    }
}

impl WasmReward {
    /// Reads, pins, compiles (or loads from the cache), links and pre-instantiates the component,
    /// then instantiates it, asks its `info` and `configure`s it with the entry's config.
    pub fn load(settings: WasmSettings) -> Result<Self, PluginError> {
        let err = load_err(&settings.name, &settings.path);
        let bytes = std::fs::read(&settings.path).map_err(|e| err(e.to_string()))?;
        if let Some(want) = &settings.sha256 {
            let got = hex(&Sha256::digest(&bytes));
            if !got.eq_ignore_ascii_case(want.trim()) {
                return Err(err(format!(
                    "sha256 is {got}, the pipeline pins {want}: refusing to run a changed plugin"
                )));
            }
        }
        let mut models = BTreeMap::new();
        for (name, path) in &settings.models {
            let m = OnnxModel::load(path).map_err(|e| err(format!("models.{name}: {e}")))?;
            models.insert(name.clone(), m);
        }
        let engine = engine(settings.fuel.is_some());
        let component = compile(engine, &bytes).map_err(&err)?;
        let version = check_version(engine, &component).map_err(&err)?;
        let mut linker: Linker<State> = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| err(format!("{e:#}")))?;
        bindings::RewardPluginOnnx::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)
            .map_err(|e| err(format!("{e:#}")))?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| err(format!("cannot be linked: {e:#}")))?;
        let pre = bindings::RewardPluginOnnxPre::new(pre)
            .map_err(|e| err(format!("does not match world reward-plugin: {e:#}")))?;
        let log = Arc::new(Mutex::new(PluginLog::new(&format!(
            "[plugin {}]",
            settings.name
        ))));
        let mut me = WasmReward {
            info: provisional_info(&settings.name),
            settings,
            models: Arc::new(Mutex::new(models)),
            pre,
            version,
            log,
            worker: None,
            stuck: Vec::new(),
            abandoned_on_stop: false,
        };
        me.start().map_err(err)?;
        Ok(me)
    }

    /// The `hrf:reward` version the plugin targets.
    pub fn interface_version(&self) -> &str {
        &self.version
    }

    /// Starts a worker (a fresh store: instantiated, `info` read, configured) and waits for it.
    fn start(&mut self) -> Result<(), String> {
        self.stuck.retain(|t| !t.is_finished());
        if self.stuck.len() >= MAX_STUCK {
            return Err(format!(
                "{} earlier calls of this plugin are still blocked inside host calls (each \
                 holding its store, up to rewards.{}.memory_mb); no new instance until one ends",
                self.stuck.len(),
                self.settings.name
            ));
        }
        let (jobs, job_rx) = mpsc::channel();
        let (events, event_rx) = mpsc::channel();
        let abandoned = Arc::new(AtomicBool::new(false));
        let ctx = WorkerCtx {
            settings: self.settings.clone(),
            pre: self.pre.clone(),
            models: self.models.clone(),
            log: self.log.clone(),
            abandoned: abandoned.clone(),
            events,
        };
        let thread = std::thread::Builder::new()
            .name(format!("hrf-wasm-{}", self.settings.name))
            .spawn(move || ctx.serve(job_rx))
            .map_err(|e| format!("cannot start a thread for the plugin: {e}"))?;
        self.worker = Some(Worker {
            jobs,
            events: event_rx,
            abandoned,
            thread,
        });
        let info = match self.wait("instantiation, info or configure")? {
            Event::Started(Ok(info)) => info,
            Event::Started(Err(e)) => {
                self.worker = None;
                return Err(e);
            }
            _ => {
                self.worker = None;
                return Err("the plugin's worker answered out of turn".into());
            }
        };
        self.info = RewardInfo {
            name: self.settings.name.clone(),
            version: text::name(&info.version),
            higher_is_better: info.higher_is_better,
            batch_hint: info.batch_hint,
        };
        if info.name != self.settings.name {
            // The YAML's name is the one the run logs; the plugin's own goes in the version.
            self.info.version = format!("{} {}", text::name(&info.name), self.info.version);
        }
        Ok(())
    }

    /// Waits for the worker's next answer (printing its log lines as they come) until the
    /// timeout plus [`GRACE`] has passed or a stop is requested; then abandons the worker.
    fn wait(&mut self, call: &str) -> Result<Event, String> {
        let mut deadline = Instant::now() + self.settings.timeout + GRACE;
        let mut stopping = false;
        let failure = loop {
            let w = self.worker.as_ref().ok_or("no instance")?;
            let now = Instant::now();
            if !stopping && hrf_core::interrupt::requested() {
                // A call that is just slow may finish; a blocked one is abandoned soon.
                stopping = true;
                deadline = deadline.min(now + STOP_GRACE);
            }
            if now >= deadline {
                self.abandoned_on_stop |= stopping;
                break if stopping {
                    format!(
                        "{call}: interrupted (Ctrl-C or SIGTERM) while the plugin was still \
                         busy; the instance was abandoned"
                    )
                } else {
                    format!(
                        "{call}: timed out after {:.1} s (rewards.{}.timeout_s), blocked inside \
                         a host call (e.g. a WASI sleep or poll); the instance was abandoned",
                        self.settings.timeout.as_secs_f64(),
                        self.settings.name
                    )
                };
            }
            match w.events.recv_timeout(POLL.min(deadline - now)) {
                Ok(Event::Line(line)) => eprintln!("{line}"),
                Ok(answer) => return Ok(answer),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.worker = None;
                    return Err(format!("{call}: the plugin's worker thread stopped"));
                }
            }
        };
        self.abandon();
        Err(failure)
    }

    /// Gives up on the current worker: it logs and sends nothing more, and its store is never
    /// used again; it is kept among the stuck ones until its thread ends.
    fn abandon(&mut self) {
        if let Some(w) = self.worker.take() {
            w.abandoned.store(true, Ordering::SeqCst);
            self.stuck.push(w.thread);
        }
        if let Some(line) = lock(&self.log).end_call() {
            eprintln!("{line}");
        }
    }

    fn call_score(&mut self, samples: &[Sample]) -> Result<Vec<Score>, String> {
        if self.abandoned_on_stop && hrf_core::interrupt::requested() {
            return Err(
                "score: not called: a stop was requested (Ctrl-C or SIGTERM) and an earlier \
                 call was abandoned"
                    .into(),
            );
        }
        if self.worker.is_none() {
            self.start()?;
        }
        let wire: Vec<types::Sample> = samples.iter().map(to_wire).collect();
        let w = self.worker.as_ref().expect("started");
        if w.jobs.send(wire).is_err() {
            self.worker = None;
            return Err("score: the plugin's worker thread stopped".into());
        }
        let (result, retire) = match self.wait("score")? {
            Event::Scored { result, retire } => (result, retire),
            _ => (Err("the plugin's worker answered out of turn".into()), true),
        };
        if retire {
            self.worker = None;
        }
        let (scores, said) = kept_scores(result?.into_iter().map(|sc| {
            (
                sc.value,
                sc.extras.into_iter().map(|e| (e.name, e.value)).collect(),
            )
        }));
        if let Some(said) = said.and_then(|s| lock(&self.log).line("", &s)) {
            eprintln!("{said}");
        }
        Ok(scores)
    }
}

fn describe(e: &types::RewardError) -> String {
    match e {
        types::RewardError::Config(m) => format!("bad config: {}", text::message(m)),
        types::RewardError::InvalidSample(i) => {
            format!("sample {}: {}", i.index, text::message(&i.message))
        }
        types::RewardError::Failed(m) => text::message(m),
    }
}

fn to_wire(s: &Sample) -> types::Sample {
    types::Sample {
        image: types::Image {
            width: s.image.width(),
            height: s.image.height(),
            channels: s.image.channels().count() as u8,
            data: s.image.data().to_vec(),
        },
        prompt: s.prompt.clone(),
        metadata: s.metadata.to_string(),
    }
}

impl Reward for WasmReward {
    fn info(&self) -> RewardInfo {
        self.info.clone()
    }

    fn score(&mut self, samples: &[Sample]) -> Result<Vec<Score>, RewardError> {
        let called = self.call_score(samples);
        finish_score(
            &self.info,
            format_args!("wasm plugin {}", self.settings.path.display()),
            samples.len(),
            called,
        )
    }
}

/// The sha256 of a file, as the YAML's `sha256:` pin expects it.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    Ok(hex(&Sha256::digest(std::fs::read(path)?)))
}
