//! hrf-rewards: built-in rewards and the runtimes that host reward models. No tch tensors here:
//! rewards see 8-bit `Sample`s (hrf-core).

#[cfg(feature = "onnx")]
pub mod builtin;
pub mod jpeg;
#[cfg(feature = "onnx")]
pub mod onnx;
#[cfg(feature = "onnx")]
pub mod onnx_runtime;
pub mod set;
pub mod transform;

pub use jpeg::{JpegCompressibility, JpegDirection};
pub use set::{Component, RewardSet, RewardWorker, SetScores};
pub use transform::LogScore;
