//! Parity with Python diffusers + torch (fixtures from tools/parity/make_fixtures.py), fp32 on CPU.
//! Tolerances: UNet output ≤ 1e-4 max abs error, DDIM step ≤ 1e-5, log-prob ≤ 1e-4.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hrf_diffusion::{DdimScheduler, DiffusersModel, PrevSample, SchedulerConfig};
use tch::{Device, Kind, Tensor};

const UNET_TOL: f64 = 1e-4;
const STEP_TOL: f64 = 1e-5;
const LOG_PROB_TOL: f64 = 1e-4;
const SIGMA_MIN: f64 = 1e-4;
const MODELS: [&str; 3] = ["testbed", "celebahq_small", "attn_everywhere"];
const SCHEDULERS: [&str; 6] = [
    "ddpm_linear_clip",
    "no_alpha_to_one",
    "scaled_linear_v_trailing",
    "cosine_sample_offset",
    "linspace",
    "unet_testbed",
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn read(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    f64::try_from((a - b).abs().max()).unwrap()
}

fn run_unet(model: &DiffusersModel, io: &HashMap<String, Tensor>) -> Tensor {
    tch::no_grad(|| {
        model
            .unet
            .forward(&io["sample"], &io["timesteps"], io.get("class_labels"))
    })
}

#[test]
fn unet_outputs_match_diffusers() {
    for name in MODELS {
        let dir = fixtures().join(format!("unet_{name}"));
        let model = DiffusersModel::load(&dir, Device::Cpu).unwrap();
        let io = read(&dir.join("io.safetensors"));
        let want = &io["output"];
        // A near-zero output would make the comparison meaningless.
        assert!(
            f64::try_from(want.std(true)).unwrap() > 0.1,
            "{name}: fixture output too small"
        );
        let t = &io["timesteps"];
        assert!(t.size()[0] > 1 && t.unique_dim(0, false, false, false).0.size()[0] == t.size()[0]);
        let err = max_abs(&run_unet(&model, &io), want);
        println!("unet_{name}: max abs error {err:.2e}");
        assert!(
            err <= UNET_TOL,
            "unet_{name}: max abs error {err:.2e} > {UNET_TOL:e}"
        );
    }
}

#[test]
fn fixtures_exercise_every_block_type_and_the_null_class() {
    let mut seen = std::collections::BTreeSet::new();
    let mut null_class = false;
    for name in MODELS {
        let dir = fixtures().join(format!("unet_{name}"));
        let cfg = hrf_diffusion::UNetConfig::from_json_file(&dir.join("config.json")).unwrap();
        seen.extend(
            cfg.down_block_types
                .iter()
                .chain(&cfg.up_block_types)
                .map(|b| b.name()),
        );
        seen.extend(cfg.mid_block_type.map(|b| b.name()));
        if let (Some(k), Some(labels)) = (
            cfg.num_class_embeds,
            read(&dir.join("io.safetensors")).get("class_labels"),
        ) {
            null_class |= Vec::<i64>::try_from(labels).unwrap().contains(&(k - 1));
        }
    }
    let all = [
        "AttnDownBlock2D",
        "AttnUpBlock2D",
        "DownBlock2D",
        "UNetMidBlock2D",
        "UpBlock2D",
    ];
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), all);
    assert!(null_class, "no fixture feeds the null class");
}

#[test]
fn legacy_attention_names_load() {
    let dir = fixtures().join("unet_celebahq_small");
    let mut model = DiffusersModel::load(&dir, Device::Cpu).unwrap();
    tch::no_grad(|| {
        for (_, mut v) in model.vs.variables() {
            let _ = v.zero_();
        }
    });
    model.load_weights(&dir.join("legacy.safetensors")).unwrap();
    let io = read(&dir.join("io.safetensors"));
    assert!(max_abs(&run_unet(&model, &io), &io["output"]) <= UNET_TOL);
}

struct DdimFixture {
    name: &'static str,
    scheduler: DdimScheduler,
    data: HashMap<String, Tensor>,
}

fn ddim_fixture(name: &'static str) -> DdimFixture {
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join(format!("ddim_{name}.json"))).unwrap(),
    )
    .unwrap();
    let cfg: SchedulerConfig = serde_json::from_value(meta["scheduler"].clone()).unwrap();
    let steps = meta["steps"].as_i64().unwrap();
    let scheduler = DdimScheduler::new(cfg, steps, SIGMA_MIN).unwrap();
    let want: Vec<i64> = serde_json::from_value(meta["timesteps"].clone()).unwrap();
    assert_eq!(scheduler.timesteps(), want.as_slice(), "{name}: timesteps");
    DdimFixture {
        name,
        scheduler,
        data: read(&fixtures().join(format!("ddim_{name}.safetensors"))),
    }
}

#[test]
#[allow(clippy::needless_range_loop)] // i indexes several recorded tensors at once
fn ddim_steps_and_log_probs_match_diffusers() {
    for name in SCHEDULERS {
        let f = ddim_fixture(name);
        let ac = &f.data["alphas_cumprod"];
        for t in [0i64, 1, 499, 999] {
            let want = ac.double_value(&[t]);
            assert!(
                (f.scheduler.alpha_cumprod(t) - want).abs() <= 1e-7,
                "{name}: alphas_cumprod[{t}]"
            );
        }
        for eta in [0, 1] {
            let get = |k: &str| &f.data[&format!("eta{eta}.{k}")];
            let mask = Vec::<i64>::try_from(get("trainable")).unwrap();
            let (mut step_err, mut lp_err) = (0f64, 0f64);
            for i in 0..f.scheduler.num_steps() {
                let row = |k: &str| get(k).get(i as i64);
                let (x, out, z, prev) = (
                    row("sample"),
                    row("model_output"),
                    row("noise"),
                    row("prev"),
                );
                let b = x.size()[0];
                let idx = Tensor::full([b], i as i64, (Kind::Int64, Device::Cpu));
                let s = f
                    .scheduler
                    .step(&out, &idx, &x, eta as f64, PrevSample::Noise(&z));
                step_err = step_err.max(max_abs(&s.prev, &prev));
                lp_err = lp_err.max(max_abs(&s.log_prob, &row("log_prob")));
                let want_std = row("std").double_value(&[]);
                assert!(
                    (s.std.double_value(&[0]) - want_std).abs() <= 1e-6,
                    "{name} step {i}: σ"
                );
                if eta == 1 {
                    assert_eq!(
                        f.scheduler.is_trainable(i),
                        mask[i] == 1,
                        "{name} step {i}: trainable"
                    );
                    if mask[i] == 1 {
                        assert!(s.log_prob.isfinite().all().int64_value(&[]) == 1);
                    }
                }
                // Scoring the recorded x_{t-1} gives the same log-prob as drawing it.
                let given = f
                    .scheduler
                    .step(&out, &idx, &x, eta as f64, PrevSample::Given(&prev));
                lp_err = lp_err.max(max_abs(&given.log_prob, &row("log_prob")));
            }
            println!("ddim_{name} eta={eta}: step {step_err:.2e}, log-prob {lp_err:.2e}");
            assert!(
                step_err <= STEP_TOL,
                "{}: eta {eta} step error {step_err:.2e}",
                f.name
            );
            assert!(
                lp_err <= LOG_PROB_TOL,
                "{}: eta {eta} log-prob error {lp_err:.2e}",
                f.name
            );
        }
    }
}

/// One batch whose samples sit at different steps of the chain (as HRF batches do).
#[test]
fn ddim_batch_mixes_steps() {
    let f = ddim_fixture("ddpm_linear_clip");
    let get = |k: &str| &f.data[&format!("eta1.{k}")];
    let (i, j) = (2i64, 7i64);
    let pick = |k: &str| {
        Tensor::cat(
            &[get(k).get(i).narrow(0, 0, 1), get(k).get(j).narrow(0, 1, 1)],
            0,
        )
    };
    let idx = Tensor::from_slice(&[i, j]);
    let s = f.scheduler.step(
        &pick("model_output"),
        &idx,
        &pick("sample"),
        1.0,
        PrevSample::Noise(&pick("noise")),
    );
    assert!(max_abs(&s.prev, &pick("prev")) <= STEP_TOL);
    let want = Tensor::stack(
        &[get("log_prob").get(i).get(0), get("log_prob").get(j).get(1)],
        0,
    );
    assert!(max_abs(&s.log_prob, &want) <= LOG_PROB_TOL);
}

#[test]
fn add_noise_matches_diffusers() {
    for name in SCHEDULERS {
        let f = ddim_fixture(name);
        let d = &f.data;
        let noisy = f.scheduler.add_noise(
            &d["add_noise.x0"],
            &d["add_noise.noise"],
            &d["add_noise.timesteps"],
        );
        assert!(
            max_abs(&noisy, &d["add_noise.noisy"]) <= STEP_TOL,
            "{name}: add_noise"
        );
    }
}

/// Chains driven by our UNet. Each UNet call on the recorded x_t is within the UNet tolerance;
/// the free-running chain (our own x_t fed back for 10 steps) may drift by the accumulated error,
/// bounded here by `CHAIN_TOL`.
#[test]
fn full_trajectory_with_the_unet_matches() {
    const CHAIN_TOL: f64 = 1e-3;
    let model = DiffusersModel::load(&fixtures().join("unet_testbed"), Device::Cpu).unwrap();
    let f = ddim_fixture("unet_testbed");
    let labels = Tensor::from_slice(&[4i64, 10]);
    for eta in [0, 1] {
        let get = |k: &str| &f.data[&format!("eta{eta}.{k}")];
        let mut x = get("sample").get(0);
        let (mut worst_out, mut worst_step) = (0f64, 0f64);
        for (i, &t) in f.scheduler.timesteps().iter().enumerate() {
            let i64_ = i as i64;
            let ts = Tensor::full([2], t, (Kind::Int64, Device::Cpu));
            let idx = Tensor::full([2], i64_, (Kind::Int64, Device::Cpu));
            let noise = get("noise").get(i64_);
            let on_recorded = tch::no_grad(|| {
                model
                    .unet
                    .forward(&get("sample").get(i64_), &ts, Some(&labels))
            });
            worst_out = worst_out.max(max_abs(&on_recorded, &get("model_output").get(i64_)));
            let out = tch::no_grad(|| model.unet.forward(&x, &ts, Some(&labels)));
            x = f
                .scheduler
                .step(&out, &idx, &x, eta as f64, PrevSample::Noise(&noise))
                .prev;
            worst_step = worst_step.max(max_abs(&x, &get("prev").get(i64_)));
        }
        println!("unet trajectory eta={eta}: worst UNet error {worst_out:.2e}, worst chain drift {worst_step:.2e}");
        assert!(
            worst_out <= UNET_TOL,
            "eta {eta}: UNet error {worst_out:.2e}"
        );
        assert!(
            worst_step <= CHAIN_TOL,
            "eta {eta}: chain drift {worst_step:.2e}"
        );
    }
}

/// The other direction: folders written by hrf, checked by Python diffusers
/// (tools/parity/check_hrf_saved.py: no missing or unexpected keys, same outputs).
#[test]
fn hrf_saved_folders_load_in_diffusers() {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("hrf-saved");
    let _ = std::fs::remove_dir_all(&out);
    for name in MODELS {
        let dir = fixtures().join(format!("unet_{name}"));
        let cfg = hrf_diffusion::UNetConfig::from_json_file(&dir.join("config.json")).unwrap();
        let model = DiffusersModel::new_seeded(&cfg, Device::Cpu, 7).unwrap();
        let target = out.join(name);
        model
            .save(&target, Some(&SchedulerConfig::default()))
            .unwrap();
        let mut io = read(&dir.join("io.safetensors"));
        let output = run_unet(&model, &io);
        io.insert("output".into(), output);
        let named: Vec<(String, Tensor)> =
            io.into_iter().map(|(k, v)| (k, v.contiguous())).collect();
        Tensor::write_safetensors(&named, target.join("io.safetensors")).unwrap();
        // Reloading in Rust gives the same outputs too.
        let back = DiffusersModel::load(&target, Device::Cpu).unwrap();
        let io = read(&target.join("io.safetensors"));
        assert_eq!(max_abs(&run_unet(&back, &io), &io["output"]), 0.0);
    }
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.deps/pyref/bin/python");
    if std::env::var("HRF_PARITY_PYTHON").as_deref() == Ok("skip") {
        eprintln!("HRF_PARITY_PYTHON=skip: Python diffusers check not run");
        return;
    }
    assert!(
        python.exists(),
        "{} missing: run tools/parity/env.sh (or set HRF_PARITY_PYTHON=skip)",
        python.display()
    );
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/parity/check_hrf_saved.py");
    let status = std::process::Command::new(&python)
        .arg(&script)
        .arg(&out)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "Python diffusers rejected a folder saved by hrf"
    );
}
