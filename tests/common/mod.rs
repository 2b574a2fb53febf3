//! Helpers shared by the end-to-end tests: run the `hrf` binary, read its output, make a
//! scratch folder.
#![allow(dead_code)] // each test crate uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `hrf` command with one libtorch thread and the repo's models, plus `envs`.
pub fn hrf_command(args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hrf"));
    c.args(args)
        .env("HRF_THREADS", "1")
        .env("HRF_MODELS", repo().join("models"));
    for (k, v) in envs {
        c.env(k, v);
    }
    c
}

/// Runs `hrf` (see `hrf_command`) to the end.
pub fn hrf(args: &[&str], envs: &[(&str, &str)]) -> Output {
    hrf_command(args, envs).output().expect("hrf starts")
}

/// stdout then stderr, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// An empty scratch folder named after the test crate, the test and the process.
pub fn tmp(prefix: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("{prefix}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `hrf run tests/pipelines/NAME -q --run-dir DIR --set S... EXTRA...` as a command.
pub fn pipeline_run(name: &str, dir: &Path, sets: &[&str], extra: &[&str]) -> Command {
    let p = repo().join("tests/pipelines").join(name);
    let mut args = vec![
        "run",
        p.to_str().unwrap(),
        "-q",
        "--run-dir",
        dir.to_str().unwrap(),
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    args.extend(extra);
    hrf_command(&args, &[])
}

/// The lines of a run's metrics.jsonl.
pub fn metrics_lines(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The lines of one `kind` (`epoch`, `eval`, `final`, `guard`).
pub fn of_kind<'a>(lines: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    lines.iter().filter(|l| l["kind"] == kind).collect()
}
