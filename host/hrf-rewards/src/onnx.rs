//! ONNX models as rewards and feature extractors, through ONNX Runtime (ort, load-dynamic).
//!
//! An image model's input is described by `ImageInput` (input name, layout, size, resize and crop,
//! mean/std normalisation, grey↔RGB), so a real CLIP or LAION-aesthetic export plugs in by path.
//! Models chain: each later stage takes the previous stage's selected output, optionally
//! L2-normalised (CLIP image features → L2-normalise → aesthetic MLP head).

use std::path::{Path, PathBuf};

use hrf_core::{Channels, Image, Reward, RewardError, RewardInfo, Sample, Score};
use ort::session::Session;
use ort::value::Tensor;

/// The specification types live in hrf-config (the pipeline YAML names them); re-exported here so
/// the runtime and its callers keep one path.
pub use hrf_config::reward::{CropMode, ImageInput, Layout, OutputSel, ResizeMode, StageSpec};

#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("{path}: {message}")]
    Model { path: PathBuf, message: String },
    #[error("onnxruntime: {0}")]
    Runtime(String),
    #[error("{path}: {message}")]
    Input { path: PathBuf, message: String },
}

/// One output of a run: its shape and its values, row-major.
pub type OutputValues = (Vec<i64>, Vec<f32>);

/// A loaded ONNX model.
pub struct OnnxModel {
    pub path: PathBuf,
    session: Session,
    input_name: String,
    /// The model's first input shape (−1 for dynamic dims).
    input_shape: Vec<i64>,
    input_names: Vec<String>,
    output_names: Vec<String>,
}

fn model_err(path: &Path) -> impl Fn(String) -> OnnxError + '_ {
    move |message| OnnxError::Model {
        path: path.to_path_buf(),
        message,
    }
}

impl OnnxModel {
    pub fn load(path: &Path) -> Result<Self, OnnxError> {
        let rt = crate::onnx_runtime::init().map_err(OnnxError::Runtime)?;
        if !path.exists() {
            return Err(model_err(path)("model file not found".into()));
        }
        let session = Session::builder(&rt.env)
            .map_err(|e| model_err(path)(e.to_string()))?
            .commit_from_file(path)
            .map_err(|e| model_err(path)(e.to_string()))?;
        let first = session
            .inputs()
            .first()
            .ok_or_else(|| model_err(path)("the model has no inputs".into()))?;
        let input_name = first.name().to_string();
        let input_shape = first
            .dtype()
            .tensor_shape()
            .map(|s| s.to_vec())
            .unwrap_or_default();
        let output_names = session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        let input_names = session
            .inputs()
            .iter()
            .map(|i| i.name().to_string())
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            session,
            input_name,
            input_shape,
            input_names,
            output_names,
        })
    }

    pub fn input_shape(&self) -> &[i64] {
        &self.input_shape
    }

    pub fn output_names(&self) -> &[String] {
        &self.output_names
    }

    pub fn input_names(&self) -> &[String] {
        &self.input_names
    }

    /// The index of the output `sel` names, or an error naming the model's outputs.
    pub fn output_index(&self, sel: &OutputSel) -> Result<usize, OnnxError> {
        match sel {
            OutputSel::Index(i) if *i < self.output_names.len() => Ok(*i),
            OutputSel::Index(i) => Err(model_err(&self.path)(format!(
                "output index {i} out of range: the model has outputs {:?}",
                self.output_names
            ))),
            OutputSel::Name(n) => self
                .output_names
                .iter()
                .position(|o| o == n)
                .ok_or_else(|| {
                    model_err(&self.path)(format!(
                        "no output named {n:?}; it has {:?}",
                        self.output_names
                    ))
                }),
        }
    }

    /// Runs the model on one f32 input and returns every output as (shape, values).
    pub fn run(
        &mut self,
        input_name: Option<&str>,
        shape: Vec<i64>,
        data: Vec<f32>,
    ) -> Result<Vec<OutputValues>, OnnxError> {
        let name = input_name.unwrap_or(&self.input_name).to_string();
        let path = self.path.clone();
        let err = |e: ort::Error| OnnxError::Model {
            path: path.clone(),
            message: e.to_string(),
        };
        let tensor = Tensor::from_array((shape, data)).map_err(err)?;
        let outputs = self
            .session
            .run(ort::inputs![name => tensor])
            .map_err(err)?;
        let mut out = Vec::with_capacity(outputs.len());
        for i in 0..outputs.len() {
            let (shape, values) = outputs[i].try_extract_tensor::<f32>().map_err(err)?;
            out.push((shape.to_vec(), values.to_vec()));
        }
        Ok(out)
    }
}

/// Converts 8-bit images to the model input described by `spec`, for a model whose first input
/// has `model_shape`.
pub fn preprocess(
    spec: &ImageInput,
    model_shape: &[i64],
    images: &[Image],
) -> Result<(Vec<i64>, Vec<f32>), String> {
    let first = images.first().ok_or("no images")?;
    let dim = |nchw: usize, nhwc: usize| -> Option<i64> {
        let i = if spec.layout == Layout::Nchw {
            nchw
        } else {
            nhwc
        };
        model_shape.get(i).copied().filter(|&d| d > 0)
    };
    let channels = spec
        .channels
        .map(i64::from)
        .or(dim(1, 3))
        .unwrap_or(first.channels().count() as i64);
    if channels != 1 && channels != 3 {
        return Err(format!(
            "the model takes {channels} channels; only 1 or 3 are supported"
        ));
    }
    let (w, h) = match spec.size {
        Some([w, h]) => (w, h),
        None => match (dim(3, 2), dim(2, 1)) {
            (Some(w), Some(h)) => (w as u32, h as u32),
            _ => (first.width(), first.height()),
        },
    };
    let mean = |c: usize| {
        spec.mean
            .get(c)
            .or(spec.mean.first())
            .copied()
            .unwrap_or(0.0)
    };
    let std = |c: usize| spec.std.get(c).or(spec.std.first()).copied().unwrap_or(1.0);
    let c = channels as usize;
    let plane = (w * h) as usize;
    let mut data = vec![0f32; images.len() * plane * c];
    for (n, img) in images.iter().enumerate() {
        let rgb = fit(img, w, h, spec.resize, spec.crop);
        for p in 0..plane {
            let px = &rgb[p * 3..p * 3 + 3];
            for ch in 0..c {
                let v = if c == 1 {
                    0.299 * px[0] as f32 + 0.587 * px[1] as f32 + 0.114 * px[2] as f32
                } else {
                    px[ch] as f32
                };
                let v = (v / 255.0 - mean(ch)) / std(ch);
                let i = match spec.layout {
                    Layout::Nchw => n * plane * c + ch * plane + p,
                    Layout::Nhwc => n * plane * c + p * c + ch,
                };
                data[i] = v;
            }
        }
    }
    let shape = match spec.layout {
        Layout::Nchw => vec![images.len() as i64, channels, h as i64, w as i64],
        Layout::Nhwc => vec![images.len() as i64, h as i64, w as i64, channels],
    };
    Ok((shape, data))
}

/// The image as RGB bytes at w×h (grey repeated; exact when no resize is needed).
fn fit(img: &Image, w: u32, h: u32, resize: ResizeMode, crop: CropMode) -> Vec<u8> {
    let rgb: Vec<u8> = match img.channels() {
        Channels::Rgb8 => img.data().to_vec(),
        Channels::L8 => img.data().iter().flat_map(|&v| [v, v, v]).collect(),
    };
    if img.width() == w && img.height() == h {
        return rgb;
    }
    let filter = match resize {
        ResizeMode::Nearest => image::imageops::FilterType::Nearest,
        ResizeMode::Bilinear => image::imageops::FilterType::Triangle,
        ResizeMode::Bicubic => image::imageops::FilterType::CatmullRom,
    };
    let buf = image::RgbImage::from_raw(img.width(), img.height(), rgb).expect("sizes");
    match crop {
        CropMode::None => image::imageops::resize(&buf, w, h, filter).into_raw(),
        CropMode::Center => {
            let scale = (w as f64 / img.width() as f64).max(h as f64 / img.height() as f64);
            let (rw, rh) = (
                ((img.width() as f64 * scale).round() as u32).max(w),
                ((img.height() as f64 * scale).round() as u32).max(h),
            );
            let resized = image::imageops::resize(&buf, rw, rh, filter);
            image::imageops::crop_imm(&resized, (rw - w) / 2, (rh - h) / 2, w, h)
                .to_image()
                .into_raw()
        }
    }
}

/// A chain of ONNX models: images → stage 0 → (L2-normalise) → stage 1 → … → a matrix [N, K].
pub struct OnnxChain {
    pub input: ImageInput,
    stages: Vec<(OnnxModel, usize, bool)>,
    pub batch_size: usize,
}

impl OnnxChain {
    pub fn load(
        input: ImageInput,
        stages: &[StageSpec],
        batch_size: usize,
    ) -> Result<Self, OnnxError> {
        if stages.is_empty() {
            return Err(OnnxError::Runtime(
                "an onnx reward needs at least one model".into(),
            ));
        }
        let mut loaded = Vec::new();
        for s in stages {
            let m = OnnxModel::load(&s.model)?;
            let out = m.output_index(&s.output)?;
            loaded.push((m, out, s.l2_normalize));
        }
        Ok(Self {
            input,
            stages: loaded,
            batch_size: batch_size.max(1),
        })
    }

    /// Every row of the last stage's selected output, `[N][K]`.
    pub fn run(&mut self, images: &[Image]) -> Result<Vec<Vec<f32>>, OnnxError> {
        let mut rows = Vec::with_capacity(images.len());
        for chunk in images.chunks(self.batch_size) {
            rows.extend(self.run_batch(chunk)?);
        }
        Ok(rows)
    }

    fn run_batch(&mut self, images: &[Image]) -> Result<Vec<Vec<f32>>, OnnxError> {
        let n = images.len();
        let first_path = self.stages[0].0.path.clone();
        let (mut shape, mut data) = preprocess(&self.input, self.stages[0].0.input_shape(), images)
            .map_err(|message| OnnxError::Input {
                path: first_path,
                message,
            })?;
        let input_name = self.input.name.clone();
        for (i, (model, out, l2)) in self.stages.iter_mut().enumerate() {
            let name = if i == 0 { input_name.as_deref() } else { None };
            let mut outs = model.run(name, shape, data)?;
            let (s, mut v) = outs.swap_remove(*out);
            let k = v.len() / n.max(1);
            if s.first().copied() != Some(n as i64) || k * n != v.len() {
                return Err(model_err(&model.path)(format!(
                    "output shape {s:?} is not [batch {n}, …]"
                )));
            }
            if *l2 {
                for row in v.chunks_mut(k) {
                    let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                    row.iter_mut().for_each(|x| *x /= norm);
                }
            }
            shape = vec![n as i64, k as i64];
            data = v;
        }
        let k = data.len() / n.max(1);
        Ok(data.chunks(k).map(|r| r.to_vec()).collect())
    }
}

/// What an ONNX reward takes from the chain's output row.
#[derive(Debug, Clone, PartialEq)]
pub enum ScorePick {
    /// A fixed column (an aesthetic score: column 0).
    Column(usize),
    /// The column of the sample's prompted class (prompt alignment): the class whose name the
    /// prompt ends with ("a photo of a {class}"), longest match first.
    PromptedClass(Vec<String>),
}

/// A reward computed by an ONNX chain.
pub struct OnnxReward {
    pub name: String,
    chain: OnnxChain,
    pick: ScorePick,
}

impl OnnxReward {
    pub fn new(name: impl Into<String>, chain: OnnxChain, pick: ScorePick) -> Self {
        Self {
            name: name.into(),
            chain,
            pick,
        }
    }

    fn column_for(&self, prompt: Option<&str>, index: usize) -> Result<usize, RewardError> {
        match &self.pick {
            ScorePick::Column(c) => Ok(*c),
            ScorePick::PromptedClass(classes) => {
                let p = prompt.ok_or_else(|| RewardError::Failed {
                    reward: self.info().label(),
                    message: format!("sample {index} has no prompt; prompt alignment needs one"),
                })?;
                class_of_prompt(classes, p).ok_or_else(|| RewardError::Failed {
                    reward: self.info().label(),
                    message: format!(
                        "sample {index}: prompt {p:?} names none of the classes {classes:?}"
                    ),
                })
            }
        }
    }
}

pub use hrf_core::class_of_prompt;

impl Reward for OnnxReward {
    fn info(&self) -> RewardInfo {
        RewardInfo {
            name: self.name.clone(),
            version: "onnx".into(),
            higher_is_better: true,
            batch_hint: Some(self.chain.batch_size as u32),
        }
    }

    fn score(&mut self, samples: &[Sample]) -> Result<Vec<Score>, RewardError> {
        let images: Vec<Image> = samples.iter().map(|s| s.image.clone()).collect();
        let label = self.info().label();
        let rows = self.chain.run(&images).map_err(|e| RewardError::Failed {
            reward: label.clone(),
            message: e.to_string(),
        })?;
        samples
            .iter()
            .zip(rows)
            .enumerate()
            .map(|(i, (s, row))| {
                let col = self.column_for(s.prompt.as_deref(), i)?;
                let v = *row.get(col).ok_or_else(|| RewardError::Failed {
                    reward: label.clone(),
                    message: format!(
                        "column {col} out of range: the output has {} values",
                        row.len()
                    ),
                })?;
                Ok(Score::new(v))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grey(w: u32, h: u32, f: impl Fn(u32, u32) -> u8) -> Image {
        let data = (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .map(|(x, y)| f(x, y))
            .collect();
        Image::new(w, h, Channels::L8, data).unwrap()
    }

    #[test]
    fn testbed_defaults_map_bytes_to_unit_range() {
        let img = grey(2, 1, |x, _| if x == 0 { 0 } else { 255 });
        let (shape, data) = preprocess(&ImageInput::default(), &[-1, 1, 1, 2], &[img]).unwrap();
        assert_eq!(shape, [1, 1, 1, 2]);
        assert_eq!(data, [-1.0, 1.0]);
    }

    #[test]
    fn clip_style_input_is_rgb_nhwc_cropped_and_normalised() {
        // A 4×2 grey image whose left half is black and right half white, fed to a model that
        // takes 2×2 RGB NHWC: resize the shorter side to 2 (→ 4×2 stays), crop the centre 2×2.
        let img = grey(4, 2, |x, _| if x < 2 { 0 } else { 255 });
        let spec = ImageInput {
            layout: Layout::Nhwc,
            size: Some([2, 2]),
            resize: ResizeMode::Nearest,
            crop: CropMode::Center,
            mean: vec![0.0, 0.5, 1.0],
            std: vec![1.0, 0.5, 2.0],
            channels: Some(3),
            ..ImageInput::default()
        };
        let (shape, data) = preprocess(&spec, &[-1, 224, 224, 3], &[img]).unwrap();
        assert_eq!(shape, [1, 2, 2, 3]);
        // Pixel (0,0) is black: per channel (0 − mean)/std; pixel (1,0) is white: (1 − mean)/std.
        assert_eq!(&data[0..3], &[0.0, -1.0, -0.5]);
        assert_eq!(&data[3..6], &[1.0, 1.0, 0.0]);
    }

    #[test]
    fn rgb_to_grey_uses_luma_and_sizes_come_from_the_model() {
        let img = Image::new(
            2,
            2,
            Channels::Rgb8,
            vec![255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255],
        )
        .unwrap();
        let spec = ImageInput {
            mean: vec![0.0],
            std: vec![1.0],
            ..ImageInput::default()
        };
        let (shape, data) = preprocess(&spec, &[-1, 1, 2, 2], &[img]).unwrap();
        assert_eq!(shape, [1, 1, 2, 2]);
        let want = [0.299f32, 0.587, 0.114, 1.0];
        for (a, b) in data.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{data:?}");
        }
    }
}
