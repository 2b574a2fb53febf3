//! `evaluation.features`: the default per model kind, what each kind resolves to, that the
//! resolved pipeline loads back, and the errors, each named with its field.

use super::*;
use crate::features::FeatureExtractor;
use crate::reward::OutputSel;

fn with(extra: &str) -> String {
    MINIMAL.replace("run:", &format!("{extra}\nrun:"))
}

/// A pipeline on the repository's tiny Stable Diffusion folder (models/sd-tiny).
fn sd_tiny(extra: &str) -> String {
    let sd = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/sd-tiny");
    format!(
        "model: {{weights: {}, lora: {{rank: 2}}}}\nprompts: [a cat, a dog]\nrewards:\n  - {{kind: jpeg-compressibility}}\n{extra}\nrun: {{name: t}}\n",
        sd.display()
    )
}

#[test]
fn features_default_per_model_kind_and_resolve_with_their_paths() {
    let fx = Fixture::new("features");
    let p = fx.load(MINIMAL, &[]).unwrap();
    assert_eq!(p.evaluation.features, FeatureExtractor::Classifier);
    let p = fx.load(&sd_tiny(""), &[]).unwrap();
    assert_eq!(
        p.evaluation.features,
        FeatureExtractor::Pixels { size: 16 },
        "a Stable Diffusion pipeline falls back to pixel features"
    );
    assert_eq!(p.evaluation.features.describe(), "pixels 16×16 (weak)");
    assert!(!p.evaluation.features.has_classes());

    let p = fx
        .load(
            &with("evaluation:\n  features: {kind: onnx, model: ../models/head.onnx, output: image_embeds, input: {size: [224, 224], mean: [0.48, 0.46, 0.41], std: [0.27, 0.26, 0.28]}}"),
            &[],
        )
        .unwrap();
    let FeatureExtractor::Onnx {
        model,
        output,
        input,
    } = &p.evaluation.features
    else {
        panic!("{:?}", p.evaluation.features)
    };
    assert_eq!(model, &canonical(&fx.0.join("models/head.onnx")));
    assert_eq!(output, &OutputSel::Name("image_embeds".into()));
    assert_eq!((input.size, input.mean.len()), (Some([224, 224]), 3));
    assert_eq!(p.evaluation.features.describe(), "onnx head.onnx");

    // Written back with the path absolute and read again; a `--set` reaches the section.
    let text = serde_yaml_text(&p);
    let back = fx.load(&text, &[]).unwrap();
    assert_eq!(back.evaluation.features, p.evaluation.features);
    let p = fx
        .load(
            &sd_tiny(""),
            &["evaluation.features={kind: pixels, size: 8}"],
        )
        .unwrap();
    assert_eq!(p.evaluation.features, FeatureExtractor::Pixels { size: 8 });
}

#[test]
fn bad_features_are_named_with_their_field() {
    let fx = Fixture::new("features-bad");
    let cases = [
        (
            with("evaluation: {features: {kind: onnx, model: ../models/missing.onnx}}"),
            "evaluation.features.model: ",
        ),
        (
            with("evaluation: {features: {kind: pixels, size: 0}}"),
            "evaluation.features.size: must be in 1..=64, got 0",
        ),
        (
            with("evaluation: {features: {kind: pixels, size: 65}}"),
            "evaluation.features.size",
        ),
        (
            with("evaluation: {features: {kind: clip}}"),
            "unknown variant `clip`",
        ),
        (
            with("evaluation: {features: {kind: pixels, model: x.onnx}}"),
            "unknown field `model`",
        ),
        (
            with("evaluation: {features: {kind: onnx, model: ../models/head.onnx, input: {size: [0, 224]}}}"),
            "evaluation.features.input.size: width and height must be in 1..=",
        ),
        (
            sd_tiny("evaluation: {features: {kind: classifier}}"),
            "evaluation.features: the testbed's evaluation classifier judges 1-channel pixel images",
        ),
        (
            sd_tiny("evaluation: {every: 1}\nguard: {class_entropy_floor: 0.5}"),
            "guard.class_entropy_floor: needs class probabilities, which evaluation.features pixels 16×16 (weak) does not give",
        ),
    ];
    for (text, words) in cases {
        let e = fx.load(&text, &[]).unwrap_err();
        let m = messages(&e);
        assert!(m.contains(words), "{text}: {m}");
    }
    // A Vendi floor needs no classes.
    fx.load(
        &sd_tiny("evaluation: {every: 1}\nguard: {vendi_floor: 0.5}"),
        &[],
    )
    .unwrap();
}
