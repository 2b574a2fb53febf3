//! transformers' CLIPTextModel in hrf against transformers itself: two tiny random encoders
//! (quick_gelu as SD 1.x's, gelu as SD 2.x's) saved with save_pretrained, and their
//! last_hidden_state for three id sequences of 77 (fixture by
//! tools/parity/make_clip_text_fixture.py), within 1e-4 (fp32, CPU).

use std::path::PathBuf;

use hrf_diffusion::clip_text::ClipTextModel;
use tch::{Device, Tensor};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip-text")
}

#[test]
fn last_hidden_states_match_transformers() {
    let f: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("outputs.json")).unwrap())
            .unwrap();
    let ids: Vec<i64> = f["ids"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_i64().unwrap()))
        .collect();
    let ids = Tensor::from_slice(&ids).view([3, 77]);
    let mut outputs = Vec::new();
    for act in ["quick_gelu", "gelu"] {
        let model = ClipTextModel::load(&fixtures().join(act), Device::Cpu).unwrap();
        assert_eq!(model.config.hidden_act, act);
        let got = tch::no_grad(|| model.forward(&ids));
        assert_eq!(got.size(), [3, 77, 32]);
        let want: Vec<f32> = f["models"][act]["last_hidden_state"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|a| a.as_array().unwrap().iter())
            .flat_map(|a| {
                a.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
            })
            .collect();
        let want = Tensor::from_slice(&want).view([3, 77, 32]);
        let err = (&got - &want).abs().max().double_value(&[]);
        let scale = want.abs().max().double_value(&[]);
        assert!(
            err <= 1e-4,
            "{act}: max abs error {err:e} (values up to {scale:.2})"
        );
        eprintln!("{act}: max abs error {err:e} against transformers (values up to {scale:.2})");
        outputs.push(got);
    }
    // The check can fail: the two encoders (other weights, other activation) differ by far more.
    let apart = (&outputs[0] - &outputs[1]).abs().max().double_value(&[]);
    assert!(apart > 0.1, "{apart}");
}

#[test]
fn weights_that_do_not_fit_are_named() {
    let dir = std::env::temp_dir().join(format!("hrf-clip-text-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = std::fs::read_to_string(fixtures().join("gelu/config.json")).unwrap();
    // Another depth: the file's layer 2 is left over.
    std::fs::write(
        dir.join("config.json"),
        config.replace("\"num_hidden_layers\": 3", "\"num_hidden_layers\": 2"),
    )
    .unwrap();
    std::fs::copy(
        fixtures().join("gelu/model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let e = ClipTextModel::load(&dir, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("unexpected keys") && e.contains("encoder.layers.2."),
        "{e}"
    );
    std::fs::write(
        dir.join("config.json"),
        config.replace("\"hidden_act\": \"gelu\"", "\"hidden_act\": \"relu\""),
    )
    .unwrap();
    let e = ClipTextModel::load(&dir, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("config.json") && e.contains("hidden_act"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}
