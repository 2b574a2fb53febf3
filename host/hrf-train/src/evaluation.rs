//! Evaluation on fixed-seed samples: generating them in batches, classifying them with the
//! independent evaluation classifier (ONNX), and the diversity metrics of
//! `hrf_report::diversity`. Used by `hrf eval` and by evaluation during training, so both report
//! the same numbers.

use std::path::Path;

use hrf_core::Image;
use hrf_data::Dataset;
use hrf_diffusion::DdimScheduler;
use hrf_report::diversity::{self, Diversity};
use hrf_rewards::onnx::{preprocess, ImageInput, OnnxError, OnnxModel};
use tch::{Device, Tensor};

use crate::policy::Policy;
use crate::sampling::{sample, SampleRequest};

/// What to generate: one label per sample (None: unconditional model), keyed 0..n.
pub struct Generation<'a> {
    pub labels: Option<&'a [i64]>,
    pub n: usize,
    pub seed: u64,
    pub eta: f64,
    pub guidance: f64,
    pub batch_size: usize,
}

/// Generates `n` samples in batches; sample i is keyed by i, so the set does not depend on the
/// batch size.
pub fn generate(
    policy: &dyn Policy,
    sched: &DdimScheduler,
    g: &Generation<'_>,
    device: Device,
) -> Vec<Image> {
    let mut out = Vec::with_capacity(g.n);
    let keys: Vec<u64> = (0..g.n as u64).collect();
    for chunk in keys.chunks(g.batch_size.max(1)) {
        let labels = g
            .labels
            .map(|l| Tensor::from_slice(&l[chunk[0] as usize..chunk[0] as usize + chunk.len()]));
        let x = sample(
            policy,
            sched,
            &SampleRequest {
                labels: labels.as_ref(),
                keys: chunk,
                seed: g.seed,
                eta: g.eta,
                guidance: g.guidance,
            },
            device,
        );
        out.extend(policy.decode(&x));
    }
    out
}

/// The evaluation classifier (an ONNX model whose outputs are `probs` [N, K] and `features`
/// [N, D]) and the real reference set's features.
pub struct Evaluator {
    model: OnnxModel,
    input: ImageInput,
    pub reference_features: Vec<Vec<f32>>,
    pub class_names: Vec<String>,
}

/// Class probabilities and features of a set of images.
pub struct Classified {
    pub probs: Vec<Vec<f32>>,
    pub features: Vec<Vec<f32>>,
}

impl Classified {
    pub fn predicted(&self) -> Vec<usize> {
        self.probs
            .iter()
            .map(|r| {
                r.iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map_or(0, |(k, _)| k)
            })
            .collect()
    }
}

impl Evaluator {
    pub fn new(model_path: &Path, reference: &Dataset) -> Result<Self, OnnxError> {
        let mut ev = Self {
            model: OnnxModel::load(model_path)?,
            input: ImageInput::default(),
            reference_features: Vec::new(),
            class_names: reference.class_names.clone(),
        };
        let images: Vec<Image> = (0..reference.len()).map(|i| reference.image(i)).collect();
        ev.reference_features = ev.classify(&images)?.features;
        Ok(ev)
    }

    /// The classifier alone, without a reference set (no Fréchet distance): for classes only.
    pub fn classifier(model_path: &Path, class_names: Vec<String>) -> Result<Self, OnnxError> {
        Ok(Self {
            model: OnnxModel::load(model_path)?,
            input: ImageInput::default(),
            reference_features: Vec::new(),
            class_names,
        })
    }

    pub fn classify(&mut self, images: &[Image]) -> Result<Classified, OnnxError> {
        let mut probs = Vec::with_capacity(images.len());
        let mut features = Vec::with_capacity(images.len());
        for chunk in images.chunks(500) {
            let (shape, data) =
                preprocess(&self.input, self.model.input_shape(), chunk).map_err(|message| {
                    OnnxError::Input {
                        path: self.model.path.clone(),
                        message,
                    }
                })?;
            let outs = self.model.run(None, shape, data)?;
            if outs.len() < 2 {
                return Err(OnnxError::Model {
                    path: self.model.path.clone(),
                    message: "an evaluation classifier needs two outputs: probs and features"
                        .into(),
                });
            }
            for (dst, (_, values)) in [&mut probs, &mut features]
                .into_iter()
                .zip(outs.into_iter().take(2))
            {
                let k = values.len() / chunk.len();
                dst.extend(values.chunks(k).map(|r| r.to_vec()));
            }
        }
        Ok(Classified { probs, features })
    }

    /// Diversity of a set of samples, with the Fréchet distance to the reference set.
    pub fn diversity(&mut self, images: &[Image]) -> Result<(Diversity, Classified), OnnxError> {
        let c = self.classify(images)?;
        Ok((
            diversity::diversity(&c.probs, &c.features, Some(&self.reference_features)),
            c,
        ))
    }
}
