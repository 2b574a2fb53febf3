//! Advantages match ddpo-pytorch's formulas (fixture from tools/parity/make_ddpo_fixtures.py).

use hrf_train::advantages::{epoch_advantages, PerPromptTracker};

#[test]
fn tracker_and_epoch_advantages_match_the_reference() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/advantages.json");
    let f: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut tracker = PerPromptTracker::new(
        f["buffer_size"].as_u64().unwrap() as usize,
        f["min_count"].as_u64().unwrap() as usize,
    );
    for (e, epoch) in f["epochs"].as_array().unwrap().iter().enumerate() {
        let prompts: Vec<String> = serde_json::from_value(epoch["prompts"].clone()).unwrap();
        let rewards: Vec<f64> = serde_json::from_value(epoch["rewards"].clone()).unwrap();
        let want: Vec<f64> = serde_json::from_value(epoch["per_prompt"].clone()).unwrap();
        let got = tracker.update(&prompts, &rewards);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-9, "epoch {e}: {got:?} vs {want:?}");
        }
        let want: Vec<f64> = serde_json::from_value(epoch["epoch"].clone()).unwrap();
        for (g, w) in epoch_advantages(&rewards).iter().zip(&want) {
            assert!((g - w).abs() < 1e-9, "epoch {e}");
        }
    }
}
