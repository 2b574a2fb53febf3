//! The reward factory: a pipeline's validated `rewards:` entries (hrf-config) built into the
//! [`RewardSet`] a run scores with, whatever their kind: built-in, ONNX chain, WASM component,
//! native library, child process or inference server. The binary only wires: it passes the entries and a
//! [`RewardContext`].

use std::path::Path;
use std::time::Duration;

use hrf_config::pipeline::{
    NativeSpec, OnError, ProcessSpec, RewardKind, RewardSpec, ScoreSpec, Transform, WasmSpec,
};
use hrf_core::Reward;
use hrf_rewards::onnx::{OnnxChain, OnnxError, OnnxReward, ScorePick};
use hrf_rewards::{Component, LogScore, RewardSet};

use crate::native::{NativeReward, NativeSettings};
use crate::process::{ProcessReward, ProcessSettings};
use crate::{PluginError, WasmReward, WasmSettings};

/// What building a pipeline's rewards needs besides the entries themselves.
#[derive(Debug, Clone, Copy)]
pub struct RewardContext<'a> {
    /// The folder of the testbed's models, where built-in ONNX rewards find theirs.
    pub models: &'a Path,
    /// The model's class names: prompt alignment's columns, unless an entry names its own.
    pub classes: &'a [String],
    /// The run's seed; seeds the WASM guests' insecure randomness.
    pub seed: u64,
    /// The command line says `--allow-native` (native and process rewards need it).
    pub allow_native: bool,
}

/// Why a reward could not be built. Each names the entry; the messages are the ones users see.
#[derive(Debug, thiserror::Error)]
pub enum FactoryError {
    /// A built-in that could not be made (unknown name, a model that does not load).
    #[error("reward {name}: {message}")]
    Builtin { name: String, message: String },
    /// An ONNX chain that could not be loaded.
    #[error("reward {name}")]
    Onnx {
        name: String,
        #[source]
        source: OnnxError,
    },
    /// A plugin (WASM, native or process) that could not be loaded; it names itself.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// An inference server that is not ready or does not serve the model; names the entry
    /// and the URL.
    #[error(transparent)]
    Server(#[from] hrf_remote::LoadError),
}

/// Every entry of `rewards:` built, transformed and weighted, in the pipeline's order.
pub fn build_rewards(
    specs: &[RewardSpec],
    cx: &RewardContext<'_>,
) -> Result<RewardSet, FactoryError> {
    let components = specs
        .iter()
        .map(|spec| {
            Ok(Component {
                name: spec.name.clone(),
                weight: spec.weight,
                reward: build_reward(spec, cx)?,
                skip_failures: spec.on_error == OnError::Skip,
            })
        })
        .collect::<Result<_, FactoryError>>()?;
    Ok(RewardSet::new(components))
}

/// One entry built, with its `transform:` applied.
pub fn build_reward(
    spec: &RewardSpec,
    cx: &RewardContext<'_>,
) -> Result<Box<dyn Reward>, FactoryError> {
    let reward: Box<dyn Reward> = match &spec.kind {
        RewardKind::Builtin(kind) => hrf_rewards::builtin::builtin(kind, cx.models, cx.classes)
            .map_err(|message| FactoryError::Builtin {
                name: spec.name.clone(),
                message,
            })?,
        RewardKind::Onnx {
            stages,
            input,
            score,
        } => {
            let chain =
                OnnxChain::load(input.clone(), stages, spec.batch_size).map_err(|source| {
                    FactoryError::Onnx {
                        name: spec.name.clone(),
                        source,
                    }
                })?;
            let pick = match score {
                ScoreSpec::Column(c) => ScorePick::Column(*c),
                ScoreSpec::PromptedClass(names) => {
                    ScorePick::PromptedClass(names.clone().unwrap_or_else(|| cx.classes.to_vec()))
                }
            };
            Box::new(OnnxReward::new(spec.name.clone(), chain, pick))
        }
        RewardKind::Wasm(w) => Box::new(WasmReward::load(wasm_settings(&spec.name, w, cx.seed))?),
        RewardKind::Native(n) => Box::new(NativeReward::load(native_settings(
            &spec.name,
            n,
            cx.allow_native,
        ))?),
        RewardKind::Process(p) => Box::new(ProcessReward::load(process_settings(
            &spec.name,
            p,
            cx.allow_native,
        ))?),
        RewardKind::Http(h) => Box::new(hrf_remote::InferenceReward::load(&spec.name, h)?),
        RewardKind::OpenAiJudge(j) => Box::new(hrf_remote::JudgeReward::load(&spec.name, j)?),
    };
    Ok(match spec.transform {
        Transform::Identity => reward,
        Transform::Log => Box::new(LogScore::new(reward)),
    })
}

/// The runtime settings of a validated `kind: wasm` entry named `name`.
pub fn wasm_settings(name: &str, w: &WasmSpec, seed: u64) -> WasmSettings {
    WasmSettings {
        name: name.to_string(),
        path: w.path.clone(),
        config: w.config.clone(),
        timeout: Duration::from_secs_f64(w.timeout_s),
        memory_bytes: (w.memory_mb as usize) << 20,
        fuel: w.fuel,
        sha256: w.sha256.clone(),
        seed,
        models: w.models.clone(),
    }
}

/// The runtime settings of a validated `kind: native` entry named `name`.
pub fn native_settings(name: &str, n: &NativeSpec, allow_native: bool) -> NativeSettings {
    NativeSettings {
        name: name.to_string(),
        path: n.path.clone(),
        config: n.config.clone(),
        trusted_by_pipeline: n.trust.is_some(),
        allowed_by_command_line: allow_native,
    }
}

/// The runtime settings of a validated `kind: process` entry named `name`.
pub fn process_settings(name: &str, p: &ProcessSpec, allow_native: bool) -> ProcessSettings {
    ProcessSettings {
        name: name.to_string(),
        command: p.command.clone(),
        dir: p.dir.clone(),
        config: p.config.clone(),
        timeout: Duration::from_secs_f64(p.timeout_s),
        trusted_by_pipeline: p.trust.is_some(),
        allowed_by_command_line: allow_native,
    }
}
