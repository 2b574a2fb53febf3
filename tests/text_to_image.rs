//! `hrf run` on the bundled tiny Stable Diffusion pipeline (models/sd-tiny) with the shipped
//! configs, shortened: DDPO with LoRA and HRF on the prompts file, the built-in JPEG reward plus
//! the WASM plugin on the decoded RGB images, checkpoints, sample grids with their prompts, an
//! exact resume after SIGKILL; then the LoRA it trained in Python diffusers
//! (`load_lora_weights`, the same image from the same latents) and `hrf export --merge`'s folder
//! in `StableDiffusionPipeline.from_pretrained` (tools/parity/check_sd_lora.py).

use std::path::Path;
use std::process::Command;

mod common;
use common::{hrf, metrics_lines, of_kind, repo, text, tmp};

const PROMPTS: &str = "configs/sd-tiny-prompts.txt";

/// `hrf run configs/NAME -q --run-dir DIR` with the test's shortening overrides.
fn run_args<'a>(config: &'a str, dir: &'a str, sets: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run", config, "-q", "--run-dir", dir];
    for s in sets {
        args.extend(["--set", s]);
    }
    args
}

/// metrics.jsonl without its timing fields.
fn metrics(run: &Path) -> Vec<serde_json::Value> {
    fn strip(v: &mut serde_json::Value) {
        if let Some(m) = v.as_object_mut() {
            m.retain(|k, _| !k.ends_with("_s"));
            m.values_mut().for_each(strip);
        }
    }
    let mut lines = metrics_lines(run);
    lines.iter_mut().for_each(strip);
    lines
}

fn lora(run: &Path) -> Vec<u8> {
    std::fs::read(run.join("final/pytorch_lora_weights.safetensors")).unwrap()
}

fn prompts_file() -> Vec<String> {
    std::fs::read_to_string(repo().join(PROMPTS))
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// The run's grids and their prompts, LoRA-only folders, and rewards from both plugins.
fn check_run_folder(run: &Path) {
    let prompts = prompts_file();
    for grid in ["eval-0000", "epoch-0001", "final"] {
        assert!(
            run.join(format!("samples/{grid}.png")).exists(),
            "{grid}.png"
        );
        let side: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(run.join(format!("samples/{grid}.prompts.json"))).unwrap(),
        )
        .unwrap();
        let cells: Vec<&str> = side["prompts"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap())
            .map(|p| p.as_str().unwrap())
            .collect();
        assert!(!cells.is_empty(), "{grid}: no prompts");
        assert!(
            cells.iter().all(|c| prompts.iter().any(|p| p == c)),
            "{grid}: prompts not from {PROMPTS}: {cells:?}"
        );
    }
    // Evaluation cell i has prompt i mod P.
    let side: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("samples/final.prompts.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(side["prompts"][0][1], prompts[1]);
    for folder in ["final", "best"] {
        let names: Vec<String> = std::fs::read_dir(run.join(folder))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.contains(&"pytorch_lora_weights.safetensors".to_string())
                && names.contains(&"hrf_adapter.json".to_string())
                && !names
                    .iter()
                    .any(|n| n.starts_with("diffusion_pytorch_model")),
            "{folder}/ holds the LoRA only: {names:?}"
        );
    }
    let lines = metrics_lines(run);
    let fin = of_kind(&lines, "final")[0];
    let components = fin["report"]["reward_components"].as_object().unwrap();
    assert!(
        components.contains_key("jpeg-compressibility") && components.contains_key("jpeg-in-wasm"),
        "{components:?}"
    );
    for e in of_kind(&lines, "epoch") {
        assert!(e["loss"].as_f64().unwrap().is_finite(), "{e}");
    }
    // Diversity in the fallback pixel features, named weak; per prompt too; no class metrics.
    let d = &fin["report"]["diversity"];
    assert_eq!(d["features"], "pixels 16×16 (weak)", "{d}");
    let vendi = d["vendi"].as_f64().unwrap();
    let samples = d["samples"].as_f64().unwrap();
    assert!(vendi > 1.0 && vendi <= samples, "{d}");
    assert!(d.get("class_entropy").is_none(), "{d}");
    let per_prompt = fin["report"]["per_prompt_vendi"].as_f64().unwrap();
    assert!(per_prompt >= 1.0 && per_prompt.is_finite(), "{per_prompt}");
    assert!(fin["report"]["class_accuracy"].is_null(), "{fin}");
}

#[test]
fn ddpo_with_lora_resumes_exactly_and_loads_in_diffusers() {
    let d = tmp("hrf-t2i", "ddpo");
    let config = repo().join("configs/sd-tiny-ddpo.yaml");
    let config = config.to_str().unwrap();
    let sets = [
        "training.epochs=3",
        "sampling.batch_size=8",
        // The UNet's levels recomputed in the backward pass, and LoRA dropout with its masks
        // keyed per (sample, step): resume must stay exact with both.
        "model.gradient_checkpointing=true",
        "model.lora.dropout=0.1",
        "evaluation.every=2",
        "evaluation.samples=16",
        "evaluation.final_samples=16",
        "run.save_every=1",
    ];
    let whole = d.join("whole");
    let o = hrf(&run_args(config, whole.to_str().unwrap(), &sets), &[]);
    assert!(o.status.success(), "{}", text(&o));
    let reference = metrics(&whole);
    // Base eval, 3 epochs, the eval after epoch 2, the final eval.
    assert_eq!(reference.len(), 6, "{reference:#?}");
    check_run_folder(&whole);
    let info = std::fs::read_to_string(whole.join("final/hrf_adapter.json")).unwrap();
    assert!(info.contains("\"dropout\": 0.1"), "{info}");

    let killed = d.join("killed");
    let o = hrf(
        &run_args(config, killed.to_str().unwrap(), &sets),
        &[("HRF_TEST_KILL_AT", "training:2")],
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(o.status.signal(), Some(9), "{}", text(&o));
    let o = hrf(&["run", "-q", "--resume", killed.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        metrics(&killed),
        reference,
        "metrics differ after the resume"
    );
    assert!(
        lora(&killed) == lora(&whole),
        "the final LoRA differs after the resume"
    );

    // The trained LoRA, sampled by hrf from the seed's latents, then by diffusers from them (at
    // guidance 1.5: stronger guidance amplifies fp32 rounding on a random model, README).
    let io = d.join("io.safetensors");
    let grid = d.join("lora.png");
    let final_dir = whole.join("final");
    let prompt = "a photo of a cat";
    let o = hrf(
        &[
            "sample",
            "--model",
            final_dir.to_str().unwrap(),
            "--prompt",
            prompt,
            "-n",
            "2",
            "--steps",
            "10",
            "--eta",
            "0",
            "--guidance",
            "1.5",
            "--tensors",
            io.to_str().unwrap(),
            "-o",
            grid.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        o.status.success() && grid.exists(),
        "hrf sample: {}",
        text(&o)
    );
    let merged = d.join("merged");
    let o = hrf(
        &[
            "export",
            "--merge",
            final_dir.to_str().unwrap(),
            "-o",
            merged.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "hrf export: {}", text(&o));
    assert!(
        merged.join("model_index.json").exists() && merged.join("tokenizer/vocab.json").exists()
    );
    // A second export to the same folder is refused and leaves it as it is.
    let o = hrf(
        &[
            "export",
            "--merge",
            final_dir.to_str().unwrap(),
            "-o",
            merged.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        !o.status.success() && text(&o).contains("already exists"),
        "{}",
        text(&o)
    );
    if std::env::var("HRF_PARITY_PYTHON").as_deref() == Ok("skip") {
        eprintln!("HRF_PARITY_PYTHON=skip: Python diffusers check not run");
        return;
    }
    let python = repo().join(".deps/pyref/bin/python");
    assert!(
        python.exists(),
        "{} missing: run tools/parity/env.sh (or set HRF_PARITY_PYTHON=skip)",
        python.display()
    );
    let o = Command::new(python)
        .arg(repo().join("tools/parity/check_sd_lora.py"))
        .arg(repo().join("models/sd-tiny"))
        .args([&final_dir, &merged, &io])
        .args([prompt, "1.5", "10"])
        .output()
        .unwrap();
    eprintln!("{}", text(&o));
    assert!(o.status.success(), "Python diffusers: {}", text(&o));
    std::fs::remove_dir_all(d).unwrap();
}

/// `model.lora.dropout` through `hrf run`, HRF with micro-batched training: epoch 0 trains the
/// adapters (B leaves 0, so the masks change the output); epoch 1 (the second window: rows start
/// at re-noised anchors, k ≥ 5) has one train batch, computed before its optimiser step, in
/// micro-batches of 4 pairs that cross slots. Its steps are recomputed with the masks they were
/// sampled with, so no ratio leaves 1 ± clip_range·f and the approximate KL is float rounding.
#[test]
fn lora_dropout_keeps_the_ratio_at_one_in_a_run() {
    let d = tmp("hrf-t2i", "dropout");
    let config = repo().join("configs/sd-tiny-hrf.yaml");
    let run = d.join("run");
    let o = hrf(
        &run_args(
            config.to_str().unwrap(),
            run.to_str().unwrap(),
            &[
                "model.lora.dropout=0.2",
                "training.epochs=2",
                "sampling.batch_size=10",
                "sampling.batches_per_epoch=1",
                "training.batch_size=10",
                "training.hrf.update=shuffled",
                "training.micro_batch=4",
                "evaluation.every=0",
                "evaluation.samples=4",
                "evaluation.final_samples=4",
            ],
        ),
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let resolved = std::fs::read_to_string(run.join("pipeline.resolved.yaml")).unwrap();
    assert!(resolved.contains("dropout: 0.2"), "{resolved}");
    let lines = metrics_lines(&run);
    let epochs = of_kind(&lines, "epoch");
    assert_eq!(epochs.len(), 2);
    assert!(
        epochs[0]["grad_norm"].as_f64().unwrap() > 0.0,
        "{}",
        epochs[0]
    );
    let e = &epochs[1];
    eprintln!(
        "LoRA dropout 0.2, trained adapters, HRF's second window: clipfrac {}, approx-KL {}",
        e["clipfrac"], e["approx_kl"]
    );
    assert_eq!(e["optimizer_steps"].as_u64(), Some(1), "{e}");
    assert_eq!(e["clipfrac"].as_f64(), Some(0.0), "{e}");
    assert!(e["approx_kl"].as_f64().unwrap() < 1e-10, "{e}");
    std::fs::remove_dir_all(d).unwrap();
}

/// HRF on the tiny pipeline with its frozen weights in bfloat16: both windows' starts are
/// latent anchors of their window.
#[test]
fn hrf_with_lora_runs_on_latent_anchors() {
    let d = tmp("hrf-t2i", "hrf");
    let config = repo().join("configs/sd-tiny-hrf.yaml");
    let run = d.join("run");
    let o = hrf(
        &run_args(
            config.to_str().unwrap(),
            run.to_str().unwrap(),
            &[
                "training.epochs=2",
                "sampling.batch_size=10",
                // The frozen weights in bfloat16 (the adapters and the DDIM arithmetic fp32).
                "model.dtype=bf16",
                "evaluation.every=0",
                "evaluation.samples=16",
                "evaluation.final_samples=16",
                "run.save_every=1",
            ],
        ),
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    check_run_folder(&run);
    let resolved = std::fs::read_to_string(run.join("pipeline.resolved.yaml")).unwrap();
    assert!(resolved.contains("dtype: bf16"), "{resolved}");
    let lines = metrics_lines(&run);
    let epochs = of_kind(&lines, "epoch");
    assert_eq!(epochs.len(), 2);
    // Both windows' starts (k → anchor groups): the first epoch's in [0, 5), the second's in
    // [5, 10).
    for (e, range) in epochs.iter().zip([0..5, 5..10]) {
        let starts = e["starts"]
            .as_object()
            .expect("HRF epochs record their starts");
        assert!(!starts.is_empty(), "{e}");
        assert!(
            starts
                .keys()
                .all(|k| range.contains(&k.parse::<usize>().unwrap())),
            "starts {starts:?} outside {range:?}"
        );
    }
    std::fs::remove_dir_all(d).unwrap();
}

/// `hrf sample --dtype` casts a pipeline's frozen weights as a run's `model.dtype` does: bf16
/// samples the same image as fp32 up to bf16's rounding; fp16 on the CPU and a pixel model are
/// refused naming the flag.
#[test]
fn sample_takes_the_frozen_weights_precision() {
    let d = tmp("hrf-sd", "dtype");
    std::fs::create_dir_all(&d).unwrap();
    let pipeline = repo().join("models/sd-tiny");
    let images = |dtype: &str| {
        let out = d.join(format!("{dtype}.safetensors"));
        let o = hrf(
            &[
                "sample",
                "--model",
                pipeline.to_str().unwrap(),
                "--prompt",
                "a red car",
                "-n",
                "2",
                "--steps",
                "4",
                "--dtype",
                dtype,
                "--device",
                "cpu",
                "--tensors",
                out.to_str().unwrap(),
                "-o",
                d.join(format!("{dtype}.png")).to_str().unwrap(),
            ],
            &[],
        );
        assert!(o.status.success(), "--dtype {dtype}: {}", text(&o));
        let t = tch::Tensor::read_safetensors(&out).unwrap();
        t.into_iter().find(|(k, _)| k == "images").unwrap().1
    };
    let (fp32, bf16) = (images("fp32"), images("bf16"));
    let diff = (&fp32 - &bf16).abs();
    let (max, mean) = (
        diff.max().double_value(&[]),
        diff.mean(tch::Kind::Float).double_value(&[]),
    );
    eprintln!("bf16 against fp32: max {max}, mean {mean}");
    assert!(
        max > 0.0 && max < 0.5 && mean < 0.05,
        "bf16 against fp32: max {max}, mean {mean}"
    );
    for (model, dtype, words) in [
        (pipeline.clone(), "fp16", "CUDA only"),
        (repo().join("models/testbed"), "bf16", "samples in fp32"),
        (pipeline, "fp8", "expected fp32, bf16 or fp16"),
    ] {
        let o = hrf(
            &[
                "sample",
                "--model",
                model.to_str().unwrap(),
                "-n",
                "1",
                "--dtype",
                dtype,
                "--device",
                "cpu",
                "-o",
                d.join("refused.png").to_str().unwrap(),
            ],
            &[],
        );
        assert_eq!(o.status.code(), Some(2), "--dtype {dtype}: {}", text(&o));
        assert!(
            text(&o).contains("--dtype") && text(&o).contains(words),
            "{}",
            text(&o)
        );
    }
    assert!(!d.join("refused.png").exists());
    std::fs::remove_dir_all(d).unwrap();
}
