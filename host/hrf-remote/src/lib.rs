//! hrf-remote: rewards over the network (docs/SERVERS.md). `kind: http` scores through a model
//! behind an inference server speaking the Open Inference Protocol (KServe v2 REST: Triton,
//! KServe, Seldon MLServer); `kind: openai-judge` asks a vision-language model behind an
//! OpenAI-compatible chat-completions endpoint (vLLM, SGLang, llama.cpp) and reads the score
//! from its answer. Every request is bounded: batch size, requests in flight, a
//! timeout, retries with back-off only where a retry can help, the size of the reply read. A
//! failed call is a reward failure like any other (`on_error`).

pub mod client;
mod image;
mod json;
pub mod judge;
pub mod kserve;
mod pool;

pub use client::{LoadError, RequestError, ServerClient, ServerSettings};
pub use judge::JudgeReward;
pub use kserve::InferenceReward;
