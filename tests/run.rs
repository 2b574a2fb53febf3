//! End-to-end tests of `hrf run` on tiny CPU pipelines: bad input refused with its place and
//! nothing written, exact resumption after SIGKILL at three places, Ctrl-C, dry runs.

use std::path::Path;
use std::process::Command;

mod common;
use common::{hrf, hrf_command, repo, text, tmp};

/// A conditional run with ddpo-pytorch's per-prompt tracker (min_count reached in the second
/// epoch), rewards on the worker thread, an evaluation mid-run, checkpoints every epoch.
fn tiny(dir: &Path) -> String {
    format!(
        "model: {{weights: {}, device: cpu}}
sampling: {{steps: 5, batch_size: 4, batches_per_epoch: 2, guidance: 1.0}}
training:
  method: ddpo-is
  epochs: 3
  batch_size: 3
  timestep_fraction: 0.5
  clip_range: 0.2
  optimizer: {{lr: 1.0e-4}}
advantages: {{mode: per-prompt, buffer_size: 8, min_count: 3}}
prompts: [a photo of a sneaker, a photo of a bag]
rewards:
  - {{kind: jpeg-compressibility}}
evaluation: {{every: 2, samples: 6, final_samples: 8, batch_size: 6}}
run: {{name: tiny, output: {}, seed: 5, save_every: 1, keep: 2}}
",
        repo().join("models/testbed").display(),
        dir.join("out").display()
    )
}

/// metrics.jsonl without the timing fields.
fn metrics(run: &Path) -> Vec<serde_json::Value> {
    fn strip(v: &mut serde_json::Value) {
        if let Some(m) = v.as_object_mut() {
            m.retain(|k, _| !k.ends_with("_s"));
            for x in m.values_mut() {
                strip(x);
            }
        }
    }
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            strip(&mut v);
            v
        })
        .collect()
}

fn weights(run: &Path) -> Vec<u8> {
    std::fs::read(run.join("final/diffusion_pytorch_model.safetensors")).unwrap()
}

/// The run's best/ and final/ load in `hrf sample`, `hrf eval` and Python diffusers.
fn models_load_elsewhere(run: &Path) {
    let (best, last) = (run.join("best"), run.join("final"));
    let grid = run.join("final-samples.png");
    let o = hrf(
        &[
            "sample",
            "--model",
            last.to_str().unwrap(),
            "-n",
            "2",
            "--steps",
            "3",
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
    let report = run.join("best-eval.json");
    let o = hrf(
        &[
            "eval",
            "--model",
            best.to_str().unwrap(),
            "-n",
            "10",
            "--steps",
            "3",
            "--json",
            report.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        o.status.success() && report.exists(),
        "hrf eval: {}",
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
        .arg(repo().join("tools/parity/check_run_models.py"))
        .args([&best, &last])
        .output()
        .unwrap();
    assert!(o.status.success(), "Python diffusers: {}", text(&o));
}

#[test]
fn runs_resume_exactly_after_sigkill_anywhere() {
    let d = tmp("hrf-run", "resume");
    let pipeline = d.join("tiny.yaml");
    std::fs::write(&pipeline, tiny(&d)).unwrap();
    let p = pipeline.to_str().unwrap();

    let whole = d.join("whole");
    let o = hrf(&["run", p, "-q", "--run-dir", whole.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let reference = metrics(&whole);
    // Base eval, 3 epochs, the mid-run eval after epoch 2, the final eval.
    assert_eq!(reference.len(), 6, "{reference:#?}");
    assert!(whole.join("plots/reward.png").exists() && whole.join("best").exists());
    assert!(whole.join("samples/epoch-0001.png").exists());
    assert!(reference
        .iter()
        .all(|l| l["kind"] != "epoch" || l["loss"].as_f64().unwrap().is_finite()));
    models_load_elsewhere(&whole);

    for kill in ["sampling:1", "training:1", "checkpoint:1"] {
        let run = d.join(kill.replace(':', "-"));
        let first = std::time::Instant::now();
        let o = hrf(
            &["run", p, "-q", "--run-dir", run.to_str().unwrap()],
            &[("HRF_TEST_KILL_AT", kill)],
        );
        let first = first.elapsed().as_secs_f64();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(o.status.signal(), Some(9), "{kill}: {}", text(&o));
        let checkpointed = newest_checkpoint_wall_s(&run);
        let second = std::time::Instant::now();
        let o = hrf(&["run", "-q", "--resume", run.to_str().unwrap()], &[]);
        let second = second.elapsed().as_secs_f64();
        assert!(o.status.success(), "{kill}: {}", text(&o));
        // wall_s sums the processes: the killed one's time up to its checkpoint, then this one's.
        let wall = summary_wall_s(&run);
        // The summary names the machine the numbers come from.
        let s: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap())
                .unwrap();
        let m = &s["machine"];
        assert!(
            m["device"] == "Cpu"
                && m["threads"].as_u64().is_some_and(|t| t >= 1)
                && m["workers"] == 1
                && m["cpu"].as_str().is_some_and(|c| !c.is_empty()),
            "{s}"
        );
        assert!(
            checkpointed > 0.0 && checkpointed <= first,
            "{kill}: checkpoint wall_s {checkpointed} vs first process {first} s"
        );
        assert!(
            wall > checkpointed && wall - checkpointed <= second,
            "{kill}: wall_s {wall} = {checkpointed} before + at most {second} s resumed"
        );
        assert_eq!(metrics(&run), reference, "{kill}: metrics differ");
        assert!(
            weights(&run) == weights(&whole),
            "{kill}: final weights differ"
        );
        let leftovers: Vec<_> = std::fs::read_dir(run.join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            leftovers.len(),
            2,
            "{kill}: keep 2 checkpoints: {leftovers:?}"
        );
    }
    // Resuming a finished run says so and changes nothing.
    let before: Vec<(String, Vec<u8>)> = ["summary.json", "metrics.jsonl", "plots/reward.png"]
        .iter()
        .map(|f| (f.to_string(), std::fs::read(whole.join(f)).unwrap()))
        .collect();
    let o = hrf(&["run", "--resume", whole.to_str().unwrap()], &[]);
    assert!(
        o.status.success() && text(&o).contains("nothing to resume"),
        "{}",
        text(&o)
    );
    for (f, bytes) in before {
        assert!(
            std::fs::read(whole.join(&f)).unwrap() == bytes,
            "{f} changed"
        );
    }
    assert_eq!(metrics(&whole), reference);
    std::fs::remove_dir_all(d).unwrap();
}

fn summary_wall_s(run: &Path) -> f64 {
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    s["wall_s"].as_f64().unwrap()
}

/// The wall time recorded in the newest checkpoint's state.
fn newest_checkpoint_wall_s(run: &Path) -> f64 {
    let mut names: Vec<_> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    names.sort();
    let state = names.last().expect("a checkpoint").join("state.json");
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state).unwrap()).unwrap();
    s["wall_s"].as_f64().unwrap()
}

#[test]
fn ctrl_c_checkpoints_and_exits_130() {
    let d = tmp("hrf-run", "sigint");
    let pipeline = d.join("tiny.yaml");
    std::fs::write(&pipeline, tiny(&d).replace("epochs: 3", "epochs: 40")).unwrap();
    let run = d.join("run");
    let args = [
        "run",
        pipeline.to_str().unwrap(),
        "-q",
        "--run-dir",
        run.to_str().unwrap(),
    ];
    let mut child = hrf_command(&args, &[]).spawn().unwrap();
    // Wait for the first epoch's line, then interrupt.
    let started = std::time::Instant::now();
    while metrics_lines(&run) < 2 {
        assert!(started.elapsed().as_secs() < 120, "no epoch finished");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let done = metrics_lines(&run);
    assert!(done < 42, "stopped early");
    assert!(std::fs::read_dir(run.join("checkpoints")).unwrap().count() >= 1);
    std::fs::remove_dir_all(d).unwrap();
}

fn metrics_lines(run: &Path) -> usize {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

#[test]
fn bad_pipelines_exit_2_naming_the_place_and_write_nothing() {
    let d = tmp("hrf-run", "bad");
    let good = tiny(&d);
    let cases: [(&str, String, &[&str]); 5] = [
        (
            "unknown key",
            good.replace("  batch_size: 3", "  batch_size: 3\n  bach_size: 3"),
            &["bad.yaml:7:", "bach_size"],
        ),
        (
            "wrong type",
            good.replace("epochs: 3", "epochs: three"),
            &["bad.yaml:5:"],
        ),
        (
            "missing model",
            good.replace("models/testbed", "models/nope"),
            &["bad.yaml", "model.weights"],
        ),
        (
            "negative lr",
            good.replace("lr: 1.0e-4", "lr: -1.0e-4"),
            &["bad.yaml", "training.optimizer.lr"],
        ),
        (
            "two errors",
            good.replace("lr: 1.0e-4", "lr: -1.0e-4")
                .replace("timestep_fraction: 0.5", "timestep_fraction: 2"),
            &["training.optimizer.lr", "training.timestep_fraction"],
        ),
    ];
    let f = d.join("bad.yaml");
    for (what, yaml, needles) in cases {
        std::fs::write(&f, yaml).unwrap();
        for cmd in ["run", "validate"] {
            let o = hrf(&[cmd, f.to_str().unwrap()], &[]);
            assert_eq!(o.status.code(), Some(2), "{what}: {}", text(&o));
            for n in needles {
                assert!(text(&o).contains(n), "{what}: no {n:?} in {}", text(&o));
            }
        }
        assert!(!d.join("out").exists(), "{what}: nothing is written");
    }
    std::fs::remove_dir_all(d).unwrap();
}

/// `transform: log` trains on ln(score): the same JPEG reward logged plain and logged under
/// `log` agree as mean(ln kB) ≤ ln(mean kB), within the spread of one epoch's sizes.
#[test]
fn log_transform_scores_the_logarithm() {
    let d = tmp("hrf-run", "log");
    let f = d.join("tiny.yaml");
    let rewards = "rewards:
  - {kind: jpeg-incompressibility, name: kb}
  - {kind: jpeg-incompressibility, name: log-kb, transform: log}
";
    let text_yaml = tiny(&d).replace("rewards:\n  - {kind: jpeg-compressibility}\n", rewards);
    assert!(text_yaml.contains("log-kb"));
    std::fs::write(&f, text_yaml).unwrap();
    let o = hrf(
        &[
            "run",
            f.to_str().unwrap(),
            "-q",
            "--set",
            "training.epochs=1",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let run = std::fs::read_dir(d.join("out"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let epoch = metrics(&run)
        .into_iter()
        .find(|m| m["kind"] == "epoch")
        .unwrap();
    let c = &epoch["reward_components"];
    let (kb, log_kb) = (c["kb"].as_f64().unwrap(), c["log-kb"].as_f64().unwrap());
    assert!(kb > 0.5, "{c}");
    assert!(
        log_kb <= kb.ln() + 1e-6 && log_kb > kb.ln() - 0.1,
        "mean ln kB {log_kb} vs ln mean kB {}",
        kb.ln()
    );
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn dry_run_scores_a_batch_and_writes_nothing() {
    let d = tmp("hrf-run", "dry");
    let f = d.join("tiny.yaml");
    std::fs::write(&f, tiny(&d)).unwrap();
    let o = hrf(&["run", f.to_str().unwrap(), "--dry-run"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("per epoch") && text(&o).contains("jpeg-compressibility"),
        "{}",
        text(&o)
    );
    assert!(!d.join("out").exists());
    let o = hrf(&["validate", f.to_str().unwrap()], &[]);
    assert!(
        o.status.success() && text(&o).contains("ok"),
        "{}",
        text(&o)
    );
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn shipped_pipelines_validate_and_the_schema_is_current() {
    for entry in std::fs::read_dir(repo().join("configs")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".yaml") && !name.contains("pretrain") {
            let o = hrf(&["validate", path.to_str().unwrap()], &[]);
            assert!(o.status.success(), "{name}: {}", text(&o));
        }
    }
    let o = hrf(&["schema"], &[]);
    assert!(o.status.success());
    let checked_in = std::fs::read_to_string(repo().join("configs/pipeline.schema.json")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        checked_in.trim(),
        "regenerate with `hrf schema > configs/pipeline.schema.json`"
    );
}

/// HRF and HRF-D on the tiny unconditional pipeline: starts follow the window schedule
/// ([0, 3) for two epochs, then [3, 6) where 5 is degenerate), HRF-D's candidate passes are
/// counted, and an HRF-D run killed mid-training resumes to the same metrics and weights.
/// `model.workers: 2` in a process started with two libtorch threads gives the numbers of a
/// one-thread run bit for bit (every epoch, the evaluations, the final weights), and the summary
/// says it ran on two one-thread workers.
#[test]
fn workers_give_a_one_thread_runs_numbers() {
    let d = tmp("workers", "run");
    let pipeline = d.join("p.yaml");
    std::fs::write(&pipeline, tiny(&d)).unwrap();
    let run = |name: &str, threads: &str, sets: &[&str]| {
        let dir = d.join(name);
        let mut args = vec![
            "run",
            pipeline.to_str().unwrap(),
            "-q",
            "--run-dir",
            dir.to_str().unwrap(),
        ];
        for s in sets {
            args.extend(["--set", s]);
        }
        let o = hrf(
            &args,
            &[("OMP_NUM_THREADS", threads), ("HRF_THREADS", threads)],
        );
        assert!(o.status.success(), "{name}: {}", text(&o));
        let s: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap())
                .unwrap();
        (metrics(&dir), weights(&dir), s["machine"].clone())
    };
    let (one, w_one, m_one) = run("one-thread", "1", &[]);
    let (dealt, w_dealt, m_dealt) = run("two-workers", "2", &["model.workers=2"]);
    assert_eq!(
        (&m_one["threads"], &m_one["workers"]),
        (&1.into(), &1.into())
    );
    assert_eq!(
        (&m_dealt["threads"], &m_dealt["workers"]),
        (&1.into(), &2.into())
    );
    assert_eq!(dealt.len(), one.len());
    for (a, b) in dealt.iter().zip(&one) {
        assert_eq!(a, b);
    }
    assert!(w_dealt == w_one, "the same final weights, byte for byte");
}

#[test]
fn hrf_and_hrf_d_runs_follow_their_starts_and_resume_exactly() {
    let d = tmp("hrf-run", "hrf");
    let pipeline = repo().join("tests/pipelines/tiny-compressibility.yaml");
    let p = pipeline.to_str().unwrap();
    let mut sets: Vec<String> = [
        "training.hrf.group_size=2",
        "training.hrf.copies=2",
        "evaluation.every=0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let run_with = |method: &str, dir: &Path, envs: &[(&str, &str)], sets: &[String]| {
        let mut args = vec!["run", p, "-q", "--run-dir", dir.to_str().unwrap()];
        let (m, name) = (
            format!("training.method={method}"),
            format!("run.name={method}"),
        );
        args.extend(["--set", &m, "--set", &name]);
        for s in sets {
            args.extend(["--set", s]);
        }
        hrf(&args, envs)
    };
    let starts_of = |run: &Path| -> Vec<Vec<u64>> {
        metrics(run)
            .iter()
            .filter(|l| l["kind"] == "epoch")
            .map(|l| {
                l["starts"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .map(|k| k.parse().unwrap())
                    .collect()
            })
            .collect()
    };
    let h = d.join("hrf");
    let o = run_with("hrf", &h, &[], &sets);
    assert!(o.status.success(), "{}", text(&o));
    let starts = starts_of(&h);
    assert!(
        starts[0].iter().chain(&starts[1]).all(|&k| k < 3),
        "{starts:?}"
    );
    assert!(starts[2].iter().all(|&k| k == 3 || k == 4), "{starts:?}");

    // HRF-D as the authors ran it (one optimiser step per group, f = (N − k)/N), under a
    // warm-up and a cosine, which a resumed run must follow exactly.
    sets.extend(
        [
            "training.hrf.stride=2",
            "training.preset=authors",
            "training.batch_size=2",
            "training.optimizer.schedule=cosine",
            "training.optimizer.warmup_epochs=1",
            "training.optimizer.min_lr=1e-4",
        ]
        .map(String::from),
    );
    let whole = d.join("hrf-d");
    let o = run_with("hrf-d", &whole, &[], &sets);
    assert!(o.status.success(), "{}", text(&o));
    let reference = metrics(&whole);
    let epochs: Vec<&serde_json::Value> =
        reference.iter().filter(|l| l["kind"] == "epoch").collect();
    // lr 1e-3 × 0.1 in the warm-up epoch, then the cosine from 1e-3 to 1e-4 over 2 epochs.
    let lrs: Vec<f64> = epochs.iter().map(|l| l["lr"].as_f64().unwrap()).collect();
    for (got, want) in lrs.iter().zip([1e-4, 1e-3, 5.5e-4]) {
        assert!((got - want).abs() < 1e-12, "lr per epoch {lrs:?}");
    }
    for l in &epochs {
        assert_eq!(l["optimizer_steps"], 4, "4 groups of 2, one step each: {l}");
        let share = l["grad_clipped_share"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&share), "{l}");
        // f = (6 − k)/6 for k in {0, 2, 4}: the ratio clip 1e-4·f lies in [1e-4/3, 1e-4].
        let (lo, hi) = (
            l["ratio_clip_min"].as_f64().unwrap(),
            l["ratio_clip_max"].as_f64().unwrap(),
        );
        assert!(
            lo >= 1e-4 / 3.0 - 1e-15 && hi <= 1e-4 + 1e-15 && lo <= hi,
            "{l}"
        );
    }
    for l in reference.iter().filter(|l| l["kind"] == "epoch") {
        // 8 samples + 4 anchors × 3 candidates (0, 2, 4) × 2 copies.
        assert_eq!(l["reward_calls"], 8 + 4 * 3 * 2, "{l}");
        let ks: Vec<&String> = l["starts"].as_object().unwrap().keys().collect();
        assert!(
            ks.iter().all(|k| ["0", "2", "4"].contains(&k.as_str())),
            "{l}"
        );
    }
    let killed = d.join("hrf-d-killed");
    let o = run_with(
        "hrf-d",
        &killed,
        &[("HRF_TEST_KILL_AT", "training:1")],
        &sets,
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(o.status.signal(), Some(9), "{}", text(&o));
    let o = hrf(&["run", "-q", "--resume", killed.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(metrics(&killed), reference, "metrics differ after resume");
    assert!(weights(&killed) == weights(&whole), "final weights differ");

    // The three side by side: seeds of one run.name form a row, the base model is evaluated
    // once (then reused), plain DDPO's role is played by `hrf` here.
    let out = d.join("cmp");
    let runs = [&h, &whole, &killed].map(|r| r.to_str().unwrap().to_string());
    let args = |reference: &str| {
        let mut a = vec!["compare", "-o", out.to_str().unwrap(), "--reference"];
        a.push(reference);
        a.extend(runs.iter().map(|r| r.as_str()));
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let argv = args("hrf");
    let o = hrf(&argv.iter().map(|s| s.as_str()).collect::<Vec<_>>(), &[]);
    assert!(o.status.success(), "{}", text(&o));
    let md = std::fs::read_to_string(out.join("comparison.md")).unwrap();
    assert!(md.contains("| base model |"), "{md}");
    assert!(md.contains("| hrf | hrf | 1 | 3 |"), "{md}");
    assert!(md.contains("| hrf-d | hrf-d | 2 | 3 |"), "{md}");
    assert!(
        md.contains("90/90 check of the final evaluation against `hrf`"),
        "{md}"
    );
    for f in [
        "comparison.json",
        "base-eval.json",
        "reward.png",
        "vendi.png",
        "reward-vs-diversity.png",
        "reward-by-unet-evals.png",
        "samples.png",
    ] {
        assert!(out.join(f).exists(), "{f} missing: {}", text(&o));
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("comparison.json")).unwrap())
            .unwrap();
    let hd = &json["comparison"]["groups"][1];
    assert_eq!(
        hd["reward"]["std"], 0.0,
        "resumed and whole runs agree: {hd}"
    );
    // Identical seeds' runs were read, not re-evaluated: the base evaluation is reused.
    let o = hrf(&argv.iter().map(|s| s.as_str()).collect::<Vec<_>>(), &[]);
    assert!(
        o.status.success() && text(&o).contains("reusing"),
        "{}",
        text(&o)
    );
    let argv = args("ddpo");
    let o = hrf(&argv.iter().map(|s| s.as_str()).collect::<Vec<_>>(), &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("no such group"), "{}", text(&o));
    let o = hrf(&["compare", d.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("not a run folder"), "{}", text(&o));
    std::fs::remove_dir_all(d).unwrap();
}
