//! `guard:` and `evaluation.gold`: what they resolve to, that the resolved pipeline loads
//! back, and their errors named with their field.

use super::*;
use crate::guard::{Floor, FloorGiven, GuardAction, GuardSettings};
use crate::pipeline::OnError;

fn with(extra: &str) -> String {
    MINIMAL.replace("run:", &format!("{extra}\nrun:"))
}

#[test]
fn guards_and_gold_rewards_resolve_and_load_back() {
    let fx = Fixture::new("guard");
    let p = fx
        .load(
            &with(
                "evaluation:
  every: 2
  gold:
    - {kind: jpeg-incompressibility, name: size-kb}
    - {kind: aesthetic, on_error: skip}
guard:
  vendi_floor: 0.8
  class_entropy_floor: {absolute: 1.5}
  gold_drop: 0.25
  patience: 2
  action: rollback
  lr_factor: 0.5",
            ),
            &[],
        )
        .unwrap();
    let g = p.guard.as_ref().unwrap();
    assert_eq!(g.vendi_floor, Some(Floor::Fraction(0.8)));
    assert_eq!(g.vendi_floor.unwrap().threshold(10.0), 8.0);
    assert_eq!(
        g.class_entropy_floor,
        Some(Floor::Given(FloorGiven::Absolute(1.5)))
    );
    assert_eq!(g.class_entropy_floor.unwrap().threshold(10.0), 1.5);
    assert_eq!(
        (
            g.gold_drop,
            g.patience,
            g.action,
            g.lr_factor,
            g.max_rollbacks
        ),
        (Some(0.25), 2, GuardAction::Rollback, 0.5, 3)
    );
    let names: Vec<&str> = p.gold.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["size-kb", "aesthetic"]);
    assert_eq!(p.gold[1].on_error, OnError::Skip);
    assert_eq!(p.rewards.len(), 1, "gold rewards are not trained on");

    // Written back with every default (the floor in its map form) and read again.
    let text = serde_yaml_text(&p);
    assert!(text.contains("\"relative\": 0.8"), "{text}");
    let back = fx.load(&text, &[]).unwrap();
    assert_eq!((back.guard, back.gold), (p.guard.clone(), p.gold.clone()));

    // A `--set` reaches the section.
    let p = fx
        .load(
            &with("evaluation: {every: 1}\nguard: {vendi_floor: 0.9}"),
            &["guard.vendi_floor={absolute: 9}", "guard.patience=3"],
        )
        .unwrap();
    let g = p.guard.unwrap();
    assert_eq!(g.vendi_floor, Some(Floor::Given(FloorGiven::Absolute(9.0))));
    assert_eq!((g.patience, g.action), (3, GuardAction::Stop));
    // No section: no guard.
    let p = fx.load(MINIMAL, &[]).unwrap();
    assert_eq!((p.guard, p.gold.len()), (None, 0));
    assert_eq!(GuardSettings::default().patience, 1);
}

#[test]
fn bad_guards_are_named_with_their_field() {
    let fx = Fixture::new("guard-bad");
    let cases = [
        ("guard: {patience: 2}", "guard: give at least one check"),
        (
            "guard: {vendi_floor: 1.5}",
            "guard.vendi_floor: must be a fraction in (0, 1]",
        ),
        (
            "guard: {vendi_floor: 0}",
            "guard.vendi_floor: must be a fraction in (0, 1]",
        ),
        (
            "guard: {class_entropy_floor: {absolute: -1}}",
            "guard.class_entropy_floor: must be > 0",
        ),
        ("guard: {vendi_floor: {ratio: 0.5}}", "ratio"),
        (
            "guard: {gold_drop: 0.1}",
            "guard.gold_drop: needs gold rewards",
        ),
        (
            "evaluation: {gold: [{kind: aesthetic}]}\nguard: {gold_drop: -0.1}",
            "guard.gold_drop: must be > 0",
        ),
        ("guard: {vendi_floor: 0.8, patience: 0}", "guard.patience"),
        (
            "guard: {vendi_floor: 0.8, lr_factor: 0.5}",
            "guard.lr_factor: only `action: rollback` takes it",
        ),
        (
            "guard: {vendi_floor: 0.8, action: rollback, lr_factor: 2}",
            "guard.lr_factor: must be in (0, 1]",
        ),
        (
            "guard: {vendi_floor: 0.8, action: rollback, max_rollbacks: 0}",
            "guard.max_rollbacks",
        ),
        ("guard: {vendi_floor: 0.8, action: retry}", "retry"),
        (
            "evaluation: {every: 0}\nguard: {vendi_floor: 0.8}",
            "set evaluation.every > 0",
        ),
        (
            "evaluation: {gold: [{kind: aesthetic}, {kind: aesthetic}]}",
            "evaluation.gold[1].name: duplicate reward name",
        ),
        (
            "evaluation: {gold: [{kind: aesthetic, weight: 0}]}",
            "evaluation.gold[0].weight",
        ),
        (
            "evaluation: {gold: [{kind: prompt-alignment}]}",
            "evaluation.gold[0]",
        ),
    ];
    for (extra, words) in cases {
        let e = fx.load(&with(extra), &[]).unwrap_err();
        let m = messages(&e);
        assert!(m.contains(words), "{extra}: {m}");
    }
}
