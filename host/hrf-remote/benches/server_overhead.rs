//! The cost of a `kind: http` reward call on one batch of 64 real Fashion-MNIST test images
//! (32×32 grey) through a local Seldon MLServer, beside the built-in JPEG compressibility in
//! this process: MLServer serving a model that scores 0 without looking (benches/zero: the cost
//! of the kind itself: JSON, HTTP, MLServer's decoding and reply), the same with PNG encoding,
//! and the contrast example (plugins/servers/mlserver/contrast, pure Python). Medians of many
//! calls, one request per call.
//!
//! `cargo bench -p hrf-remote --bench server_overhead [-- --run RUN_DIR]` (tools/servers/env.sh
//! installs MLServer); with `--run`, the overhead is also given as a share of that run's mean
//! epoch (its metrics.jsonl: wall time and images scored per epoch, each image costing 1/64 of
//! a 64-image call).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hrf_config::pipeline::{HttpSpec, ServerSpec};
use hrf_config::reward::{HttpInputs, ImageEncoding};
use hrf_core::{Reward, Sample};
use hrf_remote::InferenceReward;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// MLServer serving `models` on `port`, once its model `name` is ready.
fn mlserver(models: &Path, port: u16, name: &str) -> Server {
    let bin = repo().join(".deps/servers/bin/mlserver");
    assert!(
        bin.exists(),
        "{} missing: run tools/servers/env.sh",
        bin.display()
    );
    let child = Command::new(bin)
        .arg("start")
        .arg(models)
        .env("MLSERVER_HOST", "127.0.0.1")
        .env("MLSERVER_HTTP_PORT", port.to_string())
        .env("MLSERVER_GRPC_PORT", free_port().to_string())
        .env("MLSERVER_METRICS_PORT", free_port().to_string())
        .env("MLSERVER_PARALLEL_WORKERS", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mlserver starts");
    let server = Server(child);
    let t = Instant::now();
    let spec = spec(port, name, ImageEncoding::Uint8);
    while InferenceReward::load(name, &spec).is_err() {
        assert!(t.elapsed() < Duration::from_secs(120), "mlserver not ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    server
}

fn spec(port: u16, model: &str, encoding: ImageEncoding) -> HttpSpec {
    HttpSpec {
        server: ServerSpec {
            url: format!("http://127.0.0.1:{port}"),
            model: model.into(),
            concurrency: 1,
            timeout_s: 30.0,
            retries: 0,
            backoff_s: 0.0,
            auth_env: None,
            max_reply_mb: 16,
            tls_ca: None,
        },
        encoding,
        inputs: HttpInputs::default(),
        output: "score".into(),
        max_batch: 64,
    }
}

fn median_us(r: &mut dyn Reward, samples: &[Sample], calls: usize) -> f64 {
    for _ in 0..10 {
        r.score(samples).expect("scores");
    }
    let mut t: Vec<f64> = (0..calls)
        .map(|_| {
            let s = Instant::now();
            r.score(samples).expect("scores");
            s.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// A run's mean epoch: wall seconds (sampling, waiting for rewards, training) and images scored.
fn mean_epoch(run: &Path) -> (f64, f64) {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).expect("the run's metrics.jsonl");
    let epochs: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["kind"] == "epoch")
        .collect();
    assert!(!epochs.is_empty(), "no epoch in {}", run.display());
    let n = epochs.len() as f64;
    let wall: f64 = epochs
        .iter()
        .map(|e| {
            ["sample_s", "reward_wait_s", "train_s"]
                .iter()
                .map(|k| e[k].as_f64().unwrap())
                .sum::<f64>()
        })
        .sum();
    let images: f64 = epochs
        .iter()
        .map(|e| e["reward_calls"].as_f64().unwrap())
        .sum();
    (wall / n, images / n)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // cargo runs benches in the package's folder: a relative path is the repository's.
    let run = args
        .iter()
        .position(|a| a == "--run")
        .map(|i| PathBuf::from(&args[i + 1]))
        .map(|p| if p.is_relative() { repo().join(p) } else { p });
    let test = hrf_data::fashion_mnist(None, hrf_data::Split::Test)
        .expect("Fashion-MNIST")
        .fit_to(32, 0);
    let samples: Vec<Sample> = (0..64)
        .map(|i| Sample {
            image: test.image(i),
            prompt: None,
            metadata: serde_json::json!({"epoch": 0, "group": i}),
        })
        .collect();
    let mut builtin = hrf_rewards::jpeg::JpegCompressibility::new(
        hrf_rewards::jpeg::JpegDirection::Compressibility,
    );
    let b = median_us(&mut builtin, &samples, 300);

    let zero_port = free_port();
    let _zero = mlserver(
        &repo().join("host/hrf-remote/benches/zero"),
        zero_port,
        "zero",
    );
    let mut zero =
        InferenceReward::load("zero", &spec(zero_port, "zero", ImageEncoding::Uint8)).unwrap();
    let mut zero_png =
        InferenceReward::load("zero", &spec(zero_port, "zero", ImageEncoding::Png)).unwrap();
    let z = median_us(&mut zero, &samples, 300);
    let zp = median_us(&mut zero_png, &samples, 300);
    let contrast_port = free_port();
    let _contrast = mlserver(
        &repo().join("plugins/servers/mlserver/contrast"),
        contrast_port,
        "contrast",
    );
    let mut contrast = InferenceReward::load(
        "contrast",
        &spec(contrast_port, "contrast", ImageEncoding::Uint8),
    )
    .unwrap();
    let c = median_us(&mut contrast, &samples, 50);

    println!("reward call on 64 images of 32×32, one request (median of 300 calls; contrast 50)");
    println!("  built-in jpeg-compressibility (in process)   {b:10.1} µs");
    println!(
        "  http → MLServer, zero model, uint8           {z:10.1} µs   ({:.2}× the built-in)",
        z / b
    );
    println!(
        "  http → MLServer, zero model, png             {zp:10.1} µs   ({:.2}× the built-in)",
        zp / b
    );
    println!("  http → MLServer, contrast (Python), uint8    {c:10.1} µs");
    if let Some(run) = run {
        let (epoch_s, images) = mean_epoch(&run);
        // Each image at 1/64 of a 64-image call.
        let calls = images / 64.0;
        println!(
            "  share of one epoch of {} ({epoch_s:.1} s, {images:.0} images scored, each at 1/64 of a call): uint8 {:.4}%, png {:.4}% (the built-in's {:.4}%)",
            run.strip_prefix(repo()).unwrap_or(&run).display(),
            100.0 * calls * z * 1e-6 / epoch_s,
            100.0 * calls * zp * 1e-6 / epoch_s,
            100.0 * calls * b * 1e-6 / epoch_s
        );
    }
}
