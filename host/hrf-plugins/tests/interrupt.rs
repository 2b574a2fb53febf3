//! A stop request (Ctrl-C, SIGTERM: `hrf_core::interrupt::STOP`) ends a plugin call that is
//! blocked for a long time, without waiting for its timeout. Alone in its test binary: the flag
//! is process-wide.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hrf_core::{Channels, Image, Reward, Sample};
use hrf_plugins::process::{ProcessReward, ProcessSettings};
use hrf_plugins::{WasmReward, WasmSettings};

fn samples(flag: bool) -> Vec<Sample> {
    (0..2)
        .map(|_| Sample {
            image: Image::new(8, 8, Channels::L8, vec![51; 64]).unwrap(),
            prompt: None,
            metadata: serde_json::json!({"misbehave": flag}),
        })
        .collect()
}

/// Sets the stop flag after `after`, and times `f`; clears the flag again.
fn interrupted_after<T>(after: Duration, f: impl FnOnce() -> T) -> (T, Duration) {
    let setter = std::thread::spawn(move || {
        std::thread::sleep(after);
        hrf_core::interrupt::STOP.store(true, Ordering::SeqCst);
    });
    let t = Instant::now();
    let out = f();
    let took = t.elapsed();
    setter.join().unwrap();
    hrf_core::interrupt::STOP.store(false, Ordering::SeqCst);
    (out, took)
}

#[test]
fn a_stop_request_ends_blocked_wasm_and_process_calls_at_once() {
    let wasm = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../plugins/target/wasm32-wasip2/release/misbehave.wasm");
    assert!(wasm.exists(), "{} missing: run ./setup.sh", wasm.display());
    let mut r = WasmReward::load(WasmSettings {
        name: "sleepy".into(),
        path: wasm,
        config: serde_json::json!({"mode": "sleep", "flagged": true}),
        // Far longer than the test: only the stop request can end the call in time.
        timeout: Duration::from_secs(120),
        memory_bytes: 64 << 20,
        fuel: None,
        sha256: None,
        seed: 1,
        models: Default::default(),
    })
    .unwrap();
    let (e, took) = interrupted_after(Duration::from_millis(500), || {
        r.score(&samples(true)).unwrap_err().to_string()
    });
    // 0.5 s until the flag, then one 20 ms poll: 5 s is a margin no loaded machine reaches.
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(e.contains("sleepy") && e.contains("interrupted"), "{e}");
    assert_eq!(r.score(&samples(false)).unwrap()[0].value, 0.2);

    let mut p = ProcessReward::load(ProcessSettings {
        name: "hanging".into(),
        command: vec!["python3".into(), "tests/process_misbehave.py".into()],
        dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../plugins/python"),
        config: serde_json::json!({"mode": "hang"}),
        timeout: Duration::from_secs(120),
        trusted_by_pipeline: true,
        allowed_by_command_line: true,
    })
    .unwrap();
    let (e, took) = interrupted_after(Duration::from_millis(500), || {
        p.score(&samples(true)).unwrap_err().to_string()
    });
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(e.contains("hanging") && e.contains("interrupted"), "{e}");
    assert_eq!(p.score(&samples(false)).unwrap()[0].value, 0.2);
}
