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

/// Peak resident memory of this process since the last reset (`VmHWM`), in bytes; resets it.
fn peak_rss_then_reset() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status");
    // Writing 5 to clear_refs resets the peak (Linux ≥ 4.0).
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    kb << 10
}

fn misbehaving(mode: &str, timeout: Duration, extra: serde_json::Value) -> ProcessReward {
    let mut config = serde_json::json!({ "mode": mode });
    config
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let mut s = settings("tests/process_misbehave.py", config);
    s.timeout = timeout;
    ProcessReward::load(s).unwrap()
}

#[test]
fn a_reply_that_is_not_utf8_fails_at_once_and_the_next_batch_is_scored() {
    let mut r = misbehaving("bad-utf8", Duration::from_secs(10), serde_json::json!({}));
    let t = Instant::now();
    let e = r.score(&samples(true)).unwrap_err().to_string();
    // The reply came at once; the error must not wait for the 10 s timeout (nor for ever).
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    assert!(
        e.contains("reply is not valid UTF-8") && e.contains("test-process"),
        "{e}"
    );
    let batch = samples(false);
    assert_eq!(r.score(&batch).unwrap()[0].value, mean(&batch[0]));
}

#[test]
fn a_gigabyte_reply_without_a_newline_fails_with_bounded_memory() {
    let mut r = misbehaving("no-newline", Duration::from_secs(20), serde_json::json!({}));
    let before = peak_rss_then_reset();
    let t = Instant::now();
    let e = r.score(&samples(true)).unwrap_err().to_string();
    let took = t.elapsed();
    let peak = peak_rss_then_reset();
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert!(
        e.contains(&format!(
            "reply longer than {} MiB without a newline",
            hrf_plugins::process::MAX_REPLY >> 20
        )),
        "{e}"
    );
    // The host keeps at most MAX_REPLY (16 MiB) of it, doubling as it grows: far below the
    // gigabyte it was sent (the bug kept it all).
    assert!(
        peak < before + (256 << 20),
        "peak RSS {} MiB, {} MiB before",
        peak >> 20,
        before >> 20
    );
    let batch = samples(false);
    assert_eq!(r.score(&batch).unwrap()[3].value, mean(&batch[3]));
}

/// Whether process `pid` is gone (or a zombie, dead and waiting to be reaped).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn the_grandchild_of_a_timed_out_process_is_killed_with_it() {
    let pid_file = std::env::temp_dir().join(format!("hrf-grandchild-{}", std::process::id()));
    let _ = std::fs::remove_file(&pid_file);
    let mut r = misbehaving(
        "fork-hang",
        Duration::from_millis(1500),
        serde_json::json!({"pid_file": pid_file}),
    );
    let e = r.score(&samples(true)).unwrap_err().to_string();
    assert!(e.contains("no reply within 1.5 s"), "{e}");
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .expect("the child wrote its grandchild's pid")
        .trim()
        .parse()
        .unwrap();
    // SIGKILL to the group is immediate; allow the kernel a moment under load.
    let t = Instant::now();
    while !gone(pid) && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(gone(pid), "grandchild {pid} outlived its parent's timeout");
    std::fs::remove_file(pid_file).unwrap();
    let batch = samples(false);
    assert_eq!(r.score(&batch).unwrap()[0].value, mean(&batch[0]));
}
