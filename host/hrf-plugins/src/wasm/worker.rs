//! The worker thread that owns a plugin's store: builds it (WASI context, limits), arms each
//! call's deadline and fuel, calls `info`, `configure` and `score`, turns traps into messages,
//! and sends the guest's output and each outcome back to the waiting caller as `Event`s.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hrf_core::text::{self, PluginLog};
use hrf_rewards::onnx::OnnxModel;
use wasmtime::component::ResourceTable;
use wasmtime::{Store, StoreLimitsBuilder};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::WasiCtx;

use super::bindings::{self, hrf::reward::types};
use super::engine::engine;
use super::host::{Event, State};
use super::settings::{WasmSettings, HOSTCALL_BYTES, OUTPUT_BUFFER, TICK};
use crate::lock;

/// What a worker thread needs to build and drive its store.
pub(super) struct WorkerCtx {
    pub(super) settings: WasmSettings,
    pub(super) pre: bindings::RewardPluginOnnxPre<State>,
    pub(super) models: Arc<Mutex<BTreeMap<String, OnnxModel>>>,
    pub(super) log: Arc<Mutex<PluginLog>>,
    pub(super) abandoned: Arc<AtomicBool>,
    pub(super) events: Sender<Event>,
}

/// A worker thread owning one store, and the caller's ends of its channels.
pub(super) struct Worker {
    pub(super) jobs: Sender<Vec<types::Sample>>,
    pub(super) events: Receiver<Event>,
    pub(super) abandoned: Arc<AtomicBool>,
    pub(super) thread: JoinHandle<()>,
}

struct Live {
    store: Store<State>,
    plugin: bindings::RewardPluginOnnx,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
    /// Bytes of stdout/stderr already copied into the log.
    seen: (usize, usize),
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
    pub(super) fn serve(self, jobs: Receiver<Vec<types::Sample>>) {
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

fn describe(e: &types::RewardError) -> String {
    match e {
        types::RewardError::Config(m) => format!("bad config: {}", text::message(m)),
        types::RewardError::InvalidSample(i) => {
            format!("sample {}: {}", i.index, text::message(&i.message))
        }
        types::RewardError::Failed(m) => text::message(m),
    }
}
