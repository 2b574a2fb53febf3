//! The WASM host against real components (plugins/, built by set-up for wasm32-wasip2): the
//! example JPEG plugin agrees with the built-in reward, and a plugin that misbehaves is stopped
//! with an error naming it, without harming the host or the next call.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hrf_core::{Reward, RewardError, Sample};
use hrf_plugins::{WasmReward, WasmSettings};

fn component(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../plugins/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} missing: ./setup.sh builds the plugins (cargo build --release --target wasm32-wasip2 in plugins/)",
        p.display()
    );
    p
}

fn settings(name: &str, config: serde_json::Value) -> WasmSettings {
    WasmSettings {
        name: format!("test-{name}"),
        path: component(name),
        config,
        timeout: Duration::from_secs(5),
        memory_bytes: 64 << 20,
        fuel: None,
        sha256: None,
        seed: 7,
    }
}

fn real_samples(n: usize) -> Vec<Sample> {
    let test = hrf_data::fashion_mnist(None, hrf_data::Split::Test)
        .expect("Fashion-MNIST (set-up installs dataset-fashion-mnist)")
        .fit_to(32, 0);
    (0..n)
        .map(|i| Sample {
            image: test.image(i),
            prompt: None,
            metadata: serde_json::json!({"epoch": 0}),
        })
        .collect()
}

fn misbehave(mode: &str) -> WasmSettings {
    settings("misbehave", serde_json::json!({ "mode": mode }))
}

fn failure(r: Result<Vec<hrf_core::Score>, RewardError>) -> String {
    match r {
        Err(e) => e.to_string(),
        Ok(s) => panic!("expected a failure, got {} scores", s.len()),
    }
}

#[test]
fn the_wasm_jpeg_plugin_agrees_with_the_builtin_reward() {
    let samples = real_samples(64);
    let mut builtin = hrf_rewards::jpeg::JpegCompressibility::new(
        hrf_rewards::jpeg::JpegDirection::Compressibility,
    );
    let want = builtin.score(&samples).unwrap();
    let mut plugin = WasmReward::load(settings("jpeg_wasm", serde_json::json!({}))).unwrap();
    assert_eq!(plugin.interface_version(), "0.1.0");
    let got = plugin.score(&samples).unwrap();
    assert_eq!(got.len(), 64);
    for (g, w) in got.iter().zip(&want) {
        assert!(
            (g.value - w.value).abs() <= 0.01 * w.value.abs(),
            "plugin {} vs built-in {}",
            g.value,
            w.value
        );
        assert_eq!(g.extras["bytes"], (-w.value * 1000.0).round());
    }
    // The other direction, by config.
    let mut inc = WasmReward::load(settings(
        "jpeg_wasm",
        serde_json::json!({"direction": "incompressibility"}),
    ))
    .unwrap();
    assert_eq!(inc.score(&samples[..1]).unwrap()[0].value, -got[0].value);
    // A bad config is refused at load, naming the plugin and the field.
    let e = WasmReward::load(settings("jpeg_wasm", serde_json::json!({"quality": 0})))
        .err()
        .expect("quality 0 refused")
        .to_string();
    assert!(e.contains("test-jpeg_wasm") && e.contains("quality"), "{e}");
}

#[test]
fn a_plugin_stuck_in_a_loop_times_out_and_the_next_call_runs_afresh() {
    let mut s = misbehave("loop");
    s.timeout = Duration::from_millis(300);
    let mut r = WasmReward::load(s).unwrap();
    let samples = real_samples(2);
    let t = Instant::now();
    let e = failure(r.score(&samples));
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(
        e.contains("test-misbehave") && e.contains("timed out"),
        "{e}"
    );
    // Fuel stops it too, by instruction count rather than time.
    let mut s = misbehave("loop");
    s.fuel = Some(5_000_000);
    let mut r = WasmReward::load(s).unwrap();
    let e = failure(r.score(&samples));
    assert!(e.contains("fuel"), "{e}");
}

#[test]
fn memory_past_the_cap_traps_and_names_the_plugin() {
    let mut s = misbehave("alloc");
    s.memory_bytes = 16 << 20;
    let mut r = WasmReward::load(s).unwrap();
    let e = failure(r.score(&real_samples(1)));
    assert!(e.contains("test-misbehave"), "{e}");
    assert!(e.contains("memory") || e.contains("trapped"), "{e}");
}

#[test]
fn a_panic_is_an_error_and_the_store_is_rebuilt() {
    let mut r = WasmReward::load(misbehave("panic-once")).unwrap();
    let samples = real_samples(3);
    let e = failure(r.score(&samples));
    assert!(e.contains("test-misbehave") && e.contains("trapped"), "{e}");
    // A fresh instance (its call counter back at 0) panics again, then recovers.
    let e = failure(r.score(&samples));
    assert!(e.contains("trapped"), "{e}");
    let mut ok = WasmReward::load(misbehave("ok")).unwrap();
    let want = ok.score(&samples).unwrap();
    assert!(want[0].value > 0.0 && want[0].value < 1.0);
}

#[test]
fn the_guest_sees_no_files_no_environment_and_its_output_is_bounded() {
    std::env::set_var("HRF_SECRET_FOR_THE_TEST", "1");
    let samples = real_samples(2);
    let mut fs = WasmReward::load(misbehave("fs")).unwrap();
    assert_eq!(fs.score(&samples).unwrap()[0].value, 0.0, "a file was readable");
    let mut env = WasmReward::load(misbehave("env")).unwrap();
    assert_eq!(env.score(&samples).unwrap()[0].value, 0.0, "environment leaked");
    let mut print = WasmReward::load(misbehave("print")).unwrap();
    for _ in 0..3 {
        assert_eq!(print.score(&samples).unwrap().len(), 2);
    }
}

#[test]
fn wrong_answers_are_refused() {
    let samples = real_samples(3);
    let mut r = WasmReward::load(misbehave("wrong-count")).unwrap();
    assert!(matches!(
        r.score(&samples),
        Err(RewardError::WrongCount { want: 3, got: 2, .. })
    ));
    let mut r = WasmReward::load(misbehave("nan")).unwrap();
    assert!(matches!(
        r.score(&samples),
        Err(RewardError::NotFinite { index: 0, .. })
    ));
}

#[test]
fn pins_cache_and_bad_files() {
    let dir = std::env::temp_dir().join(format!("hrf-plugins-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A wrong pin is refused before anything runs; the right one loads.
    let mut s = settings("jpeg_wasm", serde_json::json!({}));
    s.sha256 = Some("0".repeat(64));
    let e = WasmReward::load(s.clone()).err().unwrap().to_string();
    assert!(e.contains("sha256") && e.contains("test-jpeg_wasm"), "{e}");
    s.sha256 = Some(hrf_plugins::file_sha256(&s.path).unwrap().to_uppercase());
    WasmReward::load(s).unwrap();
    // Compiled once, then loaded from the cache.
    let cached = std::fs::read_dir(hrf_plugins::cache_dir().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.path().extension().is_some_and(|x| x == "cwasm"));
    assert!(cached, "no compiled component in the cache");
    // Not a component.
    let junk = dir.join("junk.wasm");
    std::fs::write(&junk, b"\0asm junk").unwrap();
    let mut s = settings("jpeg_wasm", serde_json::json!({}));
    s.path = junk;
    let e = WasmReward::load(s).err().unwrap().to_string();
    assert!(e.contains("not a valid component"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}
