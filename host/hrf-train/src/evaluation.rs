//! Evaluation on fixed-seed samples: generating them in batches, classifying them with the
//! independent evaluation classifier (ONNX), and the diversity metrics of
//! `hrf_report::diversity`. Used by `hrf eval` and by evaluation during training, so both report
//! the same numbers.

use std::path::Path;

use hrf_config::features::FeatureExtractor;
use hrf_core::Image;
use hrf_data::Dataset;
use hrf_diffusion::DdimScheduler;
use hrf_report::diversity::{self, Diversity, FEATURES_CLASSIFIER};
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

/// The evaluation's feature extractor (`evaluation.features`): the testbed's classifier (an
/// ONNX model whose outputs are `probs` [N, K] and `features` [N, D]) with the real reference
/// set's features, a user's ONNX image encoder, or downsampled pixels.
pub struct Evaluator {
    extractor: Extractor,
    /// What the features are, as the reports name them.
    pub features_name: String,
    /// The reference set's features (empty: no Fréchet distance).
    pub reference_features: Vec<Vec<f32>>,
    /// The classifier's class names (empty: the features come without classes).
    pub class_names: Vec<String>,
}

enum Extractor {
    Classifier {
        model: OnnxModel,
        input: ImageInput,
    },
    Encoder {
        model: OnnxModel,
        input: ImageInput,
        output: usize,
    },
    Pixels {
        size: u32,
    },
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
    /// The classifier, with `reference`'s features for the Fréchet distance.
    pub fn new(model_path: &Path, reference: &Dataset) -> Result<Self, OnnxError> {
        let mut ev = Self::classifier(model_path, reference.class_names.clone())?;
        let images: Vec<Image> = (0..reference.len()).map(|i| reference.image(i)).collect();
        ev.reference_features = ev.classify(&images)?.features;
        Ok(ev)
    }

    /// The classifier alone, without a reference set (no Fréchet distance): for classes only.
    pub fn classifier(model_path: &Path, class_names: Vec<String>) -> Result<Self, OnnxError> {
        Ok(Self {
            extractor: Extractor::Classifier {
                model: OnnxModel::load(model_path)?,
                input: ImageInput::default(),
            },
            features_name: FEATURES_CLASSIFIER.into(),
            reference_features: Vec::new(),
            class_names,
        })
    }

    /// The evaluator `evaluation.features` names, reporting its features under
    /// [`FeatureExtractor::describe`]'s name; None for the classifier, which needs its
    /// reference set ([`Evaluator::new`]) and images it can judge.
    pub fn from_features(features: &FeatureExtractor) -> Result<Option<Self>, OnnxError> {
        let (extractor, features_name) = match features {
            FeatureExtractor::Classifier => return Ok(None),
            FeatureExtractor::Onnx {
                model,
                output,
                input,
            } => {
                let model = OnnxModel::load(model)?;
                let output = model.output_index(output)?;
                let extractor = Extractor::Encoder {
                    model,
                    input: input.clone(),
                    output,
                };
                (extractor, features.describe())
            }
            FeatureExtractor::Pixels { size } => {
                (Extractor::Pixels { size: *size }, features.describe())
            }
        };
        Ok(Some(Self {
            extractor,
            features_name,
            reference_features: Vec::new(),
            class_names: Vec::new(),
        }))
    }

    /// Each image's features, and its class probabilities when the extractor is the
    /// classifier (else `probs` is empty).
    pub fn classify(&mut self, images: &[Image]) -> Result<Classified, OnnxError> {
        let (model, input, output) = match &mut self.extractor {
            Extractor::Pixels { size } => {
                return Ok(Classified {
                    probs: Vec::new(),
                    features: images.iter().map(|im| pixel_features(im, *size)).collect(),
                })
            }
            Extractor::Classifier { model, input } => (model, &*input, None),
            Extractor::Encoder {
                model,
                input,
                output,
            } => (model, &*input, Some(*output)),
        };
        let mut probs = Vec::with_capacity(images.len());
        let mut features = Vec::with_capacity(images.len());
        let rows = |values: &[f32], n: usize| -> Vec<Vec<f32>> {
            values
                .chunks(values.len() / n)
                .map(<[f32]>::to_vec)
                .collect()
        };
        for chunk in images.chunks(500) {
            let (shape, data) =
                preprocess(input, model.input_shape(), chunk).map_err(|message| {
                    OnnxError::Input {
                        path: model.path.clone(),
                        message,
                    }
                })?;
            let outs = model.run(None, shape, data)?;
            let wrong = |message: String| OnnxError::Model {
                path: model.path.clone(),
                message,
            };
            match output {
                Some(k) => {
                    let (shape, values) = &outs[k];
                    if shape.first() != Some(&(chunk.len() as i64)) || values.is_empty() {
                        return Err(wrong(format!(
                            "output {k} has shape {shape:?}: an image encoder's output is [N, …] with N = {} images",
                            chunk.len()
                        )));
                    }
                    features.extend(rows(values, chunk.len()));
                }
                None => {
                    if outs.len() < 2 {
                        return Err(wrong(
                            "an evaluation classifier needs two outputs: probs and features".into(),
                        ));
                    }
                    probs.extend(rows(&outs[0].1, chunk.len()));
                    features.extend(rows(&outs[1].1, chunk.len()));
                }
            }
        }
        Ok(Classified { probs, features })
    }

    /// Diversity of a set of samples, with the Fréchet distance to the reference set.
    pub fn diversity(&mut self, images: &[Image]) -> Result<(Diversity, Classified), OnnxError> {
        let c = self.classify(images)?;
        Ok((
            diversity::diversity(
                &self.features_name,
                &c.probs,
                &c.features,
                (!self.reference_features.is_empty()).then_some(&self.reference_features[..]),
            ),
            c,
        ))
    }
}

/// An image's pixel features: the mean of each channel over each cell of a `size`×`size` grid
/// (cell (i, j) covers rows ⌊iH/size⌋..⌊(i+1)H/size⌋, at least one, and likewise columns),
/// scaled from 0..255 to [−1, 1]; grid-major, channels last.
pub fn pixel_features(image: &Image, size: u32) -> Vec<f32> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let c = image.channels().count();
    let s = size as usize;
    let data = image.data();
    let span = |i: usize, n: usize| {
        let lo = (i * n / s).min(n - 1);
        lo..((i + 1) * n / s).max(lo + 1)
    };
    let mut out = Vec::with_capacity(s * s * c);
    for i in 0..s {
        for j in 0..s {
            let (rows, cols) = (span(i, h), span(j, w));
            let count = (rows.len() * cols.len()) as f64;
            for ch in 0..c {
                let mut sum = 0u64;
                for y in rows.clone() {
                    for x in cols.clone() {
                        sum += u64::from(data[(y * w + x) * c + ch]);
                    }
                }
                out.push((sum as f64 / count / 127.5 - 1.0) as f32);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hrf_core::Channels;

    #[test]
    fn pixel_features_are_cell_means_scaled_to_plus_minus_one() {
        // 4×4 grey, 2×2 cells: the means of each quarter.
        let grey: Vec<u8> = vec![
            0, 0, 255, 255, //
            0, 0, 255, 255, //
            10, 20, 100, 100, //
            30, 40, 100, 100,
        ];
        let im = Image::new(4, 4, Channels::L8, grey).unwrap();
        let want = [-1.0, 1.0, 25.0 / 127.5 - 1.0, 100.0 / 127.5 - 1.0];
        let got = pixel_features(&im, 2);
        assert_eq!(got.len(), 4);
        for (g, w) in got.iter().zip(want) {
            assert!((f64::from(*g) - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        // 3×3 RGB into 2×2 cells: rows and columns 0..1 and 1..3; channels last.
        let rgb: Vec<u8> = (0..27).map(|v| v * 9).collect();
        let im = Image::new(3, 3, Channels::Rgb8, rgb.clone()).unwrap();
        let got = pixel_features(&im, 2);
        assert_eq!(got.len(), 2 * 2 * 3);
        let at = |y: usize, x: usize, c: usize| f64::from(rgb[(y * 3 + x) * 3 + c]);
        for c in 0..3 {
            let cell11 = [(1, 1), (1, 2), (2, 1), (2, 2)]
                .iter()
                .map(|&(y, x)| at(y, x, c))
                .sum::<f64>()
                / 4.0;
            let cell01 = (at(0, 1, c) + at(0, 2, c)) / 2.0;
            assert!((f64::from(got[c]) - (at(0, 0, c) / 127.5 - 1.0)).abs() < 1e-6);
            assert!((f64::from(got[3 + c]) - (cell01 / 127.5 - 1.0)).abs() < 1e-6);
            assert!((f64::from(got[9 + c]) - (cell11 / 127.5 - 1.0)).abs() < 1e-6);
        }
        // A 1-pixel image into a 2×2 grid repeats the pixel.
        let one = Image::new(1, 1, Channels::L8, vec![51]).unwrap();
        assert!(pixel_features(&one, 2)
            .iter()
            .all(|&v| (f64::from(v) - (51.0 / 127.5 - 1.0)).abs() < 1e-6));
    }

    /// The testbed's evaluation classifier read as a user's encoder (its `features` output)
    /// gives the classifier's features exactly, and no classes; a wrong output is named.
    #[test]
    fn an_onnx_encoder_gives_its_output_as_features_without_classes() {
        let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../models")
            .join(hrf_rewards::builtin::EVAL_CLASSIFIER);
        let images: Vec<Image> = (0..12u8)
            .map(|k| {
                let data = (0..32 * 32).map(|p| ((p * 7 + k as usize * 31) % 256) as u8);
                Image::new(32, 32, Channels::L8, data.collect()).unwrap()
            })
            .collect();
        let mut classifier = Evaluator::classifier(&model, vec![String::new(); 10]).unwrap();
        let c = classifier.classify(&images).unwrap();
        let onnx = |output: &str| FeatureExtractor::Onnx {
            model: model.clone(),
            output: hrf_rewards::onnx::OutputSel::Name(output.into()),
            input: ImageInput::default(),
        };
        let mut encoder = Evaluator::from_features(&onnx("features"))
            .unwrap()
            .unwrap();
        let e = encoder.classify(&images).unwrap();
        assert!(e.probs.is_empty());
        assert_eq!(e.features, c.features);
        assert_eq!(c.probs.len(), 12);
        let (d, _) = encoder.diversity(&images).unwrap();
        assert_eq!(d.features, "onnx fmnist-eval.onnx");
        assert!(d.classes.is_none() && d.fid_like.is_none());
        assert_eq!(d.vendi, diversity::vendi_score(&c.features));
        let Err(err) = Evaluator::from_features(&onnx("image_embeds")) else {
            panic!("a missing output is refused")
        };
        let msg = err.to_string();
        assert!(
            msg.contains("image_embeds") && msg.contains("features"),
            "{msg}"
        );
    }
}
