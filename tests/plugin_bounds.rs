//! End-to-end tests of the plugin host's bounds (README "Security model"), against the
//! misbehaving fixtures (plugins/tests/misbehave, plugins/python/tests/process_misbehave.py):
//! a guest blocked in a WASI sleep cannot hang `hrf plugins check` nor keep SIGTERM from ending
//! `hrf run`; a 100 MiB error on most calls of a run leaves small metrics and bounded memory;
//! control characters from a plugin reach the terminal escaped, each line prefixed; a native
//! plugin's bare file name is not looked up on the loader's search path.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{hrf, hrf_command, repo, text, tmp};

fn misbehave() -> PathBuf {
    let p = repo().join("plugins/target/wasm32-wasip2/release/misbehave.wasm");
    assert!(p.exists(), "{} missing: run ./setup.sh", p.display());
    p
}

use common::pipeline_run as run_command;

/// The bytes hrf must never let through from a plugin: ESC, CR, NUL, BEL.
fn control_bytes(out: &[u8]) -> Vec<u8> {
    out.iter()
        .copied()
        .filter(|b| matches!(b, 0x1b | b'\r' | 0 | 0x07))
        .collect()
}

#[test]
fn plugins_check_of_a_guest_blocked_in_a_wasi_sleep_ends_soon_after_its_timeout() {
    let t = Instant::now();
    let o = hrf(
        &[
            "plugins",
            "check",
            misbehave().to_str().unwrap(),
            "--config",
            r#"{"mode": "sleep"}"#,
            "--timeout-s",
            "2",
            "-n",
            "2",
        ],
        &[],
    );
    let took = t.elapsed();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("timed out after 2.0 s") && text(&o).contains("misbehave"),
        "{}",
        text(&o)
    );
    // 2 s of timeout + 0.25 s of grace + start-up (libtorch, the component cache): 15 s is a
    // margin for a loaded machine; the bug ran for the guest's hour.
    assert!(took < Duration::from_secs(15), "{took:?}");
}

#[test]
fn sigterm_during_a_plugin_call_blocked_in_a_wasi_sleep_ends_the_run_within_5_s() {
    let d = tmp("hrf-bounds", "sigterm");
    let run = d.join("run");
    let wasm = format!("rewards[0].path={}", misbehave().display());
    let mut child = run_command(
        "tiny-wasm.yaml",
        &run,
        &[
            &wasm,
            "rewards[0].config.mode=sleep",
            // Every training batch but the first: the base evaluation and batch 1 are scored.
            "rewards[0].config.later_batches=true",
            // Far longer than the test: only the signal can end the call in time.
            "rewards[0].timeout_s=300",
        ],
        &[],
    )
    .stderr(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The plugin says "sleeping" (a log line, printed as it comes) just before it blocks.
    let mut seen = Vec::new();
    let started = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => {
                let sleeping = line.contains("[plugin jpeg-in-wasm info] sleeping");
                seen.push(line);
                if sleeping {
                    break;
                }
            }
            Err(_) => {
                assert!(
                    child.try_wait().unwrap().is_none() && started.elapsed().as_secs() < 300,
                    "never reached the plugin call: {}",
                    seen.join("\n")
                );
            }
        }
    }
    // Let it sit in the host call a moment, then ask it to stop.
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > Duration::from_secs(30) {
            child.kill().unwrap();
            panic!("hrf run still running 30 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = t.elapsed();
    seen.extend(rx.try_iter());
    let said = seen.join("\n");
    assert!(
        took < Duration::from_secs(5),
        "ended {took:?} after SIGTERM: {said}"
    );
    // The usual stop: exit code 130, the checkpoint of the epochs done (none yet) written.
    assert_eq!(status.code(), Some(130), "{said}");
    assert!(
        said.contains("interrupted: checkpoint after epoch 0"),
        "{said}"
    );
    std::fs::remove_dir_all(d).unwrap();
}

/// Runs `cmd` to the end; its output and peak resident memory (wait4's ru_maxrss), in bytes.
fn run_measured(cmd: &mut Command) -> (std::process::ExitStatus, Vec<u8>, Vec<u8>, u64) {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        out.read_to_end(&mut v).unwrap();
        v
    });
    let mut stderr = Vec::new();
    err.read_to_end(&mut stderr).unwrap();
    let stdout = reader.join().unwrap();
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid out-parameter; the pid is our child's, not yet reaped
    // (std's Child is not waited for: it is leaked below, so it never waits on a reused pid).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as libc::pid_t);
    std::mem::forget(child);
    (
        std::process::ExitStatus::from_raw(status),
        stdout,
        stderr,
        usage.ru_maxrss as u64 * 1024,
    )
}

#[test]
fn a_100_mib_error_on_most_calls_of_a_3_epoch_run_leaves_small_metrics_and_bounded_memory() {
    let d = tmp("hrf-bounds", "huge-error");
    let wasm = format!("rewards[0].path={}", misbehave().display());
    let sets = |mode: &str| {
        vec![
            wasm.clone(),
            format!("rewards[0].config.mode={mode}"),
            "rewards[0].config.later_batches=true".into(),
            "rewards[0].on_error=skip".into(),
            "rewards[0].memory_mb=512".into(),
            "training.epochs=3".into(),
            "sampling.batches_per_epoch=4".into(),
        ]
    };
    // The same run with a plugin that never fails: the memory it takes anyway.
    let base_sets = sets("ok");
    let base_sets: Vec<&str> = base_sets.iter().map(String::as_str).collect();
    let (status, _, err, base_rss) = run_measured(&mut run_command(
        "tiny-wasm.yaml",
        &d.join("ok"),
        &base_sets,
        &[],
    ));
    assert!(status.success(), "{}", String::from_utf8_lossy(&err));

    // Every training batch but the first of each epoch fails with a 100 MiB message: 9 calls,
    // 900 MiB of error text (an epoch with no sample scored would stop the run by design).
    let run = d.join("huge");
    let huge_sets = sets("huge-error");
    let huge_sets: Vec<&str> = huge_sets.iter().map(String::as_str).collect();
    let (status, out, err, rss) =
        run_measured(&mut run_command("tiny-wasm.yaml", &run, &huge_sets, &[]));
    let err_text = String::from_utf8_lossy(&err);
    assert!(status.success(), "{err_text}");
    let metrics = std::fs::read(run.join("metrics.jsonl")).unwrap();
    assert!(
        metrics.len() < 1 << 20,
        "metrics.jsonl is {} bytes",
        metrics.len()
    );
    assert!(
        out.len() + err.len() < 256 << 10,
        "{} bytes of output",
        out.len() + err.len()
    );
    let epochs: Vec<serde_json::Value> = String::from_utf8_lossy(&metrics)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["kind"] == "epoch")
        .collect();
    assert_eq!(epochs.len(), 3);
    for e in &epochs {
        assert_eq!(e["skipped"], 12, "{e}");
        let reasons = e["skip_reasons"].as_array().unwrap();
        assert_eq!(reasons.len(), 3, "{e}");
        for r in reasons {
            assert!(
                r.as_str()
                    .unwrap()
                    .contains(&format!("EEEE… ({} bytes cut)", (100 << 20) - 1024)),
                "{r}"
            );
        }
    }
    assert!(err_text.contains("bytes cut"), "{err_text}");
    eprintln!(
        "peak RSS {} MiB with the errors, {} MiB without",
        rss >> 20,
        base_rss >> 20
    );
    // The guest's own memory (its string, in its 512 MiB cap) and one transient host copy of it
    // per call are expected; keeping the messages (the bug: 1.28 GB after two epochs) is not.
    assert!(
        rss < base_rss + (400 << 20),
        "peak RSS {} MiB against {} MiB for the same run without errors",
        rss >> 20,
        base_rss >> 20
    );
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn plugin_text_reaches_the_terminal_escaped_and_every_line_prefixed() {
    let check = |config: &str| {
        hrf(
            &[
                "plugins",
                "check",
                misbehave().to_str().unwrap(),
                "--config",
                config,
                "-n",
                "2",
            ],
            &[],
        )
    };
    let forged =
        "\\x1b[31mred\\x1b[0m\\r\\nepoch 9/9: reward 99.0 (forged)\\0nul\\x1b]0;title\\x07";
    let o = check(r#"{"mode": "inject"}"#);
    assert!(o.status.success(), "{}", text(&o));
    let all = [o.stdout.clone(), o.stderr.clone()].concat();
    assert_eq!(control_bytes(&all), Vec::<u8>::new(), "{}", text(&o));
    let out = text(&o);
    // A log message is one line, its CR LF escaped; output streams are split at their newlines
    // (a CR before one is dropped), every piece a line with the prefix.
    let (before, after) = forged.split_once("\\r\\n").unwrap();
    for want in [
        format!("[plugin misbehave warn] {forged}"),
        format!("[plugin misbehave stdout] stdout {before}"),
        format!("[plugin misbehave stdout] {after}"),
        format!("[plugin misbehave stderr] stderr without a newline {before}"),
        format!("[plugin misbehave stderr] {after}"),
        "[plugin misbehave] extras dropped: 2 with a non-finite value, 0 past 32 per sample".into(),
    ] {
        assert!(out.lines().any(|l| l == want), "{want}\n{out}");
    }
    // No line the plugin wrote starts without the prefix (only hrf's own sample lines, which
    // show the extra's escaped name, hold its text otherwise).
    for line in out.lines().filter(|l| l.contains("forged")) {
        assert!(
            line.starts_with("[plugin misbehave") || line.starts_with("  sample "),
            "{line:?}"
        );
    }
    // The same in an error message.
    let o = check(r#"{"mode": "inject-error"}"#);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(
        control_bytes(&[o.stdout.clone(), o.stderr.clone()].concat()),
        Vec::<u8>::new()
    );
    assert!(
        text(&o).contains(&format!("failed: {forged}")),
        "{}",
        text(&o)
    );
    // A flood of log lines is cut at the per-call budget, and the cut is said.
    let o = check(r#"{"mode": "log-flood"}"#);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    let printed = out
        .lines()
        .filter(|l| l.starts_with("[plugin misbehave debug] flood line"))
        .count();
    assert_eq!(printed, 64, "{out}");
    assert!(
        out.contains(
            "[plugin misbehave] 9936 more lines dropped (at most 64 lines, 16 KiB per call)"
        ),
        "{out}"
    );
    // A 100 MiB extra name is cut.
    let o = hrf(
        &[
            "plugins",
            "check",
            misbehave().to_str().unwrap(),
            "--config",
            r#"{"mode": "huge-extra"}"#,
            "--memory-mb",
            "512",
            "-n",
            "1",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        o.stdout.len() + o.stderr.len() < 16 << 10,
        "{}",
        o.stdout.len()
    );
    assert!(text(&o).contains("NNNN… ("), "{}", text(&o));
}

#[test]
fn a_process_rewards_stderr_reaches_the_log_escaped_prefixed_and_cut() {
    let d = tmp("hrf-bounds", "process");
    let o = run_command(
        "tiny-process.yaml",
        &d.join("run"),
        &[
            "rewards[0].command=[python3, ../../plugins/python/tests/process_misbehave.py]",
            "rewards[0].config={mode: stderr-inject, always: true}",
        ],
        &["--allow-native"],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(control_bytes(&o.stderr), Vec::<u8>::new(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    for want in [
        "[process contrast] \\x1b[31mred",
        "[process contrast] [hrf] forged\\0nul",
        "[process contrast] not utf-8: \u{fffd}\u{fffd}",
        "[process contrast] scoring 4 samples",
    ] {
        assert!(err.lines().any(|l| l == want), "{want}\n{err}");
    }
    let long = err
        .lines()
        .find(|l| l.starts_with("[process contrast] yyyy"))
        .expect("the 1 MiB line, cut");
    assert!(
        long.len() < 2 * 1024 && long.ends_with(&format!("({} bytes cut)", (1 << 20) - 1024)),
        "{}",
        &long[long.len().saturating_sub(40)..]
    );
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn a_native_plugins_bare_file_name_is_never_looked_up_on_the_loader_path() {
    let native = repo().join("plugins/target/native");
    assert!(
        native.join("libbrightness_c.so").exists(),
        "{} missing: run ./setup.sh",
        native.display()
    );
    let check = |dir: &Path, envs: &[(&str, &Path)]| {
        let mut c = hrf_command(
            &[
                "plugins",
                "check",
                "libbrightness_c.so",
                "--allow-native",
                "-n",
                "2",
            ],
            &[],
        );
        c.current_dir(dir);
        for (k, v) in envs {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    // Beside the current folder: loaded.
    let o = check(&native, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("brightness-c 1.0.0"), "{}", text(&o));
    // Elsewhere, with the library on LD_LIBRARY_PATH: not found, not loaded from there.
    let d = tmp("hrf-bounds", "bare");
    let o = check(&d, &[("LD_LIBRARY_PATH", &native)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("libbrightness_c.so not found") && text(&o).contains("search path"),
        "{}",
        text(&o)
    );
    std::fs::remove_dir_all(d).unwrap();
}
