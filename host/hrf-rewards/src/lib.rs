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

/// Samples for the unit tests: `n` 1×1 grey images whose pixel is the sample's index.
#[cfg(test)]
mod test_samples {
    use hrf_core::{Channels, Image, Sample};

    pub fn samples(n: u8) -> Vec<Sample> {
        (0..n)
            .map(|i| Sample {
                image: Image::new(1, 1, Channels::L8, vec![i]).unwrap(),
                prompt: None,
                metadata: serde_json::Value::Null,
            })
            .collect()
    }
}
