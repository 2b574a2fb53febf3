//! hrf-train: the loops. DDPM pretraining of the testbed model (`pretraining`), DDIM sampling
//! with guidance (`sampling`, `trajectory`); one DDPO / HRF / HRF-D epoch (`epoch`,
//! `epoch_sampling`, `gradients`, `hrf`) on a `policy`; the fine-tuning run with its evaluations,
//! checkpoints and exact resume (`finetune`); the re-noising diagnostic (`renoise`); CPU workers that run passes side by side (`workers`). Never parses
//! YAML: it takes validated settings.

pub mod adamw;
pub mod advantages;
pub mod ema;
pub mod epoch;
mod epoch_sampling;
pub mod evaluation;
pub mod finetune;
pub mod gradients;
pub mod guard;
pub mod hrf;
pub mod policy;
pub mod ppo;
pub mod pretraining;
pub mod renoise;
pub mod sampling;
pub mod text_to_image;
pub mod trajectory;
pub mod tuned;
mod workers;

pub use adamw::{AdamW, AdamWConfig};
/// Keyed random numbers live in hrf-core (model initialisation draws from them too).
pub use hrf_core::rng;
