//! Rewards known by name: the JPEG rewards, and the testbed's ONNX rewards (aesthetic, prompt
//! alignment) built from the models shipped in `models/`.

use std::path::Path;

use hrf_core::Reward;

use crate::onnx::{ImageInput, OnnxChain, OnnxReward, ScorePick, StageSpec};
use crate::{JpegCompressibility, JpegDirection};

pub const NAMES: [&str; 4] = [
    "jpeg-compressibility",
    "jpeg-incompressibility",
    "aesthetic",
    "prompt-alignment",
];

/// The testbed's reward classifier, aesthetic head and evaluation classifier, under `models`.
pub const REWARD_CLASSIFIER: &str = "fmnist-classifier.onnx";
pub const AESTHETIC_HEAD: &str = "aesthetic-head.onnx";
pub const EVAL_CLASSIFIER: &str = "fmnist-eval.onnx";

/// A built-in reward by name; `classes` names the prompt classes (prompt alignment).
pub fn builtin(name: &str, models: &Path, classes: &[String]) -> Result<Box<dyn Reward>, String> {
    let chain = |stages: Vec<StageSpec>| {
        OnnxChain::load(ImageInput::default(), &stages, 256).map_err(|e| e.to_string())
    };
    match name {
        "jpeg-compressibility" => Ok(Box::new(JpegCompressibility::new(
            JpegDirection::Compressibility,
        ))),
        "jpeg-incompressibility" => Ok(Box::new(JpegCompressibility::new(
            JpegDirection::Incompressibility,
        ))),
        "aesthetic" => {
            let stages = vec![
                StageSpec {
                    model: models.join(REWARD_CLASSIFIER),
                    output: crate::onnx::OutputSel::Name("features".into()),
                    l2_normalize: true,
                },
                StageSpec {
                    model: models.join(AESTHETIC_HEAD),
                    output: crate::onnx::OutputSel::Index(0),
                    l2_normalize: false,
                },
            ];
            Ok(Box::new(OnnxReward::new(
                "aesthetic",
                chain(stages)?,
                ScorePick::Column(0),
            )))
        }
        "prompt-alignment" => {
            let stages = vec![StageSpec {
                model: models.join(REWARD_CLASSIFIER),
                output: crate::onnx::OutputSel::Name("probs".into()),
                l2_normalize: false,
            }];
            Ok(Box::new(OnnxReward::new(
                "prompt-alignment",
                chain(stages)?,
                ScorePick::PromptedClass(classes.to_vec()),
            )))
        }
        _ => Err(format!(
            "unknown reward {name:?}; built-ins: {}",
            NAMES.join(", ")
        )),
    }
}
