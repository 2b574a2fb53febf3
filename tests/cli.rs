//! End-to-end checks of the `hrf` binary: it starts from any directory with a bare environment
//! (finding libtorch and onnxruntime by itself) and `doctor` runs a UNet forward pass.

use std::process::{Command, Output};

mod common;
use common::text;

fn hrf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hrf"))
        .args(args)
        .current_dir(std::env::temp_dir())
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .expect("hrf starts")
}

#[test]
fn version_and_help_work_from_anywhere() {
    let v = hrf(&["--version"]);
    assert!(v.status.success(), "{}", text(&v));
    assert_eq!(
        text(&v).trim(),
        format!("hrf {}", env!("CARGO_PKG_VERSION"))
    );
    let h = hrf(&["--help"]);
    assert!(h.status.success(), "{}", text(&h));
    assert!(
        text(&h).contains("Usage: hrf <COMMAND>") && text(&h).contains("doctor"),
        "{}",
        text(&h)
    );
}

#[test]
fn doctor_runs_a_unet_forward_with_a_bare_environment() {
    let o = hrf(&["doctor", "--device", "cpu"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("libtorch       2.11.0"), "{out}");
    assert!(out.contains("onnxruntime    1.30.0"), "{out}");
    assert!(
        out.contains("output [8, 1, 32, 32]") && out.contains("finite"),
        "{out}"
    );
    assert!(out.contains("doctor: ok"), "{out}");
}

#[test]
fn usage_errors_exit_with_2() {
    let o = hrf(&["no-such-command"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = hrf(&["doctor", "--device", "tpu"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("device"), "{}", text(&o));
}

/// `hrf sample` and `hrf eval` check their options alike (exit 2, naming the option) before
/// loading anything, and a missing model folder is a usage error said once.
#[test]
fn sampling_options_and_missing_models_are_usage_errors() {
    let model = common::repo().join("models/testbed");
    let model = model.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["sample", "--model", model, "-n", "0"], "-n 0"),
        (&["sample", "--model", model, "--eta", "3"], "--eta 3"),
        (&["sample", "--model", model, "--eta=-0.5"], "--eta -0.5"),
        (
            &["sample", "--model", model, "--guidance", "NaN"],
            "--guidance",
        ),
        (&["eval", "--model", model, "--eta", "1.5"], "--eta 1.5"),
        (&["eval", "--model", model, "-n", "0"], "-n 0"),
        (
            &["sample", "--model", "/nonexistent/model"],
            "no such folder",
        ),
        (&["eval", "--model", "/nonexistent/model"], "no such folder"),
        (
            &["sample", "--model", "/tmp"],
            "not a diffusers UNet2DModel folder",
        ),
    ];
    for (args, says) in cases {
        let o = hrf(args);
        let out = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {out}");
        assert!(out.contains(says), "{args:?}: {out}");
        assert!(!out.contains("os error"), "{args:?}: {out}");
    }
}

/// `hrf sample` defaults to the sampling `hrf eval` uses (η 1, guidance 1.25), and `hrf run
/// --help` names every training method.
#[test]
fn sample_and_eval_share_defaults_and_run_help_names_every_method() {
    let help = |cmd: &str| text(&hrf(&[cmd, "--help"]));
    let eval = help("eval");
    assert!(
        eval.contains("--eta <ETA>") && eval.contains("[default: 1]"),
        "{eval}"
    );
    assert!(eval.contains("[default: 1.25]"), "{eval}");
    // `hrf sample` also samples Stable Diffusion pipelines (η 0, guidance 7.5 there), so its
    // testbed defaults are stated in the help text rather than as clap defaults.
    let sample = help("sample");
    for says in ["Default 1 for the testbed", "1.25 for the testbed"] {
        assert!(sample.contains(says), "{says}: {sample}");
    }
    let run = help("run");
    for method in ["ddpo-is", "ddpo-sf", "hrf or hrf-d"] {
        assert!(run.contains(method), "{method}: {run}");
    }
}

/// A file that is not WebAssembly is refused in one plain sentence (no dump of its bytes).
#[test]
fn plugins_check_names_a_file_that_is_not_webassembly() {
    let f = std::env::temp_dir().join(format!("hrf-not-wasm-{}.wasm", std::process::id()));
    std::fs::write(&f, "hello, not a component\n").unwrap();
    let o = hrf(&["plugins", "check", f.to_str().unwrap()]);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("not a WebAssembly file"), "{out}");
    assert!(
        !out.contains("0x") && out.trim().lines().count() == 1,
        "{out}"
    );
    std::fs::remove_file(f).unwrap();
}
