//! `kind: http`: a reward model behind an inference server speaking the Open Inference Protocol
//! (KServe v2 REST), as Triton, KServe and Seldon MLServer serve it.
//!
//! At load the server and the model must be ready (`GET /v2/health/ready`,
//! `GET /v2/models/{model}/ready`) and, where the model's metadata lists its outputs, the named
//! output must be one of them; where it lists its inputs, the images' must be one of them and the
//! prompts and metadata are sent only if they are. A call is split into requests of at most `max_batch` images,
//! `concurrency` of them in flight; each is `POST /v2/models/{model}/infer` with the images
//! (UINT8 [B, H, W, C], or PNG files in a BYTES [B] tensor, base64), the prompts and the
//! metadata (BYTES [B], UTF-8 / JSON text), asking for one output: one number per image.

use base64::Engine;
use hrf_config::pipeline::HttpSpec;
use hrf_config::reward::ImageEncoding;
use hrf_core::{CallStats, Reward, RewardError, RewardInfo, Sample, Score};
use serde_json::{json, Value};

use crate::client::{LoadError, ServerClient};
use crate::image::png_bytes;
use crate::json::{numbers, parse_reply};
use crate::pool::{in_flight, redacted, scores};

pub struct InferenceReward {
    name: String,
    version: String,
    spec: HttpSpec,
    client: ServerClient,
    /// What the calls since the last [`take_call_stats`](Reward::take_call_stats) cost.
    stats: CallStats,
}

impl InferenceReward {
    /// Connects to the server named in `spec` and checks that it serves the model.
    pub fn load(name: &str, spec: &HttpSpec) -> Result<Self, LoadError> {
        let client = ServerClient::for_reward(name, &spec.server)?;
        let not_ready = |source| LoadError::NotReady {
            name: name.into(),
            source,
        };
        client.get("/v2/health/ready").map_err(not_ready)?;
        let model = &spec.server.model;
        client
            .get(&format!("/v2/models/{model}/ready"))
            .map_err(not_ready)?;
        // The metadata names the model's version and, where the server knows them, its outputs.
        let metadata = client
            .get(&format!("/v2/models/{model}"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .unwrap_or(Value::Null);
        let outputs: Vec<&str> = metadata["outputs"]
            .as_array()
            .map(|o| o.iter().filter_map(|t| t["name"].as_str()).collect())
            .unwrap_or_default();
        if !outputs.is_empty() && !outputs.contains(&spec.output.as_str()) {
            return Err(LoadError::Model {
                name: name.into(),
                message: format!(
                    "output: model {model} at {} has no output {:?}; it has {}",
                    spec.server.url,
                    spec.output,
                    hrf_core::text::message(&outputs.join(", "))
                ),
            });
        }
        // Where the model declares its inputs (Triton refuses any other), the images must be one
        // of them, and the prompts and metadata are sent only if they are.
        let declared: Vec<&str> = metadata["inputs"]
            .as_array()
            .map(|o| o.iter().filter_map(|t| t["name"].as_str()).collect())
            .unwrap_or_default();
        let mut spec = spec.clone();
        if !declared.is_empty() {
            if !declared.contains(&spec.inputs.images.as_str()) {
                return Err(LoadError::Model {
                    name: name.into(),
                    message: format!(
                        "inputs.images: model {model} at {} has no input {:?}; it has {}",
                        spec.server.url,
                        spec.inputs.images,
                        hrf_core::text::message(&declared.join(", "))
                    ),
                });
            }
            for input in [&mut spec.inputs.prompts, &mut spec.inputs.metadata] {
                if input.as_deref().is_some_and(|n| !declared.contains(&n)) {
                    *input = None;
                }
            }
        }
        let version = metadata["versions"]
            .as_array()
            .and_then(|v| v.first())
            .and_then(Value::as_str)
            .unwrap_or("v2");
        Ok(Self {
            name: name.into(),
            version: hrf_core::text::name(version),
            spec,
            client,
            stats: CallStats::default(),
        })
    }

    fn label(&self) -> String {
        self.info().label()
    }

    /// The infer request of one chunk of samples.
    fn request(&self, samples: &[Sample]) -> Result<Vec<u8>, String> {
        let b = samples.len();
        let inputs = &self.spec.inputs;
        let mut tensors = vec![match self.spec.encoding {
            ImageEncoding::Uint8 => {
                let first = &samples[0].image;
                let (w, h, c) = (first.width(), first.height(), first.channels());
                if let Some(i) = samples.iter().position(|s| {
                    (s.image.width(), s.image.height(), s.image.channels()) != (w, h, c)
                }) {
                    return Err(format!(
                        "encoding uint8 sends one [B, H, W, C] tensor, but image {i} is {}×{} and image 0 {w}×{h} (use encoding: png)",
                        samples[i].image.width(),
                        samples[i].image.height()
                    ));
                }
                let data: Vec<u8> = samples
                    .iter()
                    .flat_map(|s| s.image.data())
                    .copied()
                    .collect();
                json!({"name": inputs.images, "shape": [b, h, w, c.count()], "datatype": "UINT8", "data": data})
            }
            ImageEncoding::Png => {
                let data = samples
                    .iter()
                    .map(|s| {
                        png_bytes(&s.image)
                            .map(|p| base64::engine::general_purpose::STANDARD.encode(p))
                    })
                    .collect::<Result<Vec<String>, String>>()?;
                json!({"name": inputs.images, "shape": [b], "datatype": "BYTES",
                       "parameters": {"content_type": "base64"}, "data": data})
            }
        }];
        if let Some(name) = &inputs.prompts {
            if samples.iter().all(|s| s.prompt.is_some()) {
                let data: Vec<&str> = samples
                    .iter()
                    .map(|s| s.prompt.as_deref().unwrap_or(""))
                    .collect();
                tensors.push(json!({"name": name, "shape": [b], "datatype": "BYTES",
                                    "parameters": {"content_type": "str"}, "data": data}));
            }
        }
        if let Some(name) = &inputs.metadata {
            let data: Vec<String> = samples.iter().map(|s| s.metadata.to_string()).collect();
            tensors.push(json!({"name": name, "shape": [b], "datatype": "BYTES",
                                "parameters": {"content_type": "str"}, "data": data}));
        }
        let body = json!({"inputs": tensors, "outputs": [{"name": self.spec.output}]});
        Ok(serde_json::to_vec(&body).expect("a request serialises"))
    }

    /// One request: its samples' scores, in order.
    fn infer(&self, samples: &[Sample], stats: &mut CallStats) -> Result<Vec<f32>, String> {
        let body = self.request(samples)?;
        let path = format!("/v2/models/{}/infer", self.spec.server.model);
        let reply = self
            .client
            .post_json(&path, &body, stats)
            .map_err(|e| format!("model {}: {e}", self.spec.server.model))?;
        let url = self.client.url(&path);
        let reply =
            parse_reply(&reply).map_err(|e| format!("{url}: the reply is not JSON: {e}"))?;
        let outputs = reply["outputs"].as_array().ok_or_else(|| {
            format!(
                "{url}: the reply has no outputs: {}",
                hrf_core::text::message(&reply.to_string())
            )
        })?;
        let out = outputs
            .iter()
            .find(|o| o["name"].as_str() == Some(self.spec.output.as_str()))
            .ok_or_else(|| {
                let names: Vec<&str> = outputs.iter().filter_map(|o| o["name"].as_str()).collect();
                format!(
                    "{url}: the reply has no output {:?} (it has {})",
                    self.spec.output,
                    names.join(", ")
                )
            })?;
        numbers(&out["data"]).map_err(|e| format!("{url}: output {:?}: {e}", self.spec.output))
    }
}

impl Reward for InferenceReward {
    fn info(&self) -> RewardInfo {
        RewardInfo {
            name: self.name.clone(),
            version: self.version.clone(),
            higher_is_better: true,
            batch_hint: Some(self.spec.max_batch.min(u32::MAX as usize) as u32),
        }
    }

    fn score(&mut self, samples: &[Sample]) -> Result<Vec<Score>, RewardError> {
        if samples.is_empty() {
            return Ok(Vec::new());
        }
        let chunks: Vec<&[Sample]> = samples.chunks(self.spec.max_batch.max(1)).collect();
        let this = &*self;
        let (results, stats) = in_flight(chunks.len(), self.spec.server.concurrency, |i, stats| {
            let chunk = chunks[i];
            let v = this.infer(chunk, stats)?;
            if v.len() != chunk.len() {
                return Err(format!(
                    "model {}: {} scores for the {} images of a request",
                    this.spec.server.model,
                    v.len(),
                    chunk.len()
                ));
            }
            Ok(v)
        });
        self.stats.add(&stats);
        scores(results, || self.label()).map_err(|e| redacted(e, &self.client))
    }

    fn take_call_stats(&mut self) -> Option<CallStats> {
        self.stats.take()
    }
}
