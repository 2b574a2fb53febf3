//! The value reader against the YAML reader on the same documents written as JSON.

use std::path::Path;

use super::*;
use crate::pipeline::RunFile;

/// What reading `doc` gives: the value's Debug text, or the first error's field and message.
fn direct(doc: &Value) -> Result<String, (String, String)> {
    from_value::<RunFile>(doc).map(|r| format!("{r:?}"))
}

/// The same through the document's JSON text, as `--set` read it before: the value, or the
/// first error's message (its field was the path of the line it was on).
fn through_text(doc: &Value) -> Result<String, String> {
    let text = serde_json::to_string_pretty(doc).unwrap();
    crate::parse_yaml::<RunFile>(Path::new("p.yaml"), &text)
        .map(|r| format!("{r:?}"))
        .map_err(|e| e.0[0].message.clone())
}

/// Reading the merged document directly accepts what its JSON text is accepted as, and
/// refuses the rest with the YAML reader's own message.
#[test]
fn documents_read_as_their_json_text_reads() {
    let base = "model: {weights: m}\nrewards: [{kind: aesthetic}]\nrun: {name: t}\n";
    let cases = [
        "",
        "sampling: {steps: '12', eta: '0.5', batch_size: 0x10, guidance: 1}",
        "training: {epochs: 1_000, kl_coef: 1e3, method: hrf}",
        "advantages: ~",
        "sampling: ~",
        "training: 5",
        "training: [1]",
        "training: {epocs: 3}",
        "training: {method: ddpo}",
        "training: {method: 3}",
        "training: {method: {hrf: 1}}",
        "training: {start: uniform}",
        "training: {start: {fixed: 3}}",
        "training: {start: {fixed: x}}",
        "training: {start: {uniform: 1}}",
        "training: {start: {fixed: 1, uniform: 2}}",
        "training: {optimizer: {lr: fast}}",
        "training: {hrf: {group_size: -2, window: [{range: [0, 1, 2], epochs: 1}]}}",
        "training: {hrf: {window: [{range: [0], epochs: 1}]}}",
        "sampling: {steps: many}",
        "sampling: {eta: [1]}",
        "sampling: {steps: 1.5}",
        "sampling: {steps: 99999999999999999999999}",
        "sampling: {batch_size: -1}",
        "sampling: {eta: true}",
        "prompts: 3",
        "prompts: [a, 3, true, ~]",
        "prompts: {file: 3}",
        "prompts: {files: x}",
        "scheduler: [1, 2]",
        "scheduler: {beta_start: 0.0001, steps: '3', x: [1, {a: ~}]}",
        "evaluation: {best_by: rewards, seed: 1.5}",
        "evaluation: {best_by: {reward-with-diversity: {min_vendi_ratio: x}}}",
        "evaluation: {best_by: {reward-with-diversity: 1}}",
        "evaluation: {best_by: {reward: ~}}",
        "evaluation: {best_by: {reward: 1}}",
        "evaluation: {guidance: ~}",
    ];
    let rewards = [
        "rewards: [{kind: jpeg, weight: heavy}]",
        "rewards: [{kind: aesthetic, weight: '2'}]",
        "rewards: {kind: aesthetic}",
        "rewards: [{kind: onnx, name: x, stages: [{model: a.onnx, output: {a: 1}}], input: {size: [1, 2, 3]}, score: {column: x}}]",
        "rewards: [{kind: onnx, name: x, stages: [{model: a.onnx, output: 2}], score: prompted-class}]",
        "rewards: [{kind: onnx, name: 7, stages: [{model: 3, output: y}], score: {column: 1}}]",
        "rewards: [{kind: wasm, path: p.wasm, config: {a: [1, x]}, models: {m: a.onnx}, memory_mb: 1.5}]",
        "rewards: [{kind: process, command: [python3, 3], timeout_s: '2'}]",
        "rewards: [{kind: aesthetic, on_error: sometimes, transform: ln}]",
        "rewards: [{}]",
    ];
    let runs = [
        "run: {name: 3, keep: yes}",
        "run: {name: t, seed: -1}",
        "run: {}",
        "run: ~",
    ];
    let mut texts: Vec<String> = cases.iter().map(|c| format!("{base}{c}\n")).collect();
    for r in rewards {
        texts.push(format!("model: {{weights: m}}\n{r}\nrun: {{name: t}}\n"));
    }
    for r in runs {
        texts.push(format!(
            "model: {{weights: m}}\nrewards: [{{kind: aesthetic}}]\n{r}\n"
        ));
    }
    texts.push("model: {weights: m, devise: cpu}\nrewards: []\nrun: {name: t}\n".into());
    texts.push("model: {weights: m}\nrun: {name: t}\n".into());
    texts.push("{}\n".into());
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for dir in ["configs", "tests/pipelines"] {
        for entry in std::fs::read_dir(repo.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.ends_with(".yaml") && !name.contains("pretrain") {
                texts.push(std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let (mut accepted, mut refused) = (0, 0);
    for text in &texts {
        let doc: Value = crate::parse_yaml(Path::new("p.yaml"), text).unwrap();
        match (direct(&doc), through_text(&doc)) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a, b, "{text}");
                accepted += 1;
            }
            (Err((_, a)), Err(b)) => {
                assert_eq!(a, b, "{text}");
                refused += 1;
            }
            (a, b) => panic!("{text}\ndirect: {a:?}\nthrough the text: {b:?}"),
        }
    }
    assert!(
        accepted >= 10 && refused >= 30,
        "{accepted} accepted, {refused} refused"
    );

    // The one known difference: a newtype variant written as a bare name. Through the
    // text the reader said "expected string scalar"; now the variant's want is named.
    let text = format!("{base}training: {{start: fixed}}\n");
    let doc: Value = crate::parse_yaml(Path::new("p.yaml"), &text).unwrap();
    assert_eq!(
        direct(&doc).unwrap_err(),
        (
            "training.start.fixed".to_string(),
            "invalid type: unit variant, expected newtype variant".to_string()
        )
    );
    assert_eq!(through_text(&doc).unwrap_err(), "expected string scalar");
}

/// The field of the first error, from the failing path.
#[test]
fn errors_name_their_field() {
    let doc = serde_json::json!({
        "model": {"weights": "m"},
        "rewards": [{"kind": "aesthetic"}, {"kind": "aesthetic", "weight": "heavy"}],
        "run": {"name": "t"},
    });
    let (path, _) = from_value::<RunFile>(&doc).unwrap_err();
    assert_eq!(path, "rewards[1].weight");
    let doc = serde_json::json!({
        "model": {"weights": "m"},
        "rewards": [{"kind": "aesthetic"}],
        "evaluation": {"best_by": {"reward-with-diversity": {"min_vendi_ratio": "x"}}},
        "run": {"name": "t"},
    });
    let (path, _) = from_value::<RunFile>(&doc).unwrap_err();
    assert_eq!(
        path,
        "evaluation.best_by.reward-with-diversity.min_vendi_ratio"
    );
    let doc = serde_json::json!({"model": {"weights": "m"}, "rewards": []});
    let (path, message) = from_value::<RunFile>(&doc).unwrap_err();
    assert_eq!(path, "");
    assert!(message.contains("run"), "{message}");
}
