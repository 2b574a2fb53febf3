//! `evaluation.features`: the image features a run's diversity (Vendi score, per-prompt Vendi,
//! the Fréchet distance to a reference set) is measured in. The testbed's independent
//! evaluation classifier gives class metrics as well; a user's ONNX image encoder (a CLIP or
//! DINO image tower) gives features alone; downsampled pixels are the fallback for models
//! neither fits, a weak measure that the reports name.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::reward::{ImageInput, OutputSel};

/// Side of the pixel features' downsampled image by default (16×16×channels values).
pub const PIXEL_FEATURES_SIZE: u32 = 16;

/// The largest side of the pixel features' downsampled image.
pub const PIXEL_FEATURES_MAX_SIZE: u32 = 64;

/// Where the evaluation's image features come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum FeatureExtractor {
    /// The testbed's independent evaluation classifier (models/fmnist-eval.onnx, 1-channel
    /// images), with the real Fashion-MNIST test split as the Fréchet reference: also the class
    /// entropy, classes covered and per-prompt class accuracy. The default for pixel models.
    Classifier,
    /// An ONNX image encoder (e.g. a CLIP or DINO image tower exported to ONNX): one feature
    /// vector per image from the chosen output, flattened per image. No class metrics and no
    /// reference set.
    Onnx {
        /// The ONNX file, relative to the YAML file.
        model: PathBuf,
        /// The output used: its index or its name (default: the first).
        #[serde(default)]
        output: OutputSel,
        /// How 8-bit images become its input (as an `onnx` reward's `input`; a CLIP tower
        /// needs `size: [224, 224]`, `crop: center`, `resize: bicubic` and CLIP's mean/std).
        #[serde(default)]
        input: ImageInput,
    },
    /// The images themselves, area-downsampled to `size`×`size` per channel and scaled to
    /// [−1, 1]: a weak measure of diversity (it sees layout and colour, not content), the
    /// default for Stable Diffusion pipelines, which the testbed's classifier cannot judge.
    Pixels {
        /// Side of the downsampled image, 1..=64 (default 16).
        #[serde(default = "pixel_features_size")]
        size: u32,
    },
}

fn pixel_features_size() -> u32 {
    PIXEL_FEATURES_SIZE
}

impl FeatureExtractor {
    /// The default for a model: pixel features for a text-to-image pipeline, else the
    /// testbed's classifier.
    pub fn default_for(text_to_image: bool) -> Self {
        if text_to_image {
            Self::Pixels {
                size: PIXEL_FEATURES_SIZE,
            }
        } else {
            Self::Classifier
        }
    }

    /// Whether the features come with class probabilities (class entropy and coverage).
    pub fn has_classes(&self) -> bool {
        matches!(self, Self::Classifier)
    }

    /// A short name for the reports ("classifier", "onnx clip.onnx", "pixels 16×16 (weak)").
    pub fn describe(&self) -> String {
        match self {
            Self::Classifier => "classifier".into(),
            Self::Onnx { model, .. } => format!(
                "onnx {}",
                model.file_name().unwrap_or_default().to_string_lossy()
            ),
            Self::Pixels { size } => format!("pixels {size}×{size} (weak)"),
        }
    }
}
