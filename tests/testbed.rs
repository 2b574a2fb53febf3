//! End-to-end tests of pretraining, sampling and evaluation on tiny CPU settings.

use std::path::Path;

mod common;
use common::{hrf, hrf_command, text, tmp};

const TINY: &str = "model: {config: testbed, device: cpu}
data: {source: fashion-mnist, limit: 64}
training:
  steps: 6
  batch_size: 8
  warmup_steps: 2
  log_every: 2
  sample_every: 3
  checkpoint_every: 2
  grid_steps: 2
output: out
export: model
";

/// A scratch folder holding the TINY pipeline, and the pipeline's path.
fn tiny_pipeline(name: &str) -> (std::path::PathBuf, String) {
    let d = tmp("hrf-e2e", name);
    let p = d.join("p.yaml");
    std::fs::write(&p, TINY).unwrap();
    let p = p.to_str().unwrap().to_string();
    (d, p)
}

fn weights(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("diffusion_pytorch_model.safetensors")).unwrap()
}

#[test]
fn pretraining_resumes_exactly_after_a_kill() {
    let (d, a) = tiny_pipeline("pretrain");
    let a = a.as_str();
    let full = hrf(&["pretrain", a, "-q"], &[]);
    assert!(full.status.success(), "{}", text(&full));
    // The second run is the same pipeline with its folders overridden on the command line.
    let b = |extra: &[&'static str]| {
        let mut args = vec!["pretrain", a, "-q", "--set", "output=out-b"];
        args.extend(["--set", "export=model-b"]);
        args.extend(extra);
        args
    };
    let killed = hrf(&b(&[]), &[("HRF_TEST_ABORT_AFTER_CHECKPOINT", "4")]);
    assert_eq!(killed.status.code(), Some(137), "{}", text(&killed));
    assert!(
        !d.join("model-b").exists(),
        "nothing exported by a killed run"
    );
    let other = hrf(&b(&["--resume", "--set", "training.steps=8"]), &[]);
    assert_eq!(other.status.code(), Some(2), "{}", text(&other));
    assert!(text(&other).contains("--resume needs"), "{}", text(&other));
    let resumed = hrf(&b(&["--resume"]), &[]);
    assert!(resumed.status.success(), "{}", text(&resumed));
    let recorded = std::fs::read_to_string(d.join("out-b/pipeline.yaml")).unwrap();
    assert!(
        recorded.starts_with(TINY) && recorded.contains("\n#   output=out-b\n#   export=model-b\n"),
        "{recorded}"
    );
    assert!(text(&resumed).contains("step 4"), "{}", text(&resumed));
    assert!(
        weights(&d.join("model")) == weights(&d.join("model-b")),
        "the resumed run's weights differ"
    );
    assert!(d.join("out/samples/step-000003.png").exists());
    assert!(
        d.join("model/classes.json").exists() && d.join("model/scheduler_config.json").exists()
    );

    // Sampling the result: deterministic per seed, different across seeds.
    let model = d.join("model");
    let grid = |seed: &str, name: &str| {
        let out = d.join(name);
        let o = hrf(
            &[
                "sample",
                "--model",
                model.to_str().unwrap(),
                "--prompt",
                "a photo of a sneaker",
                "-n",
                "4",
                "--steps",
                "3",
                "--seed",
                seed,
                "-o",
                out.to_str().unwrap(),
            ],
            &[],
        );
        assert!(o.status.success(), "{}", text(&o));
        std::fs::read(out).unwrap()
    };
    assert_eq!(grid("5", "a.png"), grid("5", "b.png"));
    assert_ne!(grid("5", "a.png"), grid("6", "c.png"));
    let bad = hrf(
        &[
            "sample",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "a photo of a cat",
        ],
        &[],
    );
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));

    // Evaluation prints the metrics and writes them as JSON.
    let json = d.join("eval.json");
    let o = hrf(
        &[
            "eval",
            "--model",
            model.to_str().unwrap(),
            "-n",
            "20",
            "--steps",
            "3",
            "--reward",
            "jpeg-compressibility",
            "--json",
            json.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for set in ["unconditional", "conditional"] {
        for key in [
            "vendi",
            "class_entropy",
            "classes_covered",
            "fid_like",
            "is_like",
        ] {
            assert!(
                report[set][key].is_number(),
                "{set}.{key} missing: {report}"
            );
        }
    }
    assert!(report["conditional"]["accuracy"].is_number());
    assert!(
        report["unconditional"]["rewards"]["jpeg-compressibility"]
            .as_f64()
            .unwrap()
            < 0.0
    );
    assert!(
        report["reference"]["fid_like_real_train_vs_test"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    std::fs::remove_dir_all(d).unwrap();
}

/// `training.max_seconds` ends training early and still exports what it has; SIGTERM (what
/// `timeout` sends) stops after the current step with that step's checkpoint and no export, and
/// `--resume` finishes the run from there.
#[test]
fn a_time_limit_exports_early_and_sigterm_leaves_a_resumable_checkpoint() {
    let (d, p) = tiny_pipeline("limits");
    let p = p.as_str();
    // A budget shorter than any step: training ends after step 1 (with Min-SNR weighting on,
    // which this test also runs once).
    let o = hrf(
        &[
            "pretrain",
            p,
            "-q",
            "--set",
            "training.max_seconds=0.001",
            "--set",
            "training.min_snr_gamma=5",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let summary: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
    assert_eq!(summary["steps"], 1, "{summary}");
    assert_eq!(summary["planned_steps"], 6);
    assert_eq!(summary["stopped_by_time_limit"], true);
    assert!(
        text(&o).contains("ended training at step 1 of 6"),
        "{}",
        text(&o)
    );
    assert!(d.join("model/diffusion_pytorch_model.safetensors").exists());
    assert!(d.join("out/checkpoints/step-000001").exists());

    let args = |resume: bool| {
        let mut a = vec![
            "pretrain",
            p,
            "-q",
            "--set",
            "output=out-t",
            "--set",
            "export=model-t",
            "--set",
            "training.steps=60",
            "--set",
            "training.checkpoint_every=1000",
        ];
        if resume {
            a.push("--resume");
        }
        a
    };
    let child = hrf_command(&args(false), &[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once it has logged a step, ask it to stop as `timeout` would.
    let metrics = d.join("out-t/metrics.jsonl");
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&metrics).is_ok_and(|m| !m.is_empty()) {
        assert!(started.elapsed().as_secs() < 120, "no step logged");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("interrupted after step") && t.contains("--resume"),
        "{t}"
    );
    assert!(
        !d.join("model-t").exists(),
        "an interrupted run exports nothing"
    );
    let checkpoints: Vec<String> = std::fs::read_dir(d.join("out-t/checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(checkpoints.len(), 1, "{checkpoints:?}");
    let step: i64 = checkpoints[0]
        .strip_prefix("step-")
        .unwrap()
        .parse()
        .unwrap();
    assert!((2..60).contains(&step), "{checkpoints:?}");
    // A line logged past the checkpoint (as by a run killed outright) is dropped on resume.
    let mut m = std::fs::read_to_string(&metrics).unwrap();
    m.push_str("{\"step\": 59, \"loss\": 0.5}\n");
    std::fs::write(&metrics, m).unwrap();
    let resumed = hrf(&args(true), &[]);
    assert!(resumed.status.success(), "{}", text(&resumed));
    assert!(
        text(&resumed).contains(&format!("(step {step})")),
        "{}",
        text(&resumed)
    );
    assert!(d
        .join("model-t/diffusion_pytorch_model.safetensors")
        .exists());
    let steps: Vec<i64> = std::fs::read_to_string(&metrics)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
    assert_eq!(steps.last(), Some(&60));
    assert!(
        steps.contains(&step),
        "the interrupted step was logged: {steps:?}"
    );

    // A diverging run stops with an error naming the step, and writes no model.
    let o = hrf(
        &[
            "pretrain",
            p,
            "-q",
            "--set",
            "training.optimizer.lr=1e30",
            "--set",
            "output=out-d",
            "--set",
            "export=model-d",
        ],
        &[],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("training diverged"), "{}", text(&o));
    assert!(!d.join("model-d").exists());
}

#[test]
fn bad_pretraining_pipelines_exit_2_naming_the_place() {
    let d = tmp("hrf-e2e", "bad");
    let f = d.join("p.yaml");
    std::fs::write(&f, TINY.replace("  steps: 6", "  steps: 6\n  stepz: 1")).unwrap();
    let o = hrf(&["pretrain", f.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("p.yaml:5:") && text(&o).contains("stepz"),
        "{}",
        text(&o)
    );
    std::fs::write(
        &f,
        TINY.replace("  steps: 6", "  steps: -1")
            .replace("batch_size: 8", "batch_size: 0"),
    )
    .unwrap();
    let o = hrf(&["pretrain", f.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("p.yaml:4:10: training.steps")
            && text(&o).contains("p.yaml:5:15: training.batch_size"),
        "{}",
        text(&o)
    );
    std::fs::write(&f, TINY).unwrap();
    let o = hrf(
        &["pretrain", f.to_str().unwrap(), "--set", "training.stepz=1"],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("stepz"), "{}", text(&o));
    assert!(
        !d.join("out").exists(),
        "nothing written for a bad pipeline"
    );
    std::fs::remove_dir_all(d).unwrap();
}

/// The shipped ONNX models, on the real test split (docs/ARCHITECTURE.md §6): both classifiers
/// ≥ 90% accurate, the aesthetic model ranks "detail" with Spearman ≥ 0.8, a blank image is not
/// its best.
#[test]
fn shipped_models_meet_their_targets() {
    let o = hrf(&["testbed"], &[]);
    assert!(
        o.status.success() && text(&o).contains("testbed: ok"),
        "{}",
        text(&o)
    );
}
