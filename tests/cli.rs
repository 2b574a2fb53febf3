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
