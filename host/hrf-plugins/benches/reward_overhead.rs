//! Per-call cost of rewards on one batch of 64 real Fashion-MNIST test images (32×32 grey), all
//! measured in this one process: the built-in JPEG compressibility, the same reward as a WASM
//! plugin (same encoder and settings, plugins/examples/jpeg-wasm), and a WASM plugin doing
//! almost nothing (the mean pixel: the fixed cost of crossing into the sandbox and back).
//! Prints microseconds per call (median of many calls) and the ratios.
//!
//! `cargo bench -p hrf-plugins` (set-up builds the plugins first); `-- jpeg` for the JPEG rows only.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hrf_core::{Reward, Sample};
use hrf_plugins::{WasmReward, WasmSettings};

fn median_us(r: &mut dyn Reward, samples: &[Sample]) -> f64 {
    for _ in 0..20 {
        r.score(samples).expect("scores");
    }
    let mut t: Vec<f64> = (0..300)
        .map(|_| {
            let s = Instant::now();
            r.score(samples).expect("scores");
            s.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn wasm(name: &str, config: serde_json::Value) -> WasmReward {
    wasm_with(name, config, Default::default())
}

fn wasm_with(
    name: &str,
    config: serde_json::Value,
    models: std::collections::BTreeMap<String, PathBuf>,
) -> WasmReward {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../plugins/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    WasmReward::load(WasmSettings {
        name: name.into(),
        path,
        config,
        timeout: Duration::from_secs(10),
        memory_bytes: 256 << 20,
        fuel: None,
        sha256: None,
        seed: 0,
        models,
    })
    .expect("plugin loads (./setup.sh builds plugins/)")
}

fn main() {
    // `cargo bench -p hrf-plugins -- jpeg`: the JPEG rows only (for profiling the guest).
    let only_jpeg = std::env::args().skip(1).any(|a| a == "jpeg");
    let test = hrf_data::fashion_mnist(None, hrf_data::Split::Test)
        .expect("Fashion-MNIST")
        .fit_to(32, 0);
    let samples: Vec<Sample> = (0..64)
        .map(|i| Sample {
            image: test.image(i),
            prompt: None,
            metadata: serde_json::json!({"epoch": 0}),
        })
        .collect();
    let mut builtin = hrf_rewards::jpeg::JpegCompressibility::new(
        hrf_rewards::jpeg::JpegDirection::Compressibility,
    );
    let mut jpeg = wasm("jpeg_wasm", serde_json::json!({}));
    let mut trivial = wasm("misbehave", serde_json::json!({"mode": "ok"}));
    let models = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models");
    let mut aesthetic = hrf_rewards::builtin::builtin("aesthetic", &models, &[]).expect("models");
    let mut aesthetic_wasm = wasm_with(
        "aesthetic_wasm",
        serde_json::json!({}),
        [
            ("encoder", hrf_rewards::builtin::REWARD_CLASSIFIER),
            ("head", hrf_rewards::builtin::AESTHETIC_HEAD),
        ]
        .into_iter()
        .map(|(k, f)| (k.to_string(), models.join(f)))
        .collect(),
    );
    let mut native = hrf_plugins::native::NativeReward::load(hrf_plugins::native::NativeSettings {
        name: "brightness-c".into(),
        path: PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../plugins/target/native/libbrightness_c.so"),
        config: serde_json::json!({}),
        trusted_by_pipeline: true,
        allowed_by_command_line: true,
    })
    .expect("native plugin (./setup.sh builds it)");
    let b = median_us(&mut builtin, &samples);
    let j = median_us(&mut jpeg, &samples);
    let t = median_us(&mut trivial, &samples);
    println!("reward call on 64 images of 32×32 (median of 300 calls)");
    println!("  built-in jpeg-compressibility   {b:9.1} µs");
    println!(
        "  wasm jpeg plugin                {j:9.1} µs   ({:.2}× the built-in)",
        j / b
    );
    println!("  wasm trivial plugin (overhead)  {t:9.1} µs");
    if only_jpeg {
        return;
    }
    let n = median_us(&mut native, &samples);
    println!("  native C plugin (brightness)    {n:9.1} µs");
    let a = median_us(aesthetic.as_mut(), &samples);
    let aw = median_us(&mut aesthetic_wasm, &samples);
    println!("  built-in aesthetic (onnx)       {a:9.1} µs");
    println!(
        "  wasm aesthetic via host onnx    {aw:9.1} µs   ({:.2}× the built-in)",
        aw / a
    );
}
