//! End-to-end tests of `hrf validate` (and `hrf run` on the same files): sizes that cannot run,
//! names the file system refuses, every unknown key and wrong type at once, pretraining
//! pipelines, the YAML reader's budget. Each refusal exits 2 naming the file:line:column.

mod common;
use common::{hrf, repo, text, tmp};

/// A tiny CPU pipeline with `sampling` and `run` as given.
fn pipeline(sampling: &str, run: &str) -> String {
    format!(
        "model: {{weights: {}, device: cpu}}
sampling: {sampling}
training: {{method: ddpo-is, epochs: 1, batch_size: 2}}
rewards:
  - {{kind: jpeg-compressibility}}
evaluation: {{every: 0, samples: 4, final_samples: 4, batch_size: 4}}
run: {run}
",
        repo().join("models/testbed").display(),
    )
}

#[test]
fn sizes_and_names_that_cannot_run_exit_2_at_validate_and_run() {
    let d = tmp("hrf-validate", "sizes");
    let out = d.join("out");
    let run = |name: &str| format!("{{name: {name}, output: {}}}", out.display());
    let long = "a".repeat(300);
    // (what, sampling, run, the field, the message's words)
    let cases = [
        (
            "4294967295 images a batch",
            "{steps: 3, batch_size: 4294967295}",
            run("t"),
            "bad.yaml:2:34: sampling.batch_size",
            "must be ≤ 65,536",
        ),
        (
            "100000 images a batch",
            "{steps: 3, batch_size: 100000}",
            run("t"),
            "bad.yaml:2:34: sampling.batch_size",
            "must be ≤ 65,536",
        ),
        (
            "a 300-character run.name",
            "{steps: 3, batch_size: 2}",
            run(&long),
            "bad.yaml:7:13: run.name",
            "over the file-system limit of 255 (NAME_MAX)",
        ),
    ];
    let f = d.join("bad.yaml");
    for (what, sampling, run, place, words) in &cases {
        std::fs::write(&f, pipeline(sampling, run)).unwrap();
        for args in [
            vec!["validate", f.to_str().unwrap()],
            vec!["run", f.to_str().unwrap(), "-q"],
            vec!["run", f.to_str().unwrap(), "--dry-run"],
        ] {
            let o = hrf(&args, &[]);
            let t = text(&o);
            assert_eq!(o.status.code(), Some(2), "{what}: {args:?}: {t}");
            assert!(
                t.contains(place) && t.contains(words),
                "{what}: {args:?}: {t}"
            );
            assert!(!t.contains("panicked"), "{what}: {t}");
        }
        assert!(!out.exists(), "{what}: nothing is written");
    }
    // Just inside the limits the same file validates.
    std::fs::write(
        &f,
        pipeline("{steps: 3, batch_size: 2}", &run(&"a".repeat(239))),
    )
    .unwrap();
    let o = hrf(&["validate", f.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", text(&o));
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn every_unknown_key_and_wrong_type_is_reported_at_once() {
    let d = tmp("hrf-validate", "all-at-once");
    let f = d.join("bad.yaml");
    let text_of = pipeline("{steps: many, bach_size: 2}", "{name: t, keep: lots}")
        .replace("epochs: 1,", "epocs: 1,");
    std::fs::write(&f, text_of).unwrap();
    let o = hrf(&["validate", f.to_str().unwrap()], &[]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    for want in [
        "bad.yaml:2:19: ",
        "bad.yaml:2:25: unknown field `bach_size`",
        "bad.yaml:3:29: unknown field `epocs`",
        "bad.yaml:7:22: expected a whole number, got `lots`",
    ] {
        assert!(t.contains(want), "no {want:?} in\n{t}");
    }
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn pretraining_pipelines_validate_too() {
    let shipped = repo().join("configs/testbed-pretrain.yaml");
    let o = hrf(&["validate", shipped.to_str().unwrap()], &[]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("ok (pretraining:"), "{t}");
    assert!(!t.contains("unknown field"), "{t}");

    let d = tmp("hrf-validate", "pretrain");
    let f = d.join("p.yaml");
    let yaml = std::fs::read_to_string(&shipped).unwrap();
    std::fs::write(&f, yaml.replacen("training:", "training:\n  stpes: 3", 1)).unwrap();
    let o = hrf(&["validate", f.to_str().unwrap()], &[]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("p.yaml:") && t.contains("stpes"), "{t}");
    // Overrides apply to pretraining pipelines as to `hrf pretrain`.
    let o = hrf(
        &[
            "validate",
            shipped.to_str().unwrap(),
            "--set",
            "training.batch_size=4294967295",
        ],
        &[],
    );
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("training.batch_size: must be ≤ 65,536"), "{t}");
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn a_document_past_the_readers_budget_is_refused_in_words() {
    let d = tmp("hrf-validate", "budget");
    let f = d.join("huge.yaml");
    let items = vec!["0"; 250_001].join(", ");
    std::fs::write(
        &f,
        format!("model: {{config: testbed}}\nprompts: [{items}]\n"),
    )
    .unwrap();
    let o = hrf(&["validate", f.to_str().unwrap()], &[]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("huge.yaml"), "{t}");
    assert!(t.contains("too large to read as a pipeline"), "{t}");
    assert!(t.contains("at most 250,000 are read"), "{t}");
    assert!(!t.contains("Nodes {"), "{t}");
    std::fs::remove_dir_all(d).unwrap();
}

/// The Stable Diffusion templates (configs/templates/) are whole pipelines: pointed at the
/// bundled tiny pipeline in place of the weights a user brings, each validates; as shipped, the
/// missing folder is named.
#[test]
fn the_stable_diffusion_templates_validate() {
    let templates = repo().join("configs/templates");
    let tiny = repo().join("models/sd-tiny");
    let mut seen = 0;
    for entry in std::fs::read_dir(&templates).unwrap() {
        let f = entry.unwrap().path();
        let weights = format!("model.weights={}", tiny.display());
        let o = hrf(&["validate", f.to_str().unwrap(), "--set", &weights], &[]);
        assert!(o.status.success(), "{}: {}", f.display(), text(&o));
        assert!(text(&o).contains("8 prompts"), "{}", text(&o));
        let o = hrf(&["validate", f.to_str().unwrap()], &[]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains("model.weights"), "{}", text(&o));
        seen += 1;
    }
    assert_eq!(seen, 2);
}
