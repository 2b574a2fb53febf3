//! hrf-plugins: rewards that are plugins, and the factory that builds a pipeline's rewards
//! (docs/ARCHITECTURE.md §5).
//!
//! - [`wasm`]: WebAssembly components against the `hrf:reward` WIT package (`wit/reward.wit`),
//!   run sandboxed in wasmtime: epoch deadlines, memory caps, optional fuel, a WASI context that
//!   inherits nothing.
//! - [`native`]: shared libraries over the C ABI of `plugins/native/include/hrf_reward.h` (the
//!   types in hrf-abi), trusted only on two opt-ins.
//! - [`process`]: a long-lived child process over stdin/stdout, with the same two opt-ins.
//! - [`factory`]: a pipeline's validated `rewards:` entries (built-in, ONNX, WASM, native,
//!   process) built into one [`hrf_rewards::RewardSet`].
//!
//! Everything a plugin says passes [`hrf_core::text`] on its way in, and every failure names the
//! plugin.

mod common;
pub mod factory;
pub mod native;
pub mod process;
pub mod wasm;

pub(crate) use common::{finish_score, kept_scores, load_err, lock, provisional_info};
pub use common::{PluginError, STOP_GRACE};
pub use factory::{build_rewards, FactoryError, RewardContext};
pub use wasm::{
    cache_dir, file_sha256, WasmReward, WasmSettings, GRACE, HOSTCALL_BYTES, MAX_STUCK, PACKAGE,
    SUPPORTED_VERSIONS,
};
