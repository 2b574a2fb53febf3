//! hrf-plugins: rewards written as WebAssembly components against the `hrf:reward` WIT package
//! (`wit/reward.wit`, DESIGN.md §5), run sandboxed in wasmtime.
//!
//! One engine per process (component model, epoch interruption; a second one with fuel metering
//! for plugins given a `fuel:` budget), components compiled once
//! and cached on disk, one store per plugin. Each call runs under an epoch deadline (the YAML's
//! timeout), a memory cap (`StoreLimits`, growth past it traps) and optional fuel. The guest's
//! WASI context inherits nothing: no preopened directories, no environment, no sockets or name
//! lookups; clocks are real, insecure randomness is seeded from the run's seed; stdout and stderr
//! go to bounded buffers that are copied into the log. A trap, a timeout or a broken store makes
//! the call fail with an error naming the plugin, and the next call starts from a fresh store.
//! Native plugins (C ABI, trusted only on two opt-ins) are in [`native`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

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
/// next call, so a chatty plugin is never stopped by its own output.
const OUTPUT_BUFFER: usize = 1 << 20;
/// At most this much of a call's output (and of each log message) reaches the log.
const LOG_PER_CALL: usize = 4096;

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
    let component =
        Component::new(engine, bytes).map_err(|e| format!("not a valid component: {e:#}"))?;
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
    plugin: String,
    /// Log lines of the current call (bounded).
    logged: Vec<String>,
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

fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes cut)", &s[..end], s.len() - end)
}

impl log::Host for State {
    fn log(&mut self, level: log::Level, message: String) {
        if self.logged.len() < 64 {
            let level = match level {
                log::Level::Debug => "debug",
                log::Level::Info => "info",
                log::Level::Warn => "warn",
                log::Level::Error => "error",
            };
            self.logged.push(format!(
                "[plugin {}] {level}: {}",
                self.plugin,
                clip(&message, LOG_PER_CALL)
            ));
        }
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
                "no model {name:?} declared in this plugin's `models:` (declared: {})",
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
        let [input] = <[onnx::NamedTensor; 1]>::try_from(inputs)
            .map_err(|v| format!("model {model:?}: one input expected, got {}", v.len()))?;
        let shape: Vec<i64> = input.tensor.shape.iter().map(|&d| d as i64).collect();
        let want: u64 = input.tensor.shape.iter().product();
        if want != input.tensor.data.len() as u64 {
            return Err(format!(
                "model {model:?}: input {:?} has shape {:?} ({want} values) but {} values",
                input.name,
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

struct Live {
    store: Store<State>,
    plugin: bindings::RewardPluginOnnx,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
    /// Bytes of stdout/stderr already copied into the log.
    seen: (usize, usize),
}

/// A WASM reward plugin, ready to score.
pub struct WasmReward {
    settings: WasmSettings,
    models: Arc<Mutex<BTreeMap<String, OnnxModel>>>,
    pre: bindings::RewardPluginOnnxPre<State>,
    info: RewardInfo,
    version: String,
    live: Option<Live>,
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
        let mut me = WasmReward {
            info: provisional_info(&settings.name),
            settings,
            models: Arc::new(Mutex::new(models)),
            pre,
            version,
            live: None,
        };
        me.start().map_err(err)?;
        Ok(me)
    }

    /// The `hrf:reward` version the plugin targets.
    pub fn interface_version(&self) -> &str {
        &self.version
    }

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
                plugin: s.name.clone(),
                logged: Vec::new(),
                models: self.models.clone(),
            },
        );
        store.limiter(|st| &mut st.limits);
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

    /// Instantiates a fresh store, reads `info` and calls `configure`.
    fn start(&mut self) -> Result<(), String> {
        let (mut store, stdout, stderr) = self.new_store();
        Self::arm(&mut store, self.settings.timeout, self.settings.fuel)?;
        let plugin = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| format!("instantiation failed: {e:#}"))?;
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
        Self::flush_output(&mut live);
        configured.map_err(|e| format!("configure: {}", describe(&e)))?;
        self.info = RewardInfo {
            name: self.settings.name.clone(),
            version: info.version,
            higher_is_better: info.higher_is_better,
            batch_hint: info.batch_hint,
        };
        if info.name != self.settings.name {
            // The YAML's name is the one the run logs; the plugin's own goes in the version.
            self.info.version = format!("{} {}", info.name, self.info.version);
        }
        self.live = Some(live);
        Ok(())
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
        let text = e.root_cause().to_string();
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

    /// Copies new guest output and log messages into the log (stderr), bounded.
    fn flush_output(live: &mut Live) {
        let plugin = live.store.data().plugin.clone();
        for line in live.store.data_mut().logged.drain(..) {
            eprintln!("{line}");
        }
        for (pipe, seen, stream) in [
            (&live.stdout, &mut live.seen.0, "stdout"),
            (&live.stderr, &mut live.seen.1, "stderr"),
        ] {
            let all = pipe.contents();
            if all.len() > *seen {
                let text = String::from_utf8_lossy(&all[*seen..]);
                for line in clip(text.trim(), LOG_PER_CALL).lines() {
                    eprintln!("[plugin {plugin} {stream}] {line}");
                }
                *seen = all.len();
            }
        }
    }

    fn call_score(&mut self, samples: &[Sample]) -> Result<Vec<Score>, String> {
        let worn = self
            .live
            .as_ref()
            .is_some_and(|l| l.seen.0.max(l.seen.1) > OUTPUT_BUFFER / 2);
        if self.live.is_none() || worn {
            self.live = None;
            self.start()?;
        }
        let wire: Vec<types::Sample> = samples.iter().map(to_wire).collect();
        let (timeout, fuel) = (self.settings.timeout, self.settings.fuel);
        let live = self.live.as_mut().expect("started");
        Self::arm(&mut live.store, timeout, fuel)?;
        let out = live
            .plugin
            .hrf_reward_reward()
            .call_score(&mut live.store, &wire);
        Self::flush_output(live);
        match out {
            Ok(Ok(scores)) => Ok(scores
                .into_iter()
                .map(|sc| Score {
                    value: sc.value,
                    extras: sc.extras.into_iter().map(|e| (e.name, e.value)).collect(),
                })
                .collect()),
            Ok(Err(e)) => Err(describe(&e)),
            Err(e) => {
                // A trapped instance may be in any state: the next call starts afresh.
                let msg = self.trap_message("score", &e);
                self.live = None;
                Err(msg)
            }
        }
    }
}

fn describe(e: &types::RewardError) -> String {
    match e {
        types::RewardError::Config(m) => format!("bad config: {m}"),
        types::RewardError::InvalidSample(i) => format!("sample {}: {}", i.index, i.message),
        types::RewardError::Failed(m) => m.clone(),
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
