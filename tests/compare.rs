//! End-to-end tests of `hrf compare` on tiny CPU runs: the resolved pipeline a run folder keeps
//! is YAML with one spelling per path, runs of one pipeline compare alike however their paths
//! were spelled (old JSON run folders included), with and without the base model.

use std::path::Path;

mod common;
use common::{hrf, repo, text, tmp};

/// Trains tests/pipelines/tiny-compressibility.yaml (whose model path is `../../models/testbed`)
/// into `dir` with `sets`.
fn train(dir: &Path, sets: &[&str]) {
    let mut all = vec!["training.epochs=1"];
    all.extend(sets);
    let o = common::pipeline_run("tiny-compressibility.yaml", dir, &all, &[])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn runs_whose_paths_differ_only_in_spelling_compare_alike() {
    let d = tmp("hrf-compare", "spelling");
    let (a, b) = (d.join("a"), d.join("b"));
    train(&a, &[]);
    train(&b, &["run.seed=4"]);

    // The resolved pipeline is YAML, its paths absolute and in one spelling; --resume reads it.
    let resolved = std::fs::read_to_string(a.join("pipeline.resolved.yaml")).unwrap();
    assert!(resolved.starts_with("model:"), "{resolved}");
    let testbed = std::fs::canonicalize(repo().join("models/testbed")).unwrap();
    assert!(
        resolved.contains(&format!("weights: {}", testbed.display())),
        "{resolved}"
    );
    assert!(!resolved.contains("/../"), "{resolved}");

    // Run b as an older hrf left it: JSON, the model path as the YAML spelt it.
    let file = b.join("pipeline.resolved.yaml");
    let mut old: serde_json::Value =
        serde_json::from_str(&yaml_as_json(&std::fs::read_to_string(&file).unwrap())).unwrap();
    let spelt = repo().join("tests/pipelines/../../models/testbed");
    old["model"]["weights"] = spelt.to_string_lossy().into_owned().into();
    std::fs::write(&file, serde_json::to_string_pretty(&old).unwrap()).unwrap();

    for no_base in [true, false] {
        let out = d.join(format!("cmp-{no_base}"));
        let mut args = vec!["compare", "-o", out.to_str().unwrap()];
        if no_base {
            args.push("--no-base");
        }
        args.extend([a.to_str().unwrap(), b.to_str().unwrap()]);
        let o = hrf(&args, &[]);
        let t = text(&o);
        assert!(o.status.success(), "--no-base {no_base}: {t}");
        let md = std::fs::read_to_string(out.join("comparison.md")).unwrap();
        assert!(md.contains("| tiny | ddpo-is | 2 | 1 |"), "{md}");
        assert_eq!(md.contains("| base model |"), !no_base, "{md}");
    }

    // What does differ is still refused, with or without the base model.
    let c = d.join("c");
    train(&c, &["evaluation.seed=99"]);
    for no_base in [true, false] {
        let out = d.join("cmp-refused");
        let mut args = vec!["compare", "-o", out.to_str().unwrap()];
        if no_base {
            args.push("--no-base");
        }
        args.extend([a.to_str().unwrap(), c.to_str().unwrap()]);
        let o = hrf(&args, &[]);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(2), "{t}");
        assert!(t.contains("not evaluated alike"), "{t}");
    }
    std::fs::remove_dir_all(d).unwrap();
}

/// The resolved YAML read back as JSON text, through the binary's own reader: `hrf validate`
/// accepts it, and serde_json reads the mapping hrf-config's reader makes of it.
fn yaml_as_json(yaml: &str) -> String {
    let v: serde_json::Value = hrf_config::parse_yaml(Path::new("resolved"), yaml).unwrap();
    serde_json::to_string(&v).unwrap()
}
