//! The testbed's ONNX models run in the host through ort and agree with Python onnxruntime
//! (fixture from tools/testbed/train_classifiers.py) within 1e-5, from the same 8-bit images.

use std::path::{Path, PathBuf};

use hrf_core::{Channels, Image, Sample};
use hrf_rewards::onnx::{ImageInput, OnnxChain, OutputSel, StageSpec};

const TOL: f32 = 1e-5;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx_testbed.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn images(f: &serde_json::Value) -> Vec<Image> {
    f["images_u8"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            let px: Vec<u8> = row
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u8)
                .collect();
            Image::new(32, 32, Channels::L8, px).unwrap()
        })
        .collect()
}

fn max_err(got: &[Vec<f32>], want: &serde_json::Value) -> f32 {
    let want: Vec<Vec<f32>> = serde_json::from_value(want.clone()).unwrap();
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(&want)
        .flat_map(|(g, w)| {
            assert_eq!(g.len(), w.len());
            g.iter().zip(w).map(|(a, b)| (a - b).abs())
        })
        .fold(0.0, f32::max)
}

#[test]
fn classifiers_match_python_onnxruntime() {
    let f = fixture();
    let imgs = images(&f);
    for name in ["fmnist-classifier", "fmnist-eval"] {
        for output in ["probs", "features"] {
            let stage = StageSpec {
                model: root().join("models").join(format!("{name}.onnx")),
                output: OutputSel::Name(output.into()),
                l2_normalize: false,
            };
            // Batches of 5 over 16 images: ragged last batch included.
            let mut chain = OnnxChain::load(ImageInput::default(), &[stage], 5).unwrap();
            let got = chain.run(&imgs).unwrap();
            let err = max_err(&got, &f[name][output]);
            println!("{name}.{output}: max abs error {err:.2e}");
            assert!(err <= TOL, "{name}.{output}: {err:e}");
        }
    }
}

#[test]
fn aesthetic_chain_matches_python_onnxruntime() {
    let f = fixture();
    let samples: Vec<Sample> = images(&f)
        .into_iter()
        .map(|image| Sample {
            image,
            prompt: None,
            metadata: serde_json::Value::Null,
        })
        .collect();
    let mut reward =
        hrf_rewards::builtin::builtin("aesthetic", &root().join("models"), &[]).unwrap();
    let got: Vec<Vec<f32>> = reward
        .score(&samples)
        .unwrap()
        .into_iter()
        .map(|s| vec![s.value])
        .collect();
    let want = serde_json::Value::Array(
        f["aesthetic"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| serde_json::json!([v]))
            .collect(),
    );
    let err = max_err(&got, &want);
    println!("aesthetic: max abs error {err:.2e}");
    assert!(err <= TOL, "{err:e}");
}

#[test]
fn prompt_alignment_reads_the_prompted_class() {
    let f = fixture();
    let classes: Vec<String> = hrf_data::FASHION_MNIST_CLASSES
        .iter()
        .map(|s| s.to_string())
        .collect();
    let probs: Vec<Vec<f32>> =
        serde_json::from_value(f["fmnist-classifier"]["probs"].clone()).unwrap();
    let img = images(&f).swap_remove(0);
    let mut reward =
        hrf_rewards::builtin::builtin("prompt-alignment", &root().join("models"), &classes)
            .unwrap();
    let samples: Vec<Sample> = [0usize, 7, 9]
        .iter()
        .map(|&c| Sample {
            image: img.clone(),
            prompt: Some(format!("a photo of a {}", classes[c])),
            metadata: serde_json::Value::Null,
        })
        .collect();
    let scores = reward.score(&samples).unwrap();
    for (s, c) in scores.iter().zip([0usize, 7, 9]) {
        assert!((s.value - probs[0][c]).abs() <= TOL);
    }
    let bad = Sample {
        image: img,
        prompt: Some("a photo of a cat".into()),
        metadata: serde_json::Value::Null,
    };
    let e = reward.score(&[bad]).unwrap_err().to_string();
    assert!(e.contains("prompt-alignment") && e.contains("cat"), "{e}");
}
