//! WebAssembly component rewards against the `hrf:reward` WIT package (`wit/reward.wit`,
//! docs/ARCHITECTURE.md §5), run sandboxed in wasmtime.
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
//! an error naming the plugin, and the next call starts from a fresh store.
//!
//! Here: [`WasmReward`], the caller's side. Below it: `settings` (the entry's settings and the
//! fixed bounds), `bindings` (generated from the WIT), `engine` (engines, compile cache, version
//! check), `host` (what a store holds, the interfaces the guest imports), `worker` (the thread
//! that owns a store).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use hrf_core::text::{self, PluginLog};
use hrf_core::{Reward, RewardError, RewardInfo, Sample, Score};
use hrf_rewards::onnx::OnnxModel;
use sha2::{Digest, Sha256};
use wasmtime::component::{HasSelf, Linker};

use crate::{finish_score, kept_scores, load_err, lock, provisional_info, PluginError, STOP_GRACE};

mod bindings;
mod engine;
mod host;
mod settings;
mod worker;

use bindings::hrf::reward::types;
pub use engine::cache_dir;
use engine::{check_version, compile, engine, hex};
use host::{Event, State};
use settings::POLL;
pub use settings::{WasmSettings, GRACE, HOSTCALL_BYTES, MAX_STUCK, PACKAGE, SUPPORTED_VERSIONS};
use worker::{Worker, WorkerCtx};

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
