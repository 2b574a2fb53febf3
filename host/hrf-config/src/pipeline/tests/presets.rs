//! `training.preset: authors`, HRF's `update` and `clip_scale`, and the learning-rate schedule:
//! what they resolve to, and their errors named with their field.

use super::*;
use crate::training::{ClipScale, GroupUpdate, LrSchedule, Preset};

fn hrf(steps: usize, training: &str) -> String {
    MINIMAL.replace(
        "run:",
        &format!(
            "sampling: {{steps: {steps}, batch_size: 10, batches_per_epoch: 2}}\n\
             training: {training}\nrun:"
        ),
    )
}

#[test]
fn the_authors_preset_fills_what_the_pipeline_leaves_out() {
    let fx = Fixture::new("preset");
    let p = fx
        .load(&hrf(40, "{method: hrf-d, epochs: 4, preset: authors}"), &[])
        .unwrap();
    let t = &p.training;
    assert_eq!(t.preset, Some(Preset::Authors));
    let h = t.hrf.as_ref().unwrap();
    assert_eq!(h.group_size, 5);
    assert_eq!(h.update, GroupUpdate::PerGroup);
    assert_eq!(h.clip_scale, ClipScale::Chain);
    assert_eq!(h.copies, 5, "copies = group size");
    assert_eq!(h.stride, 2, "every 2nd step of 40: 20 candidates");
    assert_eq!(t.batch_size, 5, "a train batch is one group");
    assert_eq!(t.timestep_fraction, 1.0);
    assert_eq!((t.adv_clip, t.clip_range), (2.5, 1e-4));
    assert_eq!(t.step_reduction, StepReduction::Sum);
    assert_eq!(t.optimizer.weight_decay, 1e-3);
    // The resolved pipeline (which names the preset and spells out every field) loads back.
    let back = fx.load(&serde_yaml_text(&p), &[]).unwrap();
    assert_eq!(back.training, p.training);

    // 20 steps: a candidate at every step. Fields given explicitly win over the preset.
    let p = fx
        .load(
            &hrf(
                20,
                "{method: hrf, epochs: 4, preset: authors, timestep_fraction: 0.5, \
                 hrf: {group_size: 4, clip_scale: off}}",
            ),
            &[],
        )
        .unwrap();
    let h = p.training.hrf.as_ref().unwrap();
    assert_eq!(
        (h.stride, h.group_size, h.clip_scale),
        (1, 4, ClipScale::Off)
    );
    assert_eq!(
        (p.training.batch_size, p.training.timestep_fraction),
        (4, 0.5)
    );

    // Without the preset, the defaults are as before.
    let p = fx.load(&hrf(40, "{method: hrf, epochs: 4}"), &[]).unwrap();
    let h = p.training.hrf.as_ref().unwrap();
    assert_eq!((h.group_size, h.stride), (4, 2));
    assert_eq!(
        (h.update, h.clip_scale),
        (GroupUpdate::Shuffled, ClipScale::Trainable)
    );
    assert_eq!(p.training.batch_size, 16);
    assert_eq!(p.training.optimizer.schedule, LrSchedule::Constant);

    // `--set …clip_scale=off` (which YAML 1.1 reads as false) is `off` too; the other names
    // and a wrong value as they are written.
    let base = hrf(40, "{method: hrf, epochs: 4, preset: authors}");
    for (value, want) in [
        ("off", ClipScale::Off),
        ("chain", ClipScale::Chain),
        ("trainable", ClipScale::Trainable),
    ] {
        let p = fx
            .load(&base, &[&format!("training.hrf.clip_scale={value}")])
            .unwrap();
        assert_eq!(p.training.hrf.unwrap().clip_scale, want, "{value}");
    }
    for bad in ["on", "whole"] {
        let e = fx
            .load(&base, &[&format!("training.hrf.clip_scale={bad}")])
            .unwrap_err();
        let m = messages(&e);
        assert!(
            m.contains("training.hrf.clip_scale") && m.contains("trainable, chain, off"),
            "{bad}: {m}"
        );
    }
}

#[test]
fn preset_and_schedule_errors_name_their_field() {
    let fx = Fixture::new("preset-bad");
    let cases = [
        (
            "{method: ddpo-is, preset: authors}",
            "training.preset",
            "only methods hrf and hrf-d",
        ),
        (
            "{method: hrf, preset: authors, batch_size: 8}",
            "training.batch_size",
            "one anchor group of 5",
        ),
        (
            "{optimizer: {lr: 1e-4, min_lr: 1e-5}}",
            "training.optimizer.min_lr",
            "`schedule: cosine` only",
        ),
        (
            "{epochs: 4, optimizer: {schedule: cosine, warmup_epochs: 4}}",
            "training.optimizer.warmup_epochs",
            "must be < training.epochs (4)",
        ),
        (
            "{epochs: 4, optimizer: {schedule: cosine, lr: 1e-4, min_lr: 1e-3}}",
            "training.optimizer.min_lr",
            "in [0, training.optimizer.lr]",
        ),
        (
            "{optimizer: {warmup_start_factor: 0}}",
            "training.optimizer.warmup_start_factor",
            "in (0, 1]",
        ),
        (
            "{epochs: 3, optimizer: {warmup_epochs: 4}}",
            "training.optimizer.warmup_epochs",
            "must be ≤ training.epochs (3)",
        ),
    ];
    for (training, field, words) in cases {
        let e = fx.load(&hrf(10, training), &[]).unwrap_err();
        assert_eq!(e.0.len(), 1, "{training}: {e}");
        assert_eq!(e.0[0].field.as_deref(), Some(field), "{training}: {e}");
        assert_eq!(e.0[0].line, Some(5), "{training}: {e}");
        assert!(messages(&e).contains(words), "{training}: {e}");
    }
    // A cosine schedule resolves with its floor and loads back.
    let p = fx
        .load(
            &hrf(
                10,
                "{epochs: 6, optimizer: {schedule: cosine, warmup_epochs: 1, min_lr: 1e-6}}",
            ),
            &[],
        )
        .unwrap();
    assert_eq!(p.training.optimizer.min_lr, Some(1e-6));
    let back = fx.load(&serde_yaml_text(&p), &[]).unwrap();
    assert_eq!(back.training, p.training);
}

/// DDPO with group advantages (GRPO-style groups of consecutive samples): needs a group size
/// that splits the epoch; HRF's groups are its anchors.
#[test]
fn ddpo_group_advantages_take_a_group_size() {
    let fx = Fixture::new("ddpo-groups");
    let with = |training: &str, advantages: &str| {
        MINIMAL.replace(
            "run:",
            &format!(
                "sampling: {{steps: 10, batch_size: 10, batches_per_epoch: 2}}\n\
                 training: {training}\nadvantages: {advantages}\nrun:"
            ),
        )
    };
    let p = fx
        .load(
            &with("{method: ddpo-is}", "{mode: group, group_size: 5}"),
            &[],
        )
        .unwrap();
    assert_eq!(p.advantages.mode, AdvantageMode::Group);
    assert_eq!(p.advantages.group_size, Some(5));
    let back = fx.load(&serde_yaml_text(&p), &[]).unwrap();
    assert_eq!(back.advantages, p.advantages);
    for (training, advantages, field, words) in [
        (
            "{method: ddpo-is}",
            "{mode: group}",
            "advantages.mode",
            "need advantages.group_size",
        ),
        (
            "{method: ddpo-is}",
            "{mode: group, group_size: 3}",
            "advantages.group_size",
            "whole groups of 3",
        ),
        (
            "{method: ddpo-is}",
            "{mode: epoch, group_size: 4}",
            "advantages.group_size",
            "`mode: group` only",
        ),
        (
            "{method: hrf}",
            "{mode: group, group_size: 4}",
            "advantages.group_size",
            "training.hrf.group_size",
        ),
    ] {
        let e = fx.load(&with(training, advantages), &[]).unwrap_err();
        assert_eq!(e.0.len(), 1, "{advantages}: {e}");
        assert_eq!(e.0[0].field.as_deref(), Some(field), "{advantages}: {e}");
        assert!(messages(&e).contains(words), "{advantages}: {e}");
    }
}
