//! Reward specifications shared by the YAML pipeline and the reward runtimes: how an ONNX
//! image model's input is prepared and how models chain. Plain data (serde); hrf-rewards runs them.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    #[default]
    Nchw,
    Nhwc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum ResizeMode {
    Nearest,
    #[default]
    Bilinear,
    Bicubic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum CropMode {
    /// Resize straight to the input size (aspect ratio not kept).
    #[default]
    None,
    /// Resize the shorter side to the input size, then crop the centre (CLIP's preprocessing).
    Center,
}

/// How 8-bit images become an image model's input tensor. Defaults fit the testbed classifiers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ImageInput {
    /// The input's name; default: the model's first input.
    pub name: Option<String>,
    /// `nchw` (channels first) or `nhwc`.
    pub layout: Layout,
    /// Width and height fed to the model, each in 1..=8192; default: the model's fixed size,
    /// else the image's.
    pub size: Option<[u32; 2]>,
    /// How images are resized: `nearest`, `bilinear` or `bicubic`.
    pub resize: ResizeMode,
    /// `none` (resize to the size) or `center` (resize the shorter side, crop the centre).
    pub crop: CropMode,
    /// Per-channel mean and std applied to x/255 (one value applies to every channel).
    pub mean: Vec<f32>,
    /// Per-channel std the mean-subtracted x/255 is divided by (one value: every channel).
    pub std: Vec<f32>,
    /// Channels the model takes: grey images are repeated to RGB, RGB reduced to luma for 1.
    /// Default: the model's channel dimension.
    pub channels: Option<u8>,
}

impl Default for ImageInput {
    fn default() -> Self {
        Self {
            name: None,
            layout: Layout::Nchw,
            size: None,
            resize: ResizeMode::Bilinear,
            crop: CropMode::None,
            mean: vec![0.5],
            std: vec![0.5],
            channels: None,
        }
    }
}

impl ImageInput {
    /// CLIP ViT preprocessing (224 px, bicubic, centre crop, CLIP's mean/std, RGB).
    pub fn clip() -> Self {
        Self {
            size: Some([224, 224]),
            resize: ResizeMode::Bicubic,
            crop: CropMode::Center,
            mean: vec![0.481_454_66, 0.457_827_5, 0.408_210_73],
            std: vec![0.268_629_54, 0.261_302_6, 0.275_777_1],
            channels: Some(3),
            ..Self::default()
        }
    }
}

/// Which output of a model a stage passes on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum OutputSel {
    Index(usize),
    Name(String),
}

impl Default for OutputSel {
    fn default() -> Self {
        Self::Index(0)
    }
}

/// One model of a chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// The ONNX file, relative to the YAML file.
    pub model: PathBuf,
    /// The output passed on: its index or its name (default: the first).
    #[serde(default)]
    pub output: OutputSel,
    /// L2-normalise each row of the selected output before the next stage.
    #[serde(default)]
    pub l2_normalize: bool,
}

/// How a `kind: http` reward sends images to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum ImageEncoding {
    /// One UINT8 tensor [B, H, W, C] (every image of a request the same size).
    #[default]
    Uint8,
    /// A BYTES tensor [B] of PNG files, base64 in the JSON (tensor parameter
    /// `content_type: base64`, which MLServer decodes).
    Png,
}

/// The input tensors a `kind: http` reward sends, by name; `null` leaves one out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HttpInputs {
    /// The images (see `encoding`).
    pub images: String,
    /// The prompts, a BYTES tensor [B] of UTF-8 text; sent only when the run has prompts.
    pub prompts: Option<String>,
    /// Each sample's metadata as JSON text, a BYTES tensor [B].
    pub metadata: Option<String>,
}

impl Default for HttpInputs {
    fn default() -> Self {
        Self {
            images: "images".into(),
            prompts: Some("prompts".into()),
            metadata: Some("metadata".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_shaped_specs_deserialize() {
        let spec: ImageInput = serde_json::from_str(
            r#"{"layout": "nhwc", "size": [224, 224], "crop": "center", "resize": "bicubic"}"#,
        )
        .unwrap();
        assert_eq!(spec.layout, Layout::Nhwc);
        assert_eq!(spec.crop, CropMode::Center);
        assert!(serde_json::from_str::<ImageInput>(r#"{"layuot": "nhwc"}"#).is_err());
        let stage: StageSpec = serde_json::from_str(
            r#"{"model": "clip.onnx", "output": "image_embeds", "l2_normalize": true}"#,
        )
        .unwrap();
        assert_eq!(stage.output, OutputSel::Name("image_embeds".into()));
        let stage: StageSpec =
            serde_json::from_str(r#"{"model": "head.onnx", "output": 0}"#).unwrap();
        assert_eq!(stage.output, OutputSel::Index(0));
    }
}
