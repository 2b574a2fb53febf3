//! The host side of the WIT world: what a guest's store holds ([`State`]: WASI context, limits,
//! the plugin's log, its ONNX models), the interfaces the guest imports (`log`, `onnx`), and the
//! [`Event`]s a store's worker sends its caller.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use hrf_core::text::{self, PluginLog};
use hrf_rewards::onnx::OnnxModel;
use wasmtime::component::ResourceTable;
use wasmtime::StoreLimits;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::hrf::reward::{log, onnx, types};
use crate::lock;

/// What a store holds for its plugin.
pub(super) struct State {
    pub(super) limits: StoreLimits,
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    /// The plugin's output on its way to the log: shared with the caller, which owns the
    /// per-run budget; unused once the worker is abandoned.
    pub(super) log: Arc<Mutex<PluginLog>>,
    /// Set by the caller when it gives up on this worker: nothing more is logged or sent.
    pub(super) abandoned: Arc<AtomicBool>,
    pub(super) events: Sender<Event>,
    /// The declared ONNX models, loaded once and shared by every store of the plugin.
    pub(super) models: Arc<Mutex<BTreeMap<String, OnnxModel>>>,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
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
pub(super) enum Event {
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
