//! hrf-train: the loops. DDPM pretraining of the testbed model, DDIM sampling with guidance;
//! DDPO, HRF and HRF-D build on these. Never parses YAML: it takes validated settings.

pub mod adamw;
pub mod advantages;
pub mod compare;
pub mod ddpo;
pub mod ema;
pub mod evaluation;
pub mod hrf;
pub mod metrics;
pub mod plots;
pub mod ppo;
pub mod pretrain;
pub mod run;
pub mod sampling;
pub mod trajectory;

pub use adamw::{AdamW, AdamWConfig};
/// Keyed random numbers live in hrf-core (model initialisation draws from them too).
pub use hrf_core::rng;
