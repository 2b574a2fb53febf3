//! The reward factory: a pipeline's entries become one set in their order, with their weights,
//! transforms and `on_error`; a failure names the entry exactly as users have always seen it.

use std::error::Error as _;
use std::path::{Path, PathBuf};

use hrf_config::pipeline::{NativeSpec, OnError, RewardKind, RewardSpec, ScoreSpec, Transform};
use hrf_plugins::factory::{build_rewards, FactoryError, RewardContext};

fn spec(name: &str, kind: RewardKind) -> RewardSpec {
    RewardSpec {
        name: name.into(),
        weight: 1.0,
        kind,
        batch_size: 16,
        on_error: OnError::Fail,
        transform: Transform::Identity,
    }
}

fn context(classes: &[String]) -> RewardContext<'_> {
    RewardContext {
        models: Path::new("/nonexistent/models"),
        classes,
        seed: 7,
        allow_native: false,
    }
}

fn build_err(specs: &[RewardSpec]) -> FactoryError {
    match build_rewards(specs, &context(&[])) {
        Ok(_) => panic!("built"),
        Err(e) => e,
    }
}

#[test]
fn entries_become_one_set_in_their_order() {
    let mut log = spec("small", RewardKind::Builtin("jpeg-compressibility".into()));
    log.transform = Transform::Log;
    log.on_error = OnError::Skip;
    log.weight = 0.5;
    let specs = [
        spec("big", RewardKind::Builtin("jpeg-incompressibility".into())),
        log,
    ];
    let set = build_rewards(&specs, &context(&[])).unwrap();
    assert_eq!(set.names(), ["big", "small"]);
}

#[test]
fn failures_name_the_entry_as_before() {
    let e = build_err(&[spec("mine", RewardKind::Builtin("nope".into()))]);
    assert_eq!(
        e.to_string(),
        "reward mine: unknown reward \"nope\"; built-ins: jpeg-compressibility, \
         jpeg-incompressibility, aesthetic, prompt-alignment"
    );
    assert!(e.source().is_none());

    // An ONNX chain's error is the entry, then the model's error as its cause.
    let onnx = RewardKind::Onnx {
        stages: vec![hrf_config::reward::StageSpec {
            model: PathBuf::from("/nonexistent/model.onnx"),
            output: Default::default(),
            l2_normalize: false,
        }],
        input: Default::default(),
        score: ScoreSpec::Column(0),
    };
    let e = build_err(&[spec("o", onnx)]);
    assert!(matches!(e, FactoryError::Onnx { .. }), "{e:?}");
    assert_eq!(e.to_string(), "reward o");
    assert!(e.source().is_some());

    // A plugin's error is its own, unchanged.
    let native = RewardKind::Native(NativeSpec {
        path: PathBuf::from("/nonexistent/libx.so"),
        config: serde_json::json!({}),
        trust: Some("native".into()),
    });
    let e = build_err(&[spec("n", native)]);
    assert_eq!(
        e.to_string(),
        "plugin n (/nonexistent/libx.so): a native plugin runs with all of hrf's rights, so it \
         needs `--allow-native` on the command line"
    );
}
