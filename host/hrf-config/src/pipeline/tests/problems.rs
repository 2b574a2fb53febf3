//! Problems: each named with its field and its place in the file, every one at once.

use super::*;

/// One bad value or key in MINIMAL, and what the first error says of it.
struct Row {
    /// What is wrong.
    what: &'static str,
    /// MINIMAL with `from` replaced by `to`.
    from: &'static str,
    to: &'static str,
    /// The error is the only one.
    alone: bool,
    /// The first error's field, line and column (none: not checked).
    field: Option<&'static str>,
    line: u64,
    column: Option<u64>,
    /// Words of the whole report.
    words: &'static str,
}

/// Unknown keys, wrong types and bad values are named with their field and their place.
#[test]
fn bad_values_are_named_with_their_place() {
    let rows = [
        Row {
            what: "an unknown key",
            from: "run:",
            to: "training:\n  epocs: 3\nrun:",
            alone: true,
            field: None,
            line: 5,
            column: None,
            words: "epocs",
        },
        Row {
            what: "training.seed is run.seed: not a training field",
            from: "run:",
            to: "training: {seed: 3}\nrun:",
            alone: false,
            field: None,
            line: 4,
            column: None,
            words: "",
        },
        Row {
            what: "text for a number",
            from: "run:",
            to: "sampling:\n  steps: many\nrun:",
            alone: false,
            field: None,
            line: 5,
            column: None,
            words: "",
        },
        Row {
            what: "a list for a mapping",
            from: "run:",
            to: "scheduler: [1, 2]\nrun:",
            alone: false,
            field: None,
            line: 4,
            column: None,
            words: "",
        },
        Row {
            what: "an unknown reward kind",
            from: "jpeg-compressibility",
            to: "jpeg",
            alone: false,
            field: None,
            line: 3,
            column: None,
            words: "",
        },
        Row {
            what: "a missing model folder",
            from: "models/base",
            to: "models/nope",
            alone: true,
            field: Some("model.weights"),
            line: 1,
            column: None,
            words: "p.yaml:1:",
        },
        Row {
            what: "a negative learning rate",
            from: "run:",
            to: "training:\n  optimizer:\n    lr: -1e-4\nrun:",
            alone: true,
            field: Some("training.optimizer.lr"),
            line: 6,
            column: Some(9),
            words: "p.yaml:6:9: training.optimizer.lr: must be positive",
        },
        Row {
            what: "per-prompt advantages without prompts",
            from: "run:",
            to: "advantages: {mode: per-prompt}\nrun:",
            alone: false,
            field: Some("advantages.mode"),
            line: 4,
            column: None,
            words: "",
        },
    ];
    let fx = Fixture::new("places");
    for row in rows {
        let what = row.what;
        let e = fx
            .load(&MINIMAL.replace(row.from, row.to), &[])
            .unwrap_err();
        if row.alone {
            assert_eq!(e.0.len(), 1, "{what}: {e}");
        }
        let first = &e.0[0];
        if let Some(field) = row.field {
            assert_eq!(first.field.as_deref(), Some(field), "{what}: {e}");
        }
        assert_eq!(first.line, Some(row.line), "{what}: {e}");
        if let Some(column) = row.column {
            assert_eq!(first.column, Some(column), "{what}: {e}");
        }
        assert!(messages(&e).contains(row.words), "{what}: {e}");
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let fx = Fixture::new("many");
    let text = "\
model: {weights: ../models/base}
sampling: {steps: 1, eta: 2}
training: {method: ddpo-sf, inner_epochs: 2, timestep_fraction: 0, optimizer: {beta1: 1}}
advantages: {mode: group}
rewards:
  - {kind: prompt-alignment}
  - {kind: onnx, stages: [{model: missing.onnx}], score: {column: 1}, classes: [a]}
  - {kind: aesthetic, weight: 0, input: {layout: nhwc}}
  - {kind: aesthetic}
evaluation: {samples: 1}
run: {name: 'a b', keep: 0}
";
    let e = fx.load(text, &[]).unwrap_err();
    let want = [
        ("sampling.steps", 2),
        ("sampling.eta", 2),
        ("training.inner_epochs", 3),
        ("training.timestep_fraction", 3),
        ("training.optimizer.beta1", 3),
        ("advantages.mode", 4),
        ("rewards[0].kind", 6),
        ("rewards[1].name", 7),
        ("rewards[1].stages[0].model", 7),
        ("rewards[1].classes", 7),
        ("rewards[2].weight", 8),
        ("rewards[2].input", 8),
        ("rewards[3].name", 9),
        ("evaluation.samples", 10),
        ("run.name", 11),
        ("run.keep", 11),
    ];
    for (field, line) in want {
        let found = e.0.iter().find(|x| x.field.as_deref() == Some(field));
        let found = found.unwrap_or_else(|| panic!("no error for {field}:\n{e}"));
        assert_eq!(found.line, Some(line), "{field}:\n{e}");
    }
    assert_eq!(e.0.len(), want.len(), "{e}");
    let msg = messages(&e);
    assert!(
        msg.contains("group advantages with ddpo-is / ddpo-sf need advantages.group_size"),
        "{msg}"
    );
    assert!(msg.contains("duplicate reward name \"aesthetic\""), "{msg}");
    assert!(msg.contains("ddpo-sf"), "{msg}");
}

#[test]
fn bad_hrf_settings_are_named() {
    let fx = Fixture::new("bad-hrf");
    let text = MINIMAL.replace(
        "run:",
        "sampling: {steps: 4, batch_size: 6, batches_per_epoch: 1}\n\
         training:\n  method: hrf-d\n  epochs: 4\n  start: uniform\n  hrf:\n    group_size: 4\n    stride: 2\n    window:\n      - {range: [2, 9], epochs: 0.5}\n      - {epochs: 0.25}\n\
         advantages: {mode: per-prompt}\nrun:",
    );
    let e = fx.load(&text, &[]).unwrap_err();
    let fields: Vec<&str> = e.0.iter().filter_map(|x| x.field.as_deref()).collect();
    for want in [
        "training.start",
        "training.hrf.group_size",
        "training.hrf.stride",
        "training.hrf.window[0].range",
        "training.hrf.window[1]",
        "training.hrf.window",
        "advantages.mode",
    ] {
        assert!(fields.contains(&want), "no error for {want}: {e}");
    }
    let e = fx
        .load(
            MINIMAL,
            &["training.hrf.group_size=2", "training.start={fixed: 40}"],
        )
        .unwrap_err();
    let msg = messages(&e);
    assert!(
        msg.contains("only methods hrf and hrf-d take `hrf`"),
        "{msg}"
    );
    assert!(
        msg.contains("must be < sampling.steps (40), got 40"),
        "{msg}"
    );
}

/// Every unknown key and wrong type of a file at once, each at its line:column; with
/// overrides, at the field's place in the file.
#[test]
fn every_unknown_key_and_wrong_type_is_reported_at_once() {
    let fx = Fixture::new("all-at-once");
    let text = "\
model: {weights: ../models/base, devise: cpu}
sampling:
  steps: many
  eta: [1]
training:
  epocs: 3
  method: ddpo
  optimizer: {lr: fast, beta1: 0.9}
  hrf: {group_size: -2}
rewards:
  - {kind: jpeg, weight: heavy}
  - {kind: onnx, name: x, stages: [{model: a.onnx, output: {a: 1}}], input: {size: [1, 2, 3]}, score: {column: x}}
evaluation: {best_by: rewards, seed: 1.5}
run: {name: t, keep: yes}
";
    let e = fx.load(text, &[]).unwrap_err();
    let msg = messages(&e);
    let want: &[(u64, u64, &str)] = &[
        (
            1,
            34,
            "unknown field `devise`, expected one of weights, config, device",
        ),
        (3, 10, ""),
        (4, 8, "expected a number, got a list"),
        (6, 3, "unknown field `epocs`"),
        (
            7,
            11,
            "unknown variant `ddpo`, expected one of ddpo-is, ddpo-sf, hrf, hrf-d",
        ),
        (8, 19, "expected a number, got `fast`"),
        (9, 21, "expected a whole number ≥ 0, got -2"),
        (11, 12, "unknown variant `jpeg`"),
        (11, 26, "expected a number, got `heavy`"),
        (12, 60, "expected a whole number or text, got a mapping"),
        (12, 84, "expected a list of 2 items, got 3"),
        (12, 112, "expected a whole number, got `x`"),
        (13, 23, "unknown variant `rewards`"),
        (13, 38, "expected a whole number, got `1.5`"),
        (14, 22, "expected a whole number, got `true`"),
    ];
    for (line, column, words) in want {
        let found =
            e.0.iter()
                .find(|x| (x.line, x.column) == (Some(*line), Some(*column)));
        let found = found.unwrap_or_else(|| panic!("nothing at {line}:{column}:\n{msg}"));
        assert!(found.message.contains(words), "{line}:{column}: {msg}");
    }
    assert_eq!(e.0.len(), want.len(), "{msg}");
    assert!(msg.contains("p.yaml:1:34: unknown field `devise`"), "{msg}");

    // With an override, each problem still has its field and place in the file.
    let e = fx.load(text, &["run.seed=2"]).unwrap_err();
    let at = |field: &str| {
        e.0.iter()
            .find(|x| x.field.as_deref() == Some(field))
            .map(|x| x.line)
    };
    assert_eq!(at("training.epocs"), Some(Some(6)), "{e}");
    assert_eq!(at("run.keep"), Some(Some(14)), "{e}");
    assert_eq!(at("sampling.eta"), Some(Some(4)), "{e}");
}

/// The pass reports nothing the typed parse accepts: quiet on every shipped pipeline, the
/// resolved ones and values the reader takes in more than one spelling.
#[test]
fn the_all_at_once_pass_is_quiet_on_what_parses() {
    let schema = run_schema();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut texts = Vec::new();
    for dir in ["configs", "tests/pipelines"] {
        for entry in std::fs::read_dir(repo.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.ends_with(".yaml") && !name.contains("pretrain") {
                texts.push((name, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    assert!(texts.len() >= 10, "{}", texts.len());
    let fx = Fixture::new("quiet");
    for text in [MINIMAL, FULL] {
        texts.push((
            "resolved".into(),
            fx.load(text, &[]).unwrap().resolved_yaml(),
        ));
    }
    texts.push((
        "spellings".into(),
        MINIMAL.replace(
            "run:",
            "sampling: {steps: '12', eta: '0.5', batch_size: 0x10, guidance: 1}\n\
             training: {epochs: 1_000, kl_coef: .inf, method: hrf}\n\
             advantages: ~\nrun:",
        ),
    ));
    for (name, text) in &texts {
        let typed = serde_saphyr::from_str::<RunFile>(text);
        assert!(typed.is_ok(), "{name}: {:?}", typed.err());
        let found = crate::check::problems(&schema, text);
        assert!(found.is_empty(), "{name}: {found:?}");
    }
}
