//! Native plugins (plugins/native, built by set-up): both opt-ins required, the ABI checked
//! before use, a C and a Rust plugin scoring, a panic inside the Rust one reported as an error.

use std::path::PathBuf;

use hrf_core::{Channels, Image, Reward, Sample};
use hrf_plugins::native::{NativeReward, NativeSettings};

fn library(rel: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../plugins/target")
        .join(rel);
    assert!(
        p.exists(),
        "{} missing: ./setup.sh builds the native plugins",
        p.display()
    );
    p
}

fn settings(rel: &str, config: serde_json::Value) -> NativeSettings {
    NativeSettings {
        name: "test-native".into(),
        path: library(rel),
        config,
        trusted_by_pipeline: true,
        allowed_by_command_line: true,
    }
}

fn samples() -> Vec<Sample> {
    // A quarter of the pixels at 200, the rest at 100.
    let mut data = vec![100u8; 64];
    data[..16].fill(200);
    let img = Image::new(8, 8, Channels::L8, data).unwrap();
    (0..3)
        .map(|i| Sample {
            image: img.clone(),
            prompt: (i == 1).then(|| "a photo of a bag".to_string()),
            metadata: serde_json::json!({"i": i}),
        })
        .collect()
}

#[test]
fn both_opt_ins_are_needed() {
    for (trust, allow, missing) in [
        (false, true, "`trust: native`"),
        (true, false, "`--allow-native`"),
        (
            false,
            false,
            "`trust: native` in its pipeline entry and `--allow-native`",
        ),
    ] {
        let mut s = settings("native/libbrightness_c.so", serde_json::json!({}));
        s.trusted_by_pipeline = trust;
        s.allowed_by_command_line = allow;
        let e = NativeReward::load(s).err().expect("refused").to_string();
        assert!(e.contains("test-native") && e.contains(missing), "{e}");
    }
}

#[test]
fn an_abi_mismatch_is_refused_before_anything_runs() {
    let e = NativeReward::load(settings(
        "native/libbrightness_c_abi2.so",
        serde_json::json!({}),
    ))
    .err()
    .expect("refused")
    .to_string();
    assert!(
        e.contains("ABI version 2") && e.contains("version 1"),
        "{e}"
    );
}

#[test]
fn the_c_plugin_scores_and_reports_its_config_errors() {
    let mut r = NativeReward::load(settings(
        "native/libbrightness_c.so",
        serde_json::json!({"threshold": 150}),
    ))
    .unwrap();
    assert_eq!(r.info().version, "brightness-c 1.0.0");
    let got: Vec<f32> = r
        .score(&samples())
        .unwrap()
        .iter()
        .map(|s| s.value)
        .collect();
    assert_eq!(got, vec![0.25; 3]);
    let e = NativeReward::load(settings(
        "native/libbrightness_c.so",
        serde_json::json!({"threshold": 999}),
    ))
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("create failed: threshold"), "{e}");
}

#[test]
fn a_panic_inside_the_rust_plugin_comes_back_as_an_error() {
    let rel = "native-rust/release/libmean_intensity.so";
    let mut bad =
        NativeReward::load(settings(rel, serde_json::json!({"panic_on_score": true}))).unwrap();
    let e = bad.score(&samples()).unwrap_err().to_string();
    assert!(
        e.contains("asked to panic") && e.contains("test-native"),
        "{e}"
    );
    // The host goes on: the same library scores the next batch.
    let mut good = NativeReward::load(settings(rel, serde_json::json!({}))).unwrap();
    let want = (16.0 * 200.0 + 48.0 * 100.0) / (64.0 * 255.0);
    for s in good.score(&samples()).unwrap() {
        assert!((s.value - want).abs() < 1e-6, "{} vs {want}", s.value);
    }
}
