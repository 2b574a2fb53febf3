//! hrf-remote: rewards over the network (docs/SERVERS.md). `kind: http` scores through a model
//! behind an inference server speaking the Open Inference Protocol (KServe v2 REST: Triton,
//! KServe, Seldon MLServer). Every request is bounded: batch size, requests in flight, a
//! timeout, retries with back-off only where a retry can help, the size of the reply read. A
//! failed call is a reward failure like any other (`on_error`).

pub mod client;
mod json;
pub mod kserve;

pub use client::{RequestError, ServerClient, ServerSettings};
pub use kserve::{InferenceReward, LoadError};
