//! End-to-end tests of `hrf compare` on tiny CPU runs: the resolved pipeline a run folder keeps
//! is YAML with one spelling per path, runs of one pipeline compare alike however their paths
//! were spelled (old JSON run folders included), with and without the base model; and the
//! frontier verdicts against plain DDPO, their plots and the trust-region table.

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

#[test]
fn the_frontier_is_measured_against_the_plain_ddpo_group() {
    let d = tmp("hrf-compare", "frontier");
    // Two epochs, evaluated after each: the base (epoch 0), epoch 1 (the middle), the final.
    let common = ["training.epochs=2", "evaluation.every=1"];
    let mut dirs = Vec::new();
    for (name, seed, extra) in [
        ("ddpo", 3, None),
        ("ddpo", 4, None),
        ("kl", 3, Some("training.kl_coef=0.1")),
    ] {
        let dir = d.join(format!("{name}-{seed}"));
        let (n, s) = (format!("run.name={name}"), format!("run.seed={seed}"));
        let mut sets = vec![n.as_str(), s.as_str()];
        sets.extend(common);
        sets.extend(extra);
        let o = common::pipeline_run("tiny-compressibility.yaml", &dir, &sets, &[])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        assert!(dir.join("samples/eval-0000.png").exists());
        assert!(dir.join("samples/eval-0001.png").exists());
        dirs.push(dir);
    }
    let out = d.join("cmp");
    let mut args = vec!["compare", "-o", out.to_str().unwrap()];
    args.extend(dirs.iter().map(|p| p.to_str().unwrap()));
    let o = hrf(&args, &[]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let md = std::fs::read_to_string(out.join("comparison.md")).unwrap();
    assert!(md.contains("## Frontier"), "{md}");
    assert!(md.contains("R_mid = "), "{md}");
    assert!(md.contains("| ddpo (reference) | 2 | "), "{md}");
    assert!(md.contains("| kl | 1 | "), "{md}");
    assert!(md.contains("(reached "), "{md}");
    assert!(
        md.contains("90/90 check of the final evaluation against `ddpo`"),
        "{md}"
    );
    assert!(md.contains("## Trust region"), "{md}");
    assert!(
        md.contains("side by side in samples-at-matched-reward.png"),
        "{md}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("comparison.json")).unwrap())
            .unwrap();
    let f = &json["frontier"];
    assert_eq!(f["reference"], "ddpo");
    assert!(f["r_mid"].is_f64(), "{f}");
    assert_eq!(f["methods"][0]["curves"].as_array().unwrap().len(), 2);
    assert_eq!(
        f["methods"][0]["curves"][0]["points"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert!(
        json["trust_region"][0]["approx_kl"]["mean"].is_f64(),
        "{json}"
    );
    for png in [
        "frontier-vendi.png",
        "frontier-class-entropy.png",
        "samples-at-matched-reward.png",
    ] {
        assert!(out.join(png).exists(), "{png}: {t}");
    }

    // Naming a group that does not exist is refused; naming none among two plain DDPO groups
    // skips the verdicts at matched reward, with the reason.
    let mut args = vec!["compare", "--no-base", "--reference", "nope", "-o"];
    args.push(out.to_str().unwrap());
    args.extend(dirs.iter().map(|p| p.to_str().unwrap()));
    let o = hrf(&args, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("ddpo, kl"), "{}", text(&o));
    let other = d.join("other-4");
    let cp = std::process::Command::new("cp")
        .args(["-r", dirs[1].to_str().unwrap(), other.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(cp.success());
    let file = other.join("pipeline.resolved.yaml");
    let resolved = std::fs::read_to_string(&file).unwrap();
    assert!(resolved.contains("  name: ddpo\n"), "{resolved}");
    std::fs::write(&file, resolved.replace("  name: ddpo\n", "  name: other\n")).unwrap();
    let out = d.join("cmp-two");
    let args = vec![
        "compare",
        "--no-base",
        "-o",
        out.to_str().unwrap(),
        dirs[0].to_str().unwrap(),
        other.to_str().unwrap(),
    ];
    let o = hrf(&args, &[]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("several groups are plain DDPO (ddpo, other)"),
        "{t}"
    );
    let md = std::fs::read_to_string(out.join("comparison.md")).unwrap();
    assert!(md.contains("Verdicts at matched reward skipped"), "{md}");
    assert!(!out.join("samples-at-matched-reward.png").exists());
    std::fs::remove_dir_all(d).unwrap();
}

/// The resolved YAML read back as JSON text, through the binary's own reader: `hrf validate`
/// accepts it, and serde_json reads the mapping hrf-config's reader makes of it.
fn yaml_as_json(yaml: &str) -> String {
    let v: serde_json::Value = hrf_config::parse_yaml(Path::new("resolved"), yaml).unwrap();
    serde_json::to_string(&v).unwrap()
}
