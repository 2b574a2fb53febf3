//! The WASM host against real components (plugins/, built by set-up for wasm32-wasip2): the
//! example JPEG plugin agrees with the built-in reward, and a plugin that misbehaves is stopped
//! with an error naming it, without harming the host or the next call.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hrf_core::{Reward, RewardError, Sample};
use hrf_plugins::{WasmReward, WasmSettings};
use hrf_rewards::{Component, RewardSet};

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
        models: Default::default(),
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

/// Misbehaves on batches flagged in their metadata (see `flag`), behaves on the others.
fn misbehave_once(mode: &str) -> WasmSettings {
    settings(
        "misbehave",
        serde_json::json!({ "mode": mode, "flagged": true }),
    )
}

fn flag(mut samples: Vec<Sample>) -> Vec<Sample> {
    samples[0].metadata = serde_json::json!({"misbehave": true});
    samples
}

/// After a failure, the same plugin (its store rebuilt) scores the next batch correctly.
fn recovers(r: &mut WasmReward, samples: &[Sample]) {
    let want: Vec<f32> = samples
        .iter()
        .map(|s| {
            s.image.data().iter().map(|&b| b as f32).sum::<f32>()
                / s.image.data().len() as f32
                / 255.0
        })
        .collect();
    let got: Vec<f32> = r.score(samples).unwrap().iter().map(|s| s.value).collect();
    assert_eq!(got, want);
}

#[test]
fn a_plugin_running_onnx_through_the_host_equals_the_builtin_onnx_reward() {
    let models = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models");
    let samples = real_samples(64);
    let mut builtin = hrf_rewards::builtin::builtin("aesthetic", &models, &[]).unwrap();
    let want = builtin.score(&samples).unwrap();
    let mut s = settings("aesthetic_wasm", serde_json::json!({}));
    s.models = [
        ("encoder", hrf_rewards::builtin::REWARD_CLASSIFIER),
        ("head", hrf_rewards::builtin::AESTHETIC_HEAD),
    ]
    .into_iter()
    .map(|(k, f)| (k.to_string(), models.join(f)))
    .collect();
    let mut plugin = WasmReward::load(s.clone()).unwrap();
    let got = plugin.score(&samples).unwrap();
    for (g, w) in got.iter().zip(&want) {
        assert!(
            (g.value - w.value).abs() <= 1e-5,
            "plugin {} vs built-in {}",
            g.value,
            w.value
        );
    }
    // A model the YAML did not declare is refused by name at configure time.
    s.models.remove("head");
    let e = WasmReward::load(s).err().unwrap().to_string();
    assert!(
        e.contains("no model \"head\" declared") && e.contains("encoder"),
        "{e}"
    );
}

#[test]
fn a_plugin_stuck_in_a_loop_times_out_in_time_and_the_next_call_works() {
    let mut s = misbehave_once("loop");
    s.timeout = Duration::from_millis(300);
    let mut r = WasmReward::load(s).unwrap();
    let samples = real_samples(2);
    let t = Instant::now();
    let e = failure(r.score(&flag(samples.clone())));
    let took = t.elapsed();
    // Generous: the deadline is counted by a ticker thread that a loaded machine wakes late;
    // the bug this guards against never stops at all.
    assert!(took < Duration::from_secs(3), "stopped after {took:?}");
    assert!(
        e.contains("test-misbehave") && e.contains("timed out after 0.3 s"),
        "{e}"
    );
    recovers(&mut r, &samples);
    // Fuel stops it too, by instruction count rather than time.
    let mut s = misbehave_once("loop");
    s.fuel = Some(5_000_000);
    let mut r = WasmReward::load(s).unwrap();
    let e = failure(r.score(&flag(samples.clone())));
    assert!(e.contains("ran out of fuel"), "{e}");
    recovers(&mut r, &samples);
}

#[test]
fn a_memory_bomb_stops_at_the_cap_and_the_next_call_works() {
    let mut s = misbehave_once("alloc");
    s.memory_bytes = 16 << 20;
    let mut r = WasmReward::load(s).unwrap();
    let samples = real_samples(2);
    let e = failure(r.score(&flag(samples.clone())));
    assert!(
        e.contains("test-misbehave") && e.contains("memory cap of 16 MiB"),
        "{e}"
    );
    recovers(&mut r, &samples);
}

#[test]
fn a_trap_names_the_plugin_and_version_and_the_store_is_rebuilt() {
    let mut r = WasmReward::load(misbehave_once("panic")).unwrap();
    let samples = real_samples(3);
    let e = failure(r.score(&flag(samples.clone())));
    assert!(
        e.contains("test-misbehave@misbehave 0.1.0") && e.contains("trapped"),
        "{e}"
    );
    recovers(&mut r, &samples);
    // Without `once` it traps every time, and each time cleanly.
    let mut r = WasmReward::load(misbehave("panic")).unwrap();
    for _ in 0..2 {
        assert!(failure(r.score(&samples)).contains("trapped"));
    }
}

#[test]
fn the_guest_can_open_no_host_file_reach_no_port_and_sees_no_environment() {
    let samples = real_samples(2);
    // An existing host file, and a port that is listening.
    let secret = std::env::temp_dir().join(format!("hrf-secret-{}", std::process::id()));
    std::fs::write(&secret, b"secret").unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    let cfg = |mode: &str| {
        settings(
            "misbehave",
            serde_json::json!({"mode": mode, "file": secret.to_str().unwrap(), "port": port}),
        )
    };
    let mut fs = WasmReward::load(cfg("fs")).unwrap();
    assert_eq!(
        fs.score(&samples).unwrap()[0].value,
        0.0,
        "a host file was readable"
    );
    let mut net = WasmReward::load(cfg("net")).unwrap();
    assert_eq!(
        net.score(&samples).unwrap()[0].value,
        0.0,
        "the port was reachable"
    );
    let mut env = WasmReward::load(cfg("env")).unwrap();
    assert_eq!(
        env.score(&samples).unwrap()[0].value,
        0.0,
        "environment leaked"
    );
    let mut print = WasmReward::load(misbehave("print")).unwrap();
    for _ in 0..3 {
        recovers(&mut print, &samples);
    }
    std::fs::remove_file(secret).unwrap();
}

#[test]
fn wrong_answers_are_refused_and_the_next_call_works() {
    let samples = real_samples(3);
    let mut r = WasmReward::load(misbehave_once("wrong-count")).unwrap();
    assert!(matches!(
        r.score(&flag(samples.clone())),
        Err(RewardError::WrongCount {
            want: 3,
            got: 2,
            ..
        })
    ));
    recovers(&mut r, &samples);
    for mode in ["nan", "inf"] {
        // The plugin hands back what it computed; the reward set refuses it (or, with
        // `on_error: skip`, skips those samples: the next test).
        let mut r = WasmReward::load(misbehave_once(mode)).unwrap();
        let scores = r.score(&flag(samples.clone())).unwrap();
        assert!(matches!(
            hrf_core::check_scores(&r.info(), 3, &scores),
            Err(RewardError::NotFinite { index: 0, .. })
        ));
        recovers(&mut r, &samples);
    }
}

#[test]
fn with_on_error_skip_a_failing_batch_is_skipped_and_the_next_is_scored() {
    let samples = real_samples(3);
    let mut quick = misbehave_once("loop");
    quick.timeout = Duration::from_millis(300);
    let mut set = RewardSet::new(
        [
            quick,
            misbehave_once("panic"),
            misbehave_once("wrong-count"),
            misbehave_once("inf"),
        ]
        .into_iter()
        .map(|s| Component {
            name: s.name.clone(),
            weight: 1.0,
            reward: Box::new(WasmReward::load(s).unwrap()),
            skip_failures: true,
        })
        .collect(),
    );
    let bad = set.score(&flag(samples.clone())).unwrap();
    assert_eq!(bad.skipped, vec![true; 3]);
    let why = bad.skip_reasons.join("\n");
    for what in ["timed out", "trapped", "scores for 3 samples", "non-finite"] {
        assert!(why.contains(what), "{what}: {why}");
    }
    // The same set, its plugins' stores rebuilt, scores the next batch.
    let good = set.score(&samples).unwrap();
    assert_eq!(good.skipped, vec![false; 3]);
    assert!(good.skip_reasons.is_empty());
    assert!(good.total.iter().all(|t| t.is_finite()));
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

// --- Time: a guest blocked inside a host call -------------------------------------------------
//
// The margins below are generous on purpose: a 1 s timeout must fail its call by 1 s + the
// host's grace (0.25 s); the tests allow 4 s so that a loaded 2-core machine cannot fail them,
// while a host that waits for the guest's hour-long sleep (the bug) fails them for certain.

fn sleeper(extra: serde_json::Value) -> WasmSettings {
    let mut config = serde_json::json!({"mode": "sleep", "flagged": true});
    config
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let mut s = settings("misbehave", config);
    s.timeout = Duration::from_secs(1);
    s
}

#[test]
fn a_guest_blocked_in_a_wasi_sleep_fails_within_the_timeout_and_the_next_call_works() {
    let samples = real_samples(2);
    let mut r = WasmReward::load(sleeper(serde_json::json!({}))).unwrap();
    for _ in 0..2 {
        let t = Instant::now();
        let e = failure(r.score(&flag(samples.clone())));
        let took = t.elapsed();
        assert!(took < Duration::from_secs(4), "stopped after {took:?}");
        assert!(took >= Duration::from_secs(1), "stopped after {took:?}");
        assert!(
            e.contains("test-misbehave")
                && e.contains("timed out after 1.0 s")
                && e.contains("blocked inside a host call"),
            "{e}"
        );
        // A fresh instance scores the next batch.
        recovers(&mut r, &samples);
    }
    // A short sleep is no failure: WASI clocks still work.
    let mut short = WasmReward::load(sleeper(serde_json::json!({"sleep_s": 0.05}))).unwrap();
    assert_eq!(short.score(&flag(samples.clone())).unwrap()[0].value, 0.5);
}

#[test]
fn a_guest_sleeping_in_configure_fails_its_load_within_the_timeout() {
    let t = Instant::now();
    let e = WasmReward::load(sleeper(serde_json::json!({"sleep_in_configure": true})))
        .err()
        .expect("load fails")
        .to_string();
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    assert!(
        e.contains("test-misbehave") && e.contains("timed out after 1.0 s"),
        "{e}"
    );
}

#[test]
fn abandoned_calls_are_bounded_per_plugin() {
    let samples = flag(real_samples(1));
    let mut s = sleeper(serde_json::json!({}));
    s.timeout = Duration::from_millis(300);
    let mut r = WasmReward::load(s).unwrap();
    for _ in 0..hrf_plugins::MAX_STUCK {
        assert!(failure(r.score(&samples)).contains("blocked inside a host call"));
    }
    // Each abandoned call still sleeps, holding its store: no fifth one is started.
    let t = Instant::now();
    let e = failure(r.score(&samples));
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(
        e.contains(&format!(
            "{} earlier calls of this plugin are still blocked",
            hrf_plugins::MAX_STUCK
        )),
        "{e}"
    );
}

// --- Text: sizes and control characters --------------------------------------------------------

#[test]
fn a_100_mib_error_message_and_extra_name_are_cut() {
    let samples = real_samples(2);
    let mut s = misbehave("huge-error");
    s.memory_bytes = 512 << 20;
    let mut r = WasmReward::load(s).unwrap();
    for _ in 0..3 {
        let e = failure(r.score(&samples));
        assert!(
            e.len() < 2 * hrf_core::text::MAX_MESSAGE,
            "{} bytes",
            e.len()
        );
        assert!(
            e.contains(&format!(
                "EEEE… ({} bytes cut)",
                (100 << 20) - hrf_core::text::MAX_MESSAGE
            )),
            "{}",
            &e[e.len() - 60..]
        );
    }
    let mut s = misbehave("huge-extra");
    s.memory_bytes = 512 << 20;
    let mut r = WasmReward::load(s).unwrap();
    // Two 100 MiB names are more than a call may hand the host (HOSTCALL_BYTES): a trap.
    let e = failure(r.score(&samples));
    assert!(e.contains("too much data"), "{e}");
    let got = r.score(&samples[..1]).unwrap();
    let names: Vec<&String> = got[0].extras.keys().collect();
    assert_eq!(names.len(), 1);
    assert!(
        names[0].len() < 2 * hrf_core::text::MAX_NAME && names[0].ends_with(" bytes cut)"),
        "{}",
        names[0].len()
    );
}

#[test]
fn control_characters_in_errors_and_extras_are_escaped_and_nan_extras_dropped() {
    let samples = real_samples(2);
    let mut r = WasmReward::load(misbehave("inject-error")).unwrap();
    let e = failure(r.score(&samples));
    assert!(!e.chars().any(char::is_control), "{e:?}");
    assert!(
        e.contains(
            "\\x1b[31mred\\x1b[0m\\r\\nepoch 9/9: reward 99.0 (forged)\\0nul\\x1b]0;title\\x07"
        ),
        "{e}"
    );
    let mut s = misbehave("inject");
    s.config["extras"] = 100.into();
    let mut r = WasmReward::load(s).unwrap();
    for score in r.score(&samples).unwrap() {
        // The forged name (escaped), then the first of the 100 numbered extras, up to the cap;
        // the NaN one is dropped.
        assert_eq!(score.extras.len(), hrf_core::text::MAX_EXTRAS);
        assert!(!score.extras.contains_key("not-a-number"));
        assert!(score.extras.values().all(|v| v.is_finite()));
        for name in score.extras.keys() {
            assert!(!name.chars().any(char::is_control), "{name:?}");
        }
        assert!(score.extras.keys().any(|k| k.starts_with("\\x1b[31mred")));
    }
}
