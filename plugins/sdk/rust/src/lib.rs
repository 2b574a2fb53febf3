//! Write an hrf reward plugin in Rust: implement [`Reward`] for a type and export it with
//! [`export_reward!`]; build with `cargo build --release --target wasm32-wasip2` and point a
//! `kind: wasm` entry of a pipeline's `rewards:` at the `.wasm` file.
//!
//! ```ignore
//! use hrf_reward_sdk::{export_reward, Info, Reward, RewardError, Sample, Score};
//!
//! struct Brightness;
//!
//! impl Reward for Brightness {
//!     fn info() -> Info {
//!         Info::new("brightness", env!("CARGO_PKG_VERSION"))
//!     }
//!     fn configure(_config: &serde_json::Value) -> Result<Self, RewardError> {
//!         Ok(Brightness)
//!     }
//!     fn score(&mut self, samples: &[Sample]) -> Result<Vec<Score>, RewardError> {
//!         Ok(samples
//!             .iter()
//!             .map(|s| Score::new(s.image.data.iter().map(|&b| b as f32).sum::<f32>() / s.image.data.len() as f32))
//!             .collect())
//!     }
//! }
//!
//! export_reward!(Brightness);
//! ```
//!
//! The WIT bindings (`hrf:reward@0.1.0`, `wit/reward.wit`) are generated inside this crate;
//! plugins see only the plain types below.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit",
        world: "reward-plugin-onnx",
        pub_export_macro: true,
        export_macro_name: "__export_reward_world",
        default_bindings_module: "hrf_reward_sdk::bindings",
    });
}

use bindings::hrf::reward::types as wire;

/// Configs and metadata are JSON values.
pub use serde_json;

/// An 8-bit image, interleaved row-major: `channels` is 1 (grey) or 3 (RGB).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub width: u32,
    pub height: u32,
    pub channels: u8,
    pub data: Vec<u8>,
}

/// One generated sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub image: Image,
    /// The prompt it was generated for; `None` for unconditional sampling.
    pub prompt: Option<String>,
    /// A JSON object from the host (epoch, whether it is an evaluation sample, …).
    pub metadata: serde_json::Value,
}

/// One sample's score, with named extras for the log.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Score {
    pub value: f32,
    pub extras: Vec<(String, f32)>,
}

impl Score {
    pub fn new(value: f32) -> Self {
        Score {
            value,
            extras: Vec::new(),
        }
    }

    pub fn with_extra(mut self, name: &str, value: f32) -> Self {
        self.extras.push((name.to_string(), value));
        self
    }
}

/// What the plugin says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub name: String,
    pub version: String,
    pub higher_is_better: bool,
    pub batch_hint: Option<u32>,
}

impl Info {
    /// Higher is better, no preferred batch size.
    pub fn new(name: &str, version: &str) -> Self {
        Info {
            name: name.into(),
            version: version.into(),
            higher_is_better: true,
            batch_hint: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RewardError {
    /// The entry's `config:` is unusable.
    Config(String),
    /// One sample cannot be scored.
    InvalidSample {
        index: u32,
        message: String,
    },
    Failed(String),
}

/// A reward. The host calls [`Reward::configure`] once (with the YAML entry's `config:`, `{}`
/// when absent), then [`Reward::score`] on batches.
pub trait Reward: Sized + 'static {
    fn info() -> Info;
    fn configure(config: &serde_json::Value) -> Result<Self, RewardError>;
    /// One score per sample, in order.
    fn score(&mut self, samples: &[Sample]) -> Result<Vec<Score>, RewardError>;
}

/// Log levels of [`log`].
pub use bindings::hrf::reward::log::Level;

/// A line in the run's log (the host bounds its length).
pub fn log(level: Level, message: &str) {
    bindings::hrf::reward::log::log(level, message)
}

/// ONNX models declared in the plugin's YAML entry, run by the host.
pub mod onnx {
    use crate::bindings::hrf::reward::onnx as wire;

    /// A dense f32 tensor, row-major.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Tensor {
        pub shape: Vec<u64>,
        pub data: Vec<f32>,
    }

    /// Input and output names of a declared model.
    pub fn describe(model: &str) -> Result<(Vec<String>, Vec<String>), String> {
        wire::describe(model).map(|m| (m.inputs, m.outputs))
    }

    /// Runs a declared model on named inputs; returns every output by name.
    pub fn run(model: &str, inputs: &[(&str, &Tensor)]) -> Result<Vec<(String, Tensor)>, String> {
        let inputs: Vec<wire::NamedTensor> = inputs
            .iter()
            .map(|(name, t)| wire::NamedTensor {
                name: name.to_string(),
                tensor: wire::Tensor {
                    shape: t.shape.clone(),
                    data: t.data.clone(),
                },
            })
            .collect();
        Ok(wire::run(model, &inputs)?
            .into_iter()
            .map(|o| {
                (
                    o.name,
                    Tensor {
                        shape: o.tensor.shape,
                        data: o.tensor.data,
                    },
                )
            })
            .collect())
    }
}

#[doc(hidden)]
pub mod __private {
    use super::*;
    use std::cell::RefCell;
    use std::thread::LocalKey;

    pub type Slot<T> = LocalKey<RefCell<Option<T>>>;

    pub fn info<T: Reward>() -> wire::PluginInfo {
        let i = T::info();
        wire::PluginInfo {
            name: i.name,
            version: i.version,
            higher_is_better: i.higher_is_better,
            batch_hint: i.batch_hint,
        }
    }

    fn to_wire(e: RewardError) -> wire::RewardError {
        match e {
            RewardError::Config(m) => wire::RewardError::Config(m),
            RewardError::InvalidSample { index, message } => {
                wire::RewardError::InvalidSample(wire::InvalidSample { index, message })
            }
            RewardError::Failed(m) => wire::RewardError::Failed(m),
        }
    }

    pub fn configure<T: Reward>(
        slot: &'static Slot<T>,
        config: String,
    ) -> Result<(), wire::RewardError> {
        let value: serde_json::Value = serde_json::from_str(&config)
            .map_err(|e| wire::RewardError::Config(format!("config is not JSON: {e}")))?;
        let r = T::configure(&value).map_err(to_wire)?;
        slot.with(|s| *s.borrow_mut() = Some(r));
        Ok(())
    }

    pub fn score<T: Reward>(
        slot: &'static Slot<T>,
        samples: Vec<wire::Sample>,
    ) -> Result<Vec<wire::SampleScore>, wire::RewardError> {
        let samples: Vec<Sample> = samples
            .into_iter()
            .map(|s| Sample {
                image: Image {
                    width: s.image.width,
                    height: s.image.height,
                    channels: s.image.channels,
                    data: s.image.data,
                },
                prompt: s.prompt,
                metadata: serde_json::from_str(&s.metadata).unwrap_or(serde_json::Value::Null),
            })
            .collect();
        slot.with(|s| {
            let mut s = s.borrow_mut();
            let r = s
                .as_mut()
                .ok_or_else(|| wire::RewardError::Failed("score called before configure".into()))?;
            let scores = r.score(&samples).map_err(to_wire)?;
            Ok(scores
                .into_iter()
                .map(|sc| wire::SampleScore {
                    value: sc.value,
                    extras: sc
                        .extras
                        .into_iter()
                        .map(|(name, value)| wire::Extra { name, value })
                        .collect(),
                })
                .collect())
        })
    }
}

/// Exports `$t` (a [`Reward`]) as the plugin's `hrf:reward/reward` interface.
#[macro_export]
macro_rules! export_reward {
    ($t:ty) => {
        ::std::thread_local! {
            static __HRF_REWARD: ::std::cell::RefCell<::std::option::Option<$t>> =
                const { ::std::cell::RefCell::new(None) };
        }

        #[doc(hidden)]
        pub struct __HrfRewardExport;

        impl $crate::bindings::exports::hrf::reward::reward::Guest for __HrfRewardExport {
            fn info() -> $crate::bindings::hrf::reward::types::PluginInfo {
                $crate::__private::info::<$t>()
            }
            fn configure(
                config: ::std::string::String,
            ) -> ::std::result::Result<(), $crate::bindings::hrf::reward::types::RewardError> {
                $crate::__private::configure::<$t>(&__HRF_REWARD, config)
            }
            fn score(
                samples: ::std::vec::Vec<$crate::bindings::hrf::reward::types::Sample>,
            ) -> ::std::result::Result<
                ::std::vec::Vec<$crate::bindings::hrf::reward::types::SampleScore>,
                $crate::bindings::hrf::reward::types::RewardError,
            > {
                $crate::__private::score::<$t>(&__HRF_REWARD, samples)
            }
        }

        $crate::bindings::__export_reward_world!(__HrfRewardExport);
    };
}
