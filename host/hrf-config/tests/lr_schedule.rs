//! `training.optimizer`'s learning-rate schedule against torch's schedulers: the rates in
//! tests/fixtures/lr_schedules.json were written by tools/parity/make_lr_fixtures.py from
//! `LinearLR` (warm-up) and `CosineAnnealingLR` chained by `SequentialLR`.

use hrf_config::training::{LrSchedule, OptimizerSettings};
use serde_json::Value;

#[test]
fn warmup_and_cosine_rates_equal_torchs_schedulers() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/lr_schedules.json"
    );
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 5);
    for case in cases {
        let schedule = match case["schedule"].as_str().unwrap() {
            "cosine" => LrSchedule::Cosine,
            "constant" => LrSchedule::Constant,
            other => panic!("unknown schedule {other}"),
        };
        let o = OptimizerSettings {
            lr: case["lr"].as_f64().unwrap(),
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            schedule,
            warmup_epochs: case["warmup_epochs"].as_u64().unwrap() as usize,
            warmup_start_factor: case["warmup_start_factor"].as_f64().unwrap(),
            min_lr: case["min_lr"].as_f64(),
        };
        let epochs = case["epochs"].as_u64().unwrap() as usize;
        let rates = case["rates"].as_array().unwrap();
        assert_eq!(rates.len(), epochs);
        for (e, want) in rates.iter().enumerate() {
            let want = want.as_f64().unwrap();
            let got = o.lr_at(e as u64, epochs);
            assert!(
                (got - want).abs() <= 1e-9 * want.abs().max(1e-12),
                "{:?} warm-up {} epoch {e}: hrf {got:e}, torch {want:e}",
                o.schedule,
                o.warmup_epochs
            );
        }
    }
}
