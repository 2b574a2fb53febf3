//! The repository documents itself: docs/ARCHITECTURE.md lists exactly the packages that
//! `cargo metadata` reports, and no tracked file outside docs/ cites a design document that
//! lives outside the repository.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Package names of the workspace (members and the root `hrf` package), from `cargo metadata`.
fn workspace_packages() -> BTreeSet<String> {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(repo())
        .output()
        .expect("cargo metadata starts");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata is JSON");
    meta["packages"]
        .as_array()
        .expect("metadata has packages")
        .iter()
        .map(|p| p["name"].as_str().expect("package name").to_string())
        .collect()
}

/// The first column of the crate table of docs/ARCHITECTURE.md: rows that start with "| `".
fn documented_crates(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .map(|rest| {
            let end = rest.find('`').expect("crate name closes its backtick");
            rest[..end].to_string()
        })
        .collect()
}

#[test]
fn architecture_lists_every_package_once() {
    let path = repo().join("docs/ARCHITECTURE.md");
    let text = std::fs::read_to_string(&path).expect("docs/ARCHITECTURE.md is readable");
    let listed = documented_crates(&text);
    let unique: BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(
        listed.len(),
        unique.len(),
        "a crate is listed twice: {listed:?}"
    );
    let packages = workspace_packages();
    assert_eq!(
        unique, packages,
        "docs/ARCHITECTURE.md's crate table (left) differs from `cargo metadata` (right)"
    );
}

fn is_binary(bytes: &[u8]) -> bool {
    bytes.contains(&0) || std::str::from_utf8(bytes).is_err()
}

#[test]
fn no_reference_to_an_outside_design_doc() {
    let out = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(repo())
        .output()
        .expect("git ls-files starts");
    assert!(out.status.success(), "git ls-files failed");
    // Built from pieces so that this file does not match itself.
    let needle = ["DESIGN", ".md"].concat();
    let mut offenders = Vec::new();
    for name in out.stdout.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        if name.starts_with("docs/") || name == "Cargo.lock" || name.ends_with("/Cargo.lock") {
            continue;
        }
        let path = repo().join(&name);
        // A tracked file deleted in the working tree is not a reference.
        let Ok(bytes) = std::fs::read(Path::new(&path)) else {
            continue;
        };
        if is_binary(&bytes) {
            continue;
        }
        let text = String::from_utf8_lossy(&bytes);
        for (i, line) in text.lines().enumerate() {
            if line.contains(&needle) {
                offenders.push(format!("{name}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "references to a design doc outside the repository:\n{}",
        offenders.join("\n")
    );
}
