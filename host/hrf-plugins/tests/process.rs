//! The `process` reward kind against real CPython children (plugins/python): opt-ins, scores
//! equal to the same function run directly, and a child that hangs, dies, raises or answers NaN
//! fails its call while the next batch is scored by a fresh (or the same) child.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hrf_core::{Channels, Image, Reward, Sample};
use hrf_plugins::process::{ProcessReward, ProcessSettings};

fn python_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../plugins/python")
}

fn settings(script: &str, config: serde_json::Value) -> ProcessSettings {
    ProcessSettings {
        name: "test-process".into(),
        command: vec!["python3".into(), script.into()],
        dir: python_dir(),
        config,
        timeout: Duration::from_secs(20),
        trusted_by_pipeline: true,
        allowed_by_command_line: true,
    }
}

fn samples(flag: bool) -> Vec<Sample> {
    (0..4u8)
        .map(|i| {
            let data: Vec<u8> = (0..64u32)
                .map(|j| ((j * 7 + i as u32 * 31) % 256) as u8)
                .collect();
            Sample {
                image: Image::new(8, 8, Channels::L8, data).unwrap(),
                prompt: None,
                metadata: serde_json::json!({"misbehave": flag && i == 0}),
            }
        })
        .collect()
}

fn mean(s: &Sample) -> f32 {
    (s.image.data().iter().map(|&b| b as f64).sum::<f64>() / 64.0 / 255.0) as f32
}

#[test]
fn both_opt_ins_are_needed() {
    let mut s = settings("examples/process_contrast.py", serde_json::json!({}));
    s.allowed_by_command_line = false;
    let e = ProcessReward::load(s).err().unwrap().to_string();
    assert!(
        e.contains("--allow-native") && e.contains("test-process"),
        "{e}"
    );
}

#[test]
fn the_example_scores_what_cpython_computes() {
    let mut r = ProcessReward::load(settings(
        "examples/process_contrast.py",
        serde_json::json!({"scale": 2.0}),
    ))
    .unwrap();
    assert_eq!(r.info().version, "contrast-process 0.1.0");
    let batch = samples(false);
    let got = r.score(&batch).unwrap();
    for (s, g) in batch.iter().zip(&got) {
        let d = s.image.data();
        let m = d.iter().map(|&b| b as f64).sum::<f64>() / d.len() as f64;
        let sd = (d.iter().map(|&b| (b as f64 - m).powi(2)).sum::<f64>() / d.len() as f64).sqrt();
        assert!(
            (g.value as f64 - 2.0 * sd / 255.0).abs() < 1e-6,
            "{} vs {}",
            g.value,
            sd
        );
    }
}

#[test]
fn a_hanging_child_is_stopped_in_time_and_replaced() {
    let mut s = settings(
        "tests/process_misbehave.py",
        serde_json::json!({"mode": "hang"}),
    );
    s.timeout = Duration::from_millis(1500);
    let mut r = ProcessReward::load(s).unwrap();
    let t = Instant::now();
    let e = r.score(&samples(true)).unwrap_err().to_string();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(
        e.contains("no reply within 1.5 s") && e.contains("test-process"),
        "{e}"
    );
    let batch = samples(false);
    let got = r.score(&batch).unwrap();
    assert_eq!(got[1].value, mean(&batch[1]));
}

#[test]
fn a_dying_raising_or_nan_child_fails_the_call_and_the_next_batch_is_scored() {
    for (mode, says) in [
        ("exit", "exited"),
        ("raise", "RuntimeError: asked to fail"),
        ("nan", "not a finite number"),
    ] {
        let mut r = ProcessReward::load(settings(
            "tests/process_misbehave.py",
            serde_json::json!({"mode": mode}),
        ))
        .unwrap();
        let e = r.score(&samples(true)).unwrap_err().to_string();
        assert!(e.contains(says), "{mode}: {e}");
        let batch = samples(false);
        assert_eq!(r.score(&batch).unwrap()[2].value, mean(&batch[2]), "{mode}");
    }
}
