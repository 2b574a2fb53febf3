//! End-to-end tests of reward plugins: the example WASM plugin in `hrf plugins check` and in a
//! run, a failing plugin stopping a run with its name, and a plugin built outside the
//! workspace from a copy of wit/ and wit-bindgen alone (and refused when it targets a WIT
//! version this hrf does not run).

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{hrf, repo, text, tmp};

fn plugin(name: &str) -> PathBuf {
    let p = repo()
        .join("plugins/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(p.exists(), "{} missing: run ./setup.sh", p.display());
    p
}

fn epoch_lines(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["kind"] == "epoch")
        .collect()
}

/// `hrf run tests/pipelines/tiny-wasm.yaml` with its plugin (`rewards[0]`) replaced by `wasm`
/// and the overrides `sets` (`key=value`).
fn run_tiny_with(run: &Path, wasm: &Path, sets: &[&str]) -> std::process::Output {
    let path = format!("rewards[0].path={}", wasm.display());
    let mut all = vec![path.as_str()];
    all.extend(sets);
    common::pipeline_run("tiny-wasm.yaml", run, &all, &[])
        .output()
        .unwrap()
}

#[test]
fn the_wasm_example_checks_and_trains_like_the_builtin() {
    let o = hrf(
        &[
            "plugins",
            "check",
            plugin("jpeg_wasm").to_str().unwrap(),
            "-n",
            "3",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains("hrf:reward@0.1.0") && out.contains("sample 2:"),
        "{out}"
    );

    let d = tmp("hrf-plugins", "run");
    let run = d.join("run");
    let p = repo().join("tests/pipelines/tiny-wasm.yaml");
    let o = hrf(
        &[
            "run",
            p.to_str().unwrap(),
            "-q",
            "--run-dir",
            run.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let lines = epoch_lines(&run);
    assert_eq!(lines.len(), 2);
    for l in &lines {
        let c = &l["reward_components"];
        // The plugin computes in its sandbox exactly what the built-in computes.
        assert_eq!(c["jpeg-in-wasm"], c["jpeg-compressibility"], "{l}");
    }
    let resolved = std::fs::read_to_string(run.join("pipeline.resolved.yaml")).unwrap();
    assert!(resolved.contains("memory_mb: 64"), "{resolved}");
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn a_failing_plugin_stops_the_run_naming_it() {
    let d = tmp("hrf-plugins", "fail");
    let run = d.join("run");
    let o = run_tiny_with(
        &run,
        &plugin("misbehave"),
        &["rewards[0].config.mode=panic"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains("jpeg-in-wasm") && out.contains("trapped") && out.contains("misbehave"),
        "{out}"
    );
    // Nothing half-written: no checkpoint, no model folders.
    assert!(!run.join("final").exists() && !run.join("best").exists());
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn on_error_skip_trains_on_what_could_be_scored() {
    let d = tmp("hrf-plugins", "skip");
    // NaN for every other sample: with the default `on_error: fail` the run stops at once …
    let run = d.join("fail");
    let o = run_tiny_with(
        &run,
        &plugin("misbehave"),
        &["rewards[0].config.mode=nan-odd"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("jpeg-in-wasm"), "{}", text(&o));
    assert!(!run.join("final").exists());
    // … with `on_error: skip` those samples are left out and the run finishes.
    let run = d.join("skip");
    let o = run_tiny_with(
        &run,
        &plugin("misbehave"),
        &["rewards[0].config.mode=nan-odd", "rewards[0].on_error=skip"],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("warning: epoch 1: 4 of 8 samples skipped (on_error: skip)"),
        "{}",
        text(&o)
    );
    let lines = epoch_lines(&run);
    assert_eq!(lines.len(), 2);
    for l in &lines {
        // Batches of 4: positions 1 and 3 of each are skipped; the statistics are the kept ones'.
        assert_eq!(l["skipped"], 4, "{l}");
        assert!(l["reward_mean"].as_f64().unwrap().is_finite(), "{l}");
        assert!(
            l["reward_components"]["jpeg-in-wasm"].as_f64().unwrap() > 0.0,
            "{l}"
        );
    }
    assert!(run.join("final").exists());
    std::fs::remove_dir_all(d).unwrap();
}

/// Builds a reward plugin in a fresh folder from a copy of wit/ (its package version set to
/// `version`) and wit-bindgen from crates.io, as a third party would.
fn build_outside(dir: &Path, version: &str) -> PathBuf {
    let crate_dir = dir.join(format!("outside-{version}"));
    std::fs::create_dir_all(crate_dir.join("src")).unwrap();
    std::fs::create_dir_all(crate_dir.join("wit")).unwrap();
    let wit = std::fs::read_to_string(repo().join("wit/reward.wit"))
        .unwrap()
        .replace(
            "package hrf:reward@0.1.0;",
            &format!("package hrf:reward@{version};"),
        );
    std::fs::write(crate_dir.join("wit/reward.wit"), wit).unwrap();
    std::fs::write(
        crate_dir.join("Cargo.toml"),
        r#"[package]
name = "outside"
version = "0.1.0"
edition = "2021"

[lib]
crate-type = ["cdylib"]

[dependencies]
wit-bindgen = "0.61"

[workspace]
"#,
    )
    .unwrap();
    // Score = the fraction of pixels brighter than the middle grey.
    std::fs::write(
        crate_dir.join("src/lib.rs"),
        r#"wit_bindgen::generate!({ path: "wit", world: "reward-plugin" });

use exports::hrf::reward::reward::Guest;
use hrf::reward::types::{PluginInfo, RewardError, Sample, SampleScore};

struct Bright;

impl Guest for Bright {
    fn info() -> PluginInfo {
        PluginInfo { name: "bright".into(), version: "1.0.0".into(), higher_is_better: true, batch_hint: None }
    }
    fn configure(_config: String) -> Result<(), RewardError> {
        Ok(())
    }
    fn score(samples: Vec<Sample>) -> Result<Vec<SampleScore>, RewardError> {
        Ok(samples
            .iter()
            .map(|s| {
                let n = s.image.data.len().max(1) as f32;
                let bright = s.image.data.iter().filter(|&&b| b > 128).count() as f32;
                SampleScore { value: bright / n, extras: vec![] }
            })
            .collect())
    }
}

export!(Bright);
"#,
    )
    .unwrap();
    // One target folder for every build of this test, kept between runs.
    let target = repo().join("target/outside-plugin");
    let o = Command::new("cargo")
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .arg("--manifest-path")
        .arg(crate_dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("cargo runs");
    assert!(o.status.success(), "{}", text(&o));
    let built = target.join("wasm32-wasip2/release/outside.wasm");
    let kept = dir.join(format!("outside-{version}.wasm"));
    std::fs::copy(built, &kept).unwrap();
    kept
}

#[test]
fn a_plugin_built_outside_from_the_wit_alone_runs_and_other_versions_are_refused() {
    let d = tmp("hrf-plugins", "outside");
    let wasm = build_outside(&d, "0.1.0");
    let run = d.join("run");
    let o = run_tiny_with(&run, &wasm, &["rewards[0].config={}"]);
    assert!(o.status.success(), "{}", text(&o));
    for l in epoch_lines(&run) {
        let v = l["reward_components"]["jpeg-in-wasm"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{l}");
    }

    let newer = build_outside(&d, "0.2.0");
    let o = hrf(&["plugins", "check", newer.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("targets hrf:reward@0.2.0; this hrf runs hrf:reward@0.1.0"),
        "{}",
        text(&o)
    );
    std::fs::remove_dir_all(d).unwrap();
}

/// `hrf run tests/pipelines/NAME -q --run-dir DIR EXTRA...`.
fn run_pipeline(name: &str, dir: &Path, extra: &[&str]) -> std::process::Output {
    common::pipeline_run(name, dir, &[], extra)
        .output()
        .unwrap()
}

#[test]
fn a_native_plugin_runs_only_with_both_opt_ins() {
    let d = tmp("hrf-plugins", "native");
    let run = |dir: &Path, extra: &[&str]| run_pipeline("tiny-native.yaml", dir, extra);
    let o = run(&d.join("refused"), &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("`--allow-native`"), "{}", text(&o));
    let o = run(
        &d.join("untrusted"),
        &["--allow-native", "--set", "rewards[0].trust=maybe"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("rewards[0].trust"), "{}", text(&o));
    let ok = d.join("ok");
    let o = run(&ok, &["--allow-native"]);
    assert!(o.status.success(), "{}", text(&o));
    let v = epoch_lines(&ok)[0]["reward_components"]["brightness"]
        .as_f64()
        .unwrap();
    assert!((0.0..=1.0).contains(&v), "{v}");
    // A `process` reward (CPython over stdin/stdout) takes the same opt-ins.
    let run = |dir: &Path, extra: &[&str]| run_pipeline("tiny-process.yaml", dir, extra);
    let o = run(&d.join("process-refused"), &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let ok = d.join("process");
    let o = run(&ok, &["--allow-native"]);
    assert!(o.status.success(), "{}", text(&o));
    let v = epoch_lines(&ok)[0]["reward_components"]["contrast"]
        .as_f64()
        .unwrap();
    assert!(v > 0.0 && v < 0.5, "{v}");
    std::fs::remove_dir_all(d).unwrap();
}

/// The Python example (plugins/python/examples/contrast, packaged by set-up with
/// componentize-py) scores exactly what CPython computes with the same function, and trains.
#[test]
fn the_python_reward_matches_cpython_and_runs_in_hrf_run() {
    let wasm = repo().join("plugins/target/python/contrast.wasm");
    assert!(wasm.exists(), "{} missing: run ./setup.sh", wasm.display());
    let o = hrf(
        &["plugins", "check", wasm.to_str().unwrap(), "-n", "8"],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let ours: Vec<f64> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("sample "))
        .map(|l| l.split(':').nth(1).unwrap().trim().parse().unwrap())
        .collect();
    assert_eq!(ours.len(), 8, "{}", text(&o));
    // CPython on the same images: the first test images, padded to 32×32 with black.
    let script = r#"
import gzip, sys
sys.path.insert(0, sys.argv[1])
from contrast import contrast
raw = gzip.open('/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz').read()[16:]
for i in range(8):
    img = raw[i * 784:(i + 1) * 784]
    rows = [bytes(2) + img[r * 28:(r + 1) * 28] + bytes(2) for r in range(28)]
    print(contrast(bytes(64) + b''.join(rows) + bytes(64)))
"#;
    let py = Command::new("python3")
        .args(["-c", script])
        .arg(repo().join("plugins/python/examples/contrast"))
        .output()
        .expect("python3 runs");
    assert!(py.status.success(), "{}", text(&py));
    let cpython: Vec<f64> = String::from_utf8_lossy(&py.stdout)
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    for (a, b) in ours.iter().zip(&cpython) {
        // The WIT score is an f32: equal to CPython's f64 up to that rounding.
        assert!(
            (a - b).abs() <= 1e-7 + 1e-6 * b.abs(),
            "plugin {a} vs CPython {b}"
        );
    }
    let d = tmp("hrf-plugins", "python");
    let run = d.join("run");
    let o = run_tiny_with(&run, &wasm, &["rewards[0].config.scale=2.0"]);
    assert!(o.status.success(), "{}", text(&o));
    let v = epoch_lines(&run)[0]["reward_components"]["jpeg-in-wasm"]
        .as_f64()
        .unwrap();
    assert!(v > 0.0 && v < 2.0, "{v}");
    std::fs::remove_dir_all(d).unwrap();
}
