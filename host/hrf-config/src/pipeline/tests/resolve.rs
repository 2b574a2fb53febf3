//! Defaults filled and paths resolved; the resolved pipeline loads back to itself.

use super::*;

#[test]
fn a_minimal_pipeline_gets_every_default() {
    let fx = Fixture::new("minimal");
    let p = fx.load(MINIMAL, &[]).unwrap();
    assert_eq!(
        p.model.source,
        ModelSource::Folder(canonical(&fx.0.join("models/base")))
    );
    assert_eq!(p.scheduler, None);
    assert_eq!(p.sampling, SamplingSettings::default());
    assert_eq!(p.training, TrainingSettings::default());
    assert_eq!(p.advantages, AdvantageSettings::default());
    assert!(p.prompts.is_empty());
    assert_eq!(
        p.rewards,
        [RewardSpec {
            name: "jpeg-compressibility".into(),
            weight: 1.0,
            kind: RewardKind::Builtin("jpeg-compressibility".into()),
            batch_size: 256,
            on_error: OnError::Fail,
            transform: Transform::Identity,
        }]
    );
    assert_eq!(p.evaluation.every, 5);
    assert_eq!(p.evaluation.guidance, p.sampling.guidance);
    assert_eq!(p.evaluation.best_by, BestBy::Reward);
    assert_eq!(p.run.output, canonical(&fx.0.join("configs/runs")));
    assert_eq!((p.run.seed, p.run.save_every, p.run.keep), (0, 5, 2));
    assert_eq!(p.text, MINIMAL);
}

#[test]
fn a_full_pipeline_parses_and_resolves() {
    let fx = Fixture::new("full");
    let p = fx.load(FULL, &[]).unwrap();
    assert_eq!(p.model.device, "cpu");
    assert_eq!(p.scheduler.as_ref().unwrap()["num_train_timesteps"], 1000);
    assert_eq!(p.sampling.steps, 20);
    assert_eq!(p.sampling.sigma_min, 1e-4);
    assert_eq!(p.training.optimizer.lr, 3e-4);
    assert_eq!(p.training.optimizer.beta2, 0.999);
    assert_eq!(p.training.step_reduction, StepReduction::Sum);
    assert_eq!(p.training.seed, 7, "training.seed is run.seed");
    // Prompts are given, so the advantage mode defaults to the per-prompt tracker.
    assert_eq!(p.advantages.mode, AdvantageMode::PerPrompt);
    assert_eq!((p.advantages.buffer_size, p.advantages.min_count), (64, 16));
    assert_eq!(p.prompts, ["a photo of a shirt", "a photo of a sneaker"]);
    assert_eq!(p.rewards[0].name, "prompt-alignment");
    assert_eq!(p.rewards[0].weight, 2.0);
    let RewardKind::Onnx {
        stages,
        input,
        score,
    } = &p.rewards[1].kind
    else {
        panic!("{:?}", p.rewards[1]);
    };
    assert_eq!(stages[0].model, canonical(&fx.0.join("models/head.onnx")));
    assert_eq!(
        stages[0].output,
        crate::reward::OutputSel::Name("features".into())
    );
    assert!(stages[0].l2_normalize && !stages[1].l2_normalize);
    assert_eq!(input.size, Some([224, 224]));
    assert_eq!(input.mean, [0.5]);
    assert_eq!(
        *score,
        ScoreSpec::PromptedClass(Some(vec!["shirt".into(), "sneaker".into()]))
    );
    assert_eq!(p.rewards[1].batch_size, 16);
    assert_eq!(p.evaluation.guidance, 2.0);
    assert_eq!(
        p.evaluation.best_by,
        BestBy::RewardAndDiversity {
            min_vendi_ratio: 0.8
        }
    );
    assert_eq!(p.run.output, canonical(&fx.0.join("runs")));
}

#[test]
fn the_resolved_pipeline_loads_back_to_the_same_pipeline() {
    let fx = Fixture::new("resolved");
    let tricky = MINIMAL.replace(
        "run:",
        "prompts: ['1', 'yes', 'null', 'a: b', '#x']\nscheduler: {beta_start: 0.0001}\nrun:",
    );
    for text in [MINIMAL, FULL, &tricky] {
        let p = fx.load(text, &[]).unwrap();
        let json = serde_json::to_string_pretty(&p).unwrap();
        let yaml = p.resolved_yaml();
        assert!(yaml.starts_with("model:"), "{yaml}");
        // Read back as a tree, YAML and JSON alike give the same values.
        let file = fx.0.join("tree.yaml");
        std::fs::write(&file, &yaml).unwrap();
        assert_eq!(read_resolved(&file).unwrap(), p.resolved(), "{yaml}");
        std::fs::write(&file, &json).unwrap();
        assert_eq!(read_resolved(&file).unwrap(), p.resolved(), "{json}");
        for (name, resolved) in [("json", json), ("yaml", yaml)] {
            // From another folder: every path in it is absolute.
            let other = fx.0.join(format!("elsewhere/pipeline.resolved.{name}"));
            std::fs::create_dir_all(other.parent().unwrap()).unwrap();
            std::fs::write(&other, &resolved).unwrap();
            let back = load(&other).unwrap_or_else(|e| panic!("{e}\n{resolved}"));
            assert_eq!(
                RunPipeline {
                    file: p.file.clone(),
                    text: p.text.clone(),
                    ..back
                },
                p,
                "{resolved}"
            );
        }
    }
}

#[test]
fn on_error_is_fail_unless_the_entry_says_skip() {
    let fx = Fixture::new("on-error");
    let text = |v: &str| two_rewards("jpeg-compressibility", "on_error", v);
    let p = fx.load(&text("skip"), &[]).unwrap();
    assert_eq!(
        (p.rewards[0].on_error, p.rewards[1].on_error),
        (OnError::Fail, OnError::Skip)
    );
    let e = fx.load(&text("sometimes"), &[]).unwrap_err();
    let msg = messages(&e);
    assert!(
        msg.contains("p.yaml:4:44: unknown variant `sometimes`, expected one of fail, skip"),
        "{msg}"
    );
}

#[test]
fn transform_is_identity_unless_the_entry_says_log() {
    let fx = Fixture::new("transform");
    let text = |v: &str| two_rewards("jpeg-incompressibility", "transform", v);
    let p = fx.load(&text("log"), &[]).unwrap();
    assert_eq!(
        (p.rewards[0].transform, p.rewards[1].transform),
        (Transform::Identity, Transform::Log)
    );
    let e = fx.load(&text("ln"), &[]).unwrap_err();
    let msg = messages(&e);
    assert!(
        msg.contains("p.yaml:4:47: unknown variant `ln`, expected one of identity, log"),
        "{msg}"
    );
}

#[test]
fn hrf_takes_its_own_defaults_and_resolves_the_window() {
    let fx = Fixture::new("hrf");
    let text = MINIMAL.replace(
        "run:",
        "sampling: {steps: 10, batch_size: 8, batches_per_epoch: 2}\ntraining: {method: hrf, epochs: 5}\nrun:",
    );
    let p = fx.load(&text, &[]).unwrap();
    let t = &p.training;
    assert_eq!((t.adv_clip, t.step_reduction), (2.5, StepReduction::Sum));
    assert_eq!(t.optimizer.weight_decay, 1e-3);
    assert_eq!(p.advantages.mode, AdvantageMode::Group);
    let h = t.hrf.as_ref().unwrap();
    assert_eq!((h.group_size, h.stride, h.copies, h.beta), (4, 2, 4, 0.5));
    // Halves of the chain; 5 epochs split at round(2.5) = 3 (half away from zero).
    assert_eq!(h.window[0].steps, (0..5).collect::<Vec<_>>());
    assert_eq!(h.window[1].steps, (5..10).collect::<Vec<_>>());
    assert_eq!((h.window[0].epochs, h.window[1].epochs), (3, 2));
    assert_eq!(h.cluster_at(2).steps[0], 0);
    assert_eq!(h.cluster_at(3).steps[0], 5);
    // The resolved pipeline loads back to the same one.
    let back = fx.load(&serde_yaml_text(&p), &[]).unwrap();
    assert_eq!(back.training, p.training);

    // Explicit lists and whole epoch counts.
    let p = fx
        .load(
            &text,
            &[
                "training.method=hrf-d",
                "training.hrf.window=[{steps: [7, 2, 2], epochs: 4}, {range: [0, 10], epochs: 1}]",
                "training.hrf.copies=2",
            ],
        )
        .unwrap();
    let h = p.training.hrf.as_ref().unwrap();
    assert_eq!(h.window[0].steps, vec![2, 7]);
    assert_eq!(
        (h.window[0].epochs, h.window[1].epochs, h.copies),
        (4, 1, 2)
    );

    // DDPO keeps ddpo-pytorch's defaults; its ablation takes a start index.
    let p = fx
        .load(
            &text,
            &["training.method=ddpo-is", "training.start={fixed: 3}"],
        )
        .unwrap();
    assert_eq!(
        (p.training.adv_clip, p.training.step_reduction),
        (5.0, StepReduction::Mean)
    );
    assert_eq!(p.training.start, Some(StartIndex::Fixed(3)));
    assert!(p.training.hrf.is_none());
}

#[test]
fn prompts_come_from_a_file_relative_to_the_yaml() {
    let fx = Fixture::new("prompts");
    let text = MINIMAL.replace("run:", "prompts: {file: prompts.txt}\nrun:");
    let p = fx.load(&text, &[]).unwrap();
    assert_eq!(p.prompts, ["a photo of a shirt", "a photo of a sneaker"]);
    assert_eq!(p.advantages.mode, AdvantageMode::PerPrompt);

    let e = fx
        .load(&text.replace("prompts.txt", "nope.txt"), &[])
        .unwrap_err();
    assert_eq!(e.0[0].field.as_deref(), Some("prompts.file"), "{e}");
    assert!(messages(&e).contains("nope.txt"), "{e}");

    std::fs::write(fx.0.join("configs/empty.txt"), "# nothing\n\n").unwrap();
    let e = fx
        .load(&text.replace("prompts.txt", "empty.txt"), &[])
        .unwrap_err();
    assert!(messages(&e).contains("has no prompts"), "{e}");
}

#[test]
fn training_precision_is_fp32_unless_bf16_is_asked_for() {
    let fx = Fixture::new("precision");
    let with = |v: &str| {
        MINIMAL.replacen(
            "rewards:",
            &format!("training: {{precision: {v}}}\nrewards:"),
            1,
        )
    };
    assert_eq!(
        fx.load(MINIMAL, &[]).unwrap().training.precision,
        TrainingPrecision::Fp32
    );
    let bf16 = fx.load(&with("bf16"), &[]).unwrap();
    assert_eq!(bf16.training.precision, TrainingPrecision::Bf16);
    // The resolved pipeline says it; an fp32 one does not, as before the field existed.
    assert!(bf16.resolved_yaml().contains("precision: bf16"));
    let fp32 = fx.load(MINIMAL, &[]).unwrap().resolved_yaml();
    assert!(!fp32.contains("precision:"), "{fp32}");
    let e = fx.load(&with("fp16"), &[]).unwrap_err();
    let msg = messages(&e);
    assert!(
        msg.contains("p.yaml:2:23: unknown variant `fp16`, expected one of fp32, bf16"),
        "{msg}"
    );
}
