//! Example WASM reward plugin of the `reward-plugin-onnx` world: the testbed's aesthetic score,
//! with the pre-processing done in the guest and the networks run by the host. Its YAML entry
//! declares two models:
//!
//! ```yaml
//! - kind: wasm
//!   path: plugins/target/wasm32-wasip2/release/aesthetic_wasm.wasm
//!   models: {encoder: models/fmnist-classifier.onnx, head: models/aesthetic-head.onnx}
//! ```
//!
//! Each 1-channel image becomes (x/255 − 0.5)/0.5 in NCHW; the encoder's `features` output is
//! L2-normalised per row and fed to the head, whose first output column is the score (the
//! LAION-aesthetic shape: image features → MLP).

use hrf_reward_sdk::onnx::{self, Tensor};
use hrf_reward_sdk::serde_json::Value;
use hrf_reward_sdk::{export_reward, Info, Reward, RewardError, Sample, Score};

struct Aesthetic {
    encoder_input: String,
    head_input: String,
    features: String,
}

fn first_input(model: &str) -> Result<(String, Vec<String>), RewardError> {
    let (inputs, outputs) = onnx::describe(model).map_err(RewardError::Config)?;
    let first = inputs
        .into_iter()
        .next()
        .ok_or_else(|| RewardError::Config(format!("model {model:?} has no inputs")))?;
    Ok((first, outputs))
}

impl Reward for Aesthetic {
    fn info() -> Info {
        Info {
            batch_hint: Some(256),
            ..Info::new("aesthetic-wasm", env!("CARGO_PKG_VERSION"))
        }
    }

    fn configure(config: &Value) -> Result<Self, RewardError> {
        let features = config
            .get("features")
            .and_then(|f| f.as_str())
            .unwrap_or("features")
            .to_string();
        let (encoder_input, outputs) = first_input("encoder")?;
        if !outputs.contains(&features) {
            return Err(RewardError::Config(format!(
                "the encoder has no output {features:?} (outputs: {outputs:?})"
            )));
        }
        let (head_input, _) = first_input("head")?;
        Ok(Aesthetic {
            encoder_input,
            head_input,
            features,
        })
    }

    fn score(&mut self, samples: &[Sample]) -> Result<Vec<Score>, RewardError> {
        let n = samples.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let (w, h) = (samples[0].image.width, samples[0].image.height);
        let mut data = Vec::with_capacity(n * (w * h) as usize);
        for (i, s) in samples.iter().enumerate() {
            if s.image.channels != 1 || s.image.width != w || s.image.height != h {
                return Err(RewardError::InvalidSample {
                    index: i as u32,
                    message: format!(
                        "{}×{}×{}: one size of grey images per batch expected",
                        s.image.width, s.image.height, s.image.channels
                    ),
                });
            }
            data.extend(s.image.data.iter().map(|&b| (b as f32 / 255.0 - 0.5) / 0.5));
        }
        let input = Tensor {
            shape: vec![n as u64, 1, h as u64, w as u64],
            data,
        };
        let outs =
            onnx::run("encoder", &[(&self.encoder_input, &input)]).map_err(RewardError::Failed)?;
        let mut feats = outs
            .into_iter()
            .find(|(name, _)| *name == self.features)
            .map(|(_, t)| t)
            .ok_or_else(|| RewardError::Failed(format!("no {:?} output", self.features)))?;
        let k = feats.data.len() / n;
        for row in feats.data.chunks_mut(k) {
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            row.iter_mut().for_each(|x| *x /= norm);
        }
        feats.shape = vec![n as u64, k as u64];
        let outs = onnx::run("head", &[(&self.head_input, &feats)]).map_err(RewardError::Failed)?;
        let (_, scores) = outs
            .into_iter()
            .next()
            .ok_or_else(|| RewardError::Failed("the head gave no output".into()))?;
        let cols = scores.data.len() / n;
        Ok(scores.data.chunks(cols).map(|r| Score::new(r[0])).collect())
    }
}

export_reward!(Aesthetic);
