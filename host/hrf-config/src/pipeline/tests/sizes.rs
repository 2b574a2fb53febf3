//! Sizes past what can run, and the memory estimate against a limit.

use super::*;

/// Sizes that would abort, panic or fail on the file system are refused with their field
/// and place; sizes just inside the caps pass.
#[test]
fn sizes_past_what_can_run_are_refused_with_their_place() {
    let fx = Fixture::new("sizes");
    let testbed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/testbed");
    let text = |section: &str, run: &str| {
        format!(
            "model: {{weights: {}}}\n{section}\nrewards:\n  - {{kind: jpeg-compressibility}}\nrun: {run}\n",
            testbed.display()
        )
    };
    let long_name = "a".repeat(300);
    let long_output = format!("{{name: t, output: {}}}", "d/".repeat(2100));
    let onnx = "rewards:\n  - {kind: onnx, name: s, stages: [{model: ../models/head.onnx}], input: {size: [0, 10]}}";
    // (section, run, field, line of the field, words of the message)
    let cases: &[(&str, &str, &str, u64, &str)] = &[
        ("sampling: {batch_size: 4294967295}", "{name: t}", "sampling.batch_size", 2, "must be ≤ 65,536 (images per batch), got 4,294,967,295"),
        ("sampling: {batch_size: 100000}", "{name: t}", "sampling.batch_size", 2, "must be ≤ 65,536"),
        ("sampling: {batch_size: 60000}", "{name: t}", "sampling.batch_size", 2, "the attention scores over 256 pixels one tensor of 7,864,320,000 elements"),
        ("sampling: {batch_size: 4, batches_per_epoch: 70000}", "{name: t}", "sampling.batches_per_epoch", 2, "must be ≤ 65,536 (batches per epoch)"),
        ("sampling: {batch_size: 1024, batches_per_epoch: 2048}", "{name: t}", "sampling.batches_per_epoch", 2, "samples per epoch"),
        ("training: {epochs: 2000000}", "{name: t}", "training.epochs", 2, "must be ≤ 1,000,000 (epochs)"),
        ("sampling: {batch_size: 512, batches_per_epoch: 4}\ntraining: {epochs: 600000}", "{name: t}", "training.epochs", 3, "make 1,228,800,000 samples"),
        ("training: {batch_size: 100000}", "{name: t}", "training.batch_size", 2, "must be ≤ 65,536"),
        ("training: {micro_batch: 0}", "{name: t}", "training.micro_batch", 2, "must be positive, got 0"),
        ("training: {micro_batch: 100000}", "{name: t}", "training.micro_batch", 2, "must be ≤ 65,536"),
        ("training: {micro_batch: 60000}", "{name: t}", "training.micro_batch", 2, "a batch of 60000 makes the attention scores"),
        ("evaluation: {final_samples: 2000000}", "{name: t}", "evaluation.final_samples", 2, "must be ≤ 1,000,000 (samples)"),
        ("training: {method: hrf-d, hrf: {copies: 70000}}", "{name: t}", "training.hrf.copies", 2, "noise copies per anchor"),
        ("sampling: {steps: 40}", &format!("{{name: {long_name}}}"), "run.name", 5, "300 bytes long: with the `-YYYYMMDD-HHMMSS` hrf appends, the run folder's name would be 316 bytes, over the file-system limit of 255 (NAME_MAX)"),
        ("sampling: {steps: 40}", "{name: 'a/b'}", "run.name", 5, "'/' cannot be in a file name"),
        ("sampling: {steps: 40}", &long_output, "run.output", 5, "(PATH_MAX)"),
    ];
    for (section, run, field, line, words) in cases {
        let e = fx.load(&text(section, run), &[]).unwrap_err();
        let msg = messages(&e);
        let found = e.0.iter().find(|x| x.field.as_deref() == Some(*field));
        let found = found.unwrap_or_else(|| panic!("no error for {field}:\n{msg}"));
        assert_eq!(found.line, Some(*line), "{field}:\n{msg}");
        assert!(found.message.contains(words), "{field}: {msg}");
        assert_eq!(e.0.len(), 1, "{msg}");
    }
    let e = fx.load(
        &text(onnx, "{name: t}").replacen("rewards:\n  - {kind: jpeg-compressibility}\n", "", 1),
        &[],
    );
    let msg = messages(&e.unwrap_err());
    assert!(
        msg.contains("rewards[0].input.size: width and height must be in 1..=8192, got [0, 10]"),
        "{msg}"
    );
    // Just inside: a sampling batch whose attention scores fit a tensor, a 239-byte name.
    let ok = text("sampling: {batch_size: 16000, batches_per_epoch: 1, steps: 2}\nevaluation: {samples: 2, final_samples: 2}", &format!("{{name: {}}}", "a".repeat(239)));
    let r = fx.load(&ok, &[]);
    // Whatever this machine's RAM, the estimate of this one is under 32 GiB.
    if let Err(e) = &r {
        assert!(
            messages(e).contains("more than the limit of") && limits::memory_limit().0 < 32 << 30,
            "{e}"
        );
    }
}

#[test]
fn a_memory_estimate_over_the_limit_names_the_estimate_and_the_limit() {
    let testbed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/testbed");
    let shape = ModelShape::of(&ModelSource::Folder(testbed)).unwrap();
    let sizes = RunSizes {
        sampling_batch: 8192,
        batches_per_epoch: 2,
        steps: 40,
        training_batch: 16,
        training_field: "training.batch_size",
        evaluation_batch: 64,
        final_samples: 1000,
        guided_sampling: false,
        guided_evaluation: false,
        base_copy: false,
        reward_inputs: vec![(256, 3072)],
    };
    let file = Path::new("p.yaml");
    let run = |limit: u64| {
        let mut p = Problems::new(file);
        check_sizes(
            &mut p,
            &shape,
            &sizes,
            (limit, "this machine's RAM (/proc/meminfo)".into()),
        );
        p.list
    };
    assert_eq!(run(64 << 30), []);
    let list = run(4 << 30);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].field.as_deref(), Some("sampling.batch_size"));
    let msg = &list[0].message;
    assert!(msg.contains("the run needs an estimated 1"), "{msg}");
    assert!(
        msg.contains("more than the limit of 4.0 GiB (this machine's RAM (/proc/meminfo))"),
        "{msg}"
    );
}

/// The KL term's base model is a second copy in the estimate for a pixel UNet, and none for a
/// Stable Diffusion pipeline, whose base is its own weights with the LoRA adapters off.
#[test]
fn a_kl_base_is_a_second_copy_only_of_a_pixel_model() {
    let fx = Fixture::new("kl-base");
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
    let model_part = |model: &str| {
        let text = format!(
            "model: {model}\n{}training: {{kl_coef: 0.1}}\nrewards:\n  - {{kind: jpeg-compressibility}}\nrun: {{name: t}}\n",
            if model.contains("sd-tiny") { "prompts: [a cat]\n" } else { "" }
        );
        let p = fx.load(&text, &[]).unwrap();
        let parts = p.memory_estimate().unwrap();
        parts.into_iter().find(|x| x.field == "model").unwrap().what
    };
    let pixel = model_part(&format!(
        "{{weights: {}}}",
        models.join("testbed").display()
    ));
    assert!(pixel.contains("and the frozen base model"), "{pixel}");
    let sd = model_part(&format!(
        "{{weights: {}, lora: {{rank: 2}}}}",
        models.join("sd-tiny").display()
    ));
    assert!(!sd.contains("frozen base model"), "{sd}");
}
