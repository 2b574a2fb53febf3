//! `--set key.path=value`: any field, bad overrides, and the places of errors after them.

use super::*;

#[test]
fn overrides_set_any_field() {
    let fx = Fixture::new("overrides");
    let p = fx
        .load(
            MINIMAL,
            &[
                "training.optimizer.lr=3e-4",
                "prompts=[a photo of a shirt, a photo of a bag]",
                "run.name=sweep-1",
                "rewards[0].weight=2",
                "rewards.0.batch_size=8",
                "evaluation.best_by={reward-with-diversity: {min_vendi_ratio: 0.5}}",
                "scheduler.beta_schedule=linear",
            ],
        )
        .unwrap();
    assert_eq!(p.training.optimizer.lr, 3e-4);
    assert_eq!(p.prompts, ["a photo of a shirt", "a photo of a bag"]);
    assert_eq!(p.advantages.mode, AdvantageMode::PerPrompt);
    assert_eq!(p.run.name, "sweep-1");
    assert_eq!((p.rewards[0].weight, p.rewards[0].batch_size), (2.0, 8));
    assert_eq!(
        p.evaluation.best_by,
        BestBy::RewardAndDiversity {
            min_vendi_ratio: 0.5
        }
    );
    assert_eq!(
        p.scheduler,
        Some(serde_json::json!({"beta_schedule": "linear"}))
    );
    // The text is the file's, not the overridden document.
    assert_eq!(p.text, MINIMAL);
}

#[test]
fn bad_overrides_are_reported() {
    let fx = Fixture::new("bad-overrides");
    let e = fx
        .load(
            MINIMAL,
            &[
                "training.optimizer.lr",
                "=3",
                "run.name.x=1",
                "rewards[3].weight=1",
                "a..b=1",
                "run.name=[unclosed",
            ],
        )
        .unwrap_err();
    assert_eq!(e.0.len(), 6, "{e}");
    assert!(
        e.0.iter().all(|x| x.field.as_deref() == Some("--set")),
        "{e}"
    );
    assert!(messages(&e).contains("\"training.optimizer.lr\": expected key.path=value"));
}

#[test]
fn errors_in_overridden_values_name_their_field() {
    let fx = Fixture::new("override-errors");
    // An overridden value: its field, no place in the file.
    let text = MINIMAL.replace("run:", "training:\n  optimizer:\n    lr: 1e-4\nrun:");
    let e = fx.load(&text, &["training.optimizer.lr=-1"]).unwrap_err();
    assert_eq!(
        e.0[0].field.as_deref(),
        Some("training.optimizer.lr"),
        "{e}"
    );
    assert_eq!(e.0[0].line, None, "{e}");
    // A problem the override did not touch keeps its place.
    let text = MINIMAL.replace("run:", "training:\n  optimizer:\n    lr: -1\nrun:");
    let e = fx.load(&text, &["run.seed=3"]).unwrap_err();
    assert_eq!(
        e.0[0].field.as_deref(),
        Some("training.optimizer.lr"),
        "{e}"
    );
    assert_eq!(e.0[0].line, Some(6), "{e}");
    // Serde errors too: a wrong type set on the command line, an unknown key in the file.
    let e = fx.load(MINIMAL, &["sampling.steps=many"]).unwrap_err();
    assert_eq!(e.0[0].field.as_deref(), Some("sampling.steps"), "{e}");
    assert_eq!(e.0[0].line, None, "{e}");
    let text = MINIMAL.replace("run:", "training:\n  epocs: 3\nrun:");
    let e = fx.load(&text, &["run.seed=3"]).unwrap_err();
    assert_eq!(e.0[0].line, Some(5), "{e}");
    assert!(messages(&e).contains("epocs"), "{e}");
}
