//! `hrf eval`: fixed-seed samples of a model, judged by the independent evaluation classifier:
//! Vendi, class entropy and coverage, FID-like distance to the real test split, IS-like score,
//! class accuracy of conditional samples, and the mean of any named rewards.

use std::path::PathBuf;
use std::process::ExitCode;

use hrf_core::Sample;
use hrf_diffusion::device;
use hrf_report::diversity;
use hrf_train::evaluation::{generate, Evaluator, Generation};
use serde_json::json;

use super::sample::scheduler_for;
use crate::usage::UsageError;

#[derive(clap::Args)]
pub struct EvalArgs {
    /// A diffusers UNet2DModel folder (a run's best/ or final/, or models/testbed).
    #[arg(long)]
    pub model: PathBuf,
    /// Samples per set (unconditional; and conditional, spread evenly over the classes).
    #[arg(short, default_value_t = 1000)]
    pub n: usize,
    #[arg(long, default_value_t = 40)]
    pub steps: i64,
    /// DDIM η in [0, 1]: 1 (ancestral-like, as DDPO samples) suits the small testbed model
    /// better than the deterministic 0.
    #[arg(long, default_value_t = super::sample::DEFAULT_ETA)]
    pub eta: f64,
    /// Guidance weight of the conditional set: 1.25 gives the base model (models/testbed) its
    /// best FID-like (measured from 1 to 1.75 in steps of 0.25); testbed-stage1 and testbed-wide
    /// are best at 1.5.
    #[arg(long, default_value_t = super::sample::DEFAULT_GUIDANCE)]
    pub guidance: f64,
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
    /// A built-in reward to average (repeatable): jpeg-compressibility, jpeg-incompressibility,
    /// aesthetic, prompt-alignment.
    #[arg(long = "reward")]
    pub rewards: Vec<String>,
    /// Only the unconditional set (e.g. for models fine-tuned unconditionally).
    #[arg(long)]
    pub unconditional_only: bool,
    /// Write the JSON report here instead of printing it.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// auto, cpu, cuda or cuda:N
    #[arg(long, default_value = "auto")]
    pub device: String,
}

fn mean(v: &[f32]) -> f64 {
    v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64
}

pub fn run(a: EvalArgs) -> anyhow::Result<ExitCode> {
    let dev = device::parse_device(&a.device).map_err(|e| UsageError(format!("--{e}")))?;
    if !(2..=60_000).contains(&a.n) {
        return Err(UsageError(format!(
            "-n {}: between 2 and 60000 samples (the real train images of the FID-like yardstick)",
            a.n
        ))
        .into());
    }
    super::sample::check_sampling_args(a.n, a.eta, a.guidance)?;
    let models = super::testbed::models_dir();
    let model = super::sample::load_model_arg(&a.model, dev)?;
    let sched = scheduler_for(&model, a.steps)?;
    let k = model.unet.config().num_class_embeds;
    let classes = super::testbed::class_names(&a.model, k)?;
    let size = model.unet.config().sample_size.unwrap_or(32) as u32;

    let test = hrf_data::fashion_mnist(None, hrf_data::Split::Test)?.fit_to(size, 0);
    let started = std::time::Instant::now();
    let mut ev = Evaluator::new(&models.join(hrf_rewards::builtin::EVAL_CLASSIFIER), &test)?;
    // The yardstick for FID-like: real train images against the real test split, as many as
    // the samples (a Fréchet distance from n points is biased upwards as n shrinks, so only a
    // set of the same size is a fair reference), and 10k for information.
    let train = hrf_data::fashion_mnist(None, hrf_data::Split::Train)?;
    let train = train
        .select(&(0..10_000.max(a.n)).collect::<Vec<_>>())
        .fit_to(size, 0);
    let train_images: Vec<_> = (0..train.len()).map(|i| train.image(i)).collect();
    let train_features = ev.classify(&train_images)?.features;
    let fid_ref = diversity::frechet_distance(&train_features[..a.n], &ev.reference_features);
    let fid_ref_10k =
        diversity::frechet_distance(&train_features[..10_000], &ev.reference_features);

    let mut report = json!({
        "model": a.model.display().to_string(), "samples": a.n, "steps": a.steps, "eta": a.eta,
        "seed": a.seed, "eval_classifier": hrf_rewards::builtin::EVAL_CLASSIFIER,
        "reference": {"fid_like_real_train_vs_test": fid_ref, "real_train_images": a.n,
            "fid_like_real_train_10k_vs_test": fid_ref_10k},
    });
    let mut rewards: Vec<_> = a
        .rewards
        .iter()
        .map(|r| hrf_rewards::builtin::builtin(r, &models, &classes).map_err(UsageError))
        .collect::<Result<_, _>>()?;

    let mut run_set = |name: &str,
                       labels: Option<Vec<i64>>,
                       guidance: f64|
     -> anyhow::Result<serde_json::Value> {
        let images = generate(
            &model.unet,
            &sched,
            &Generation {
                labels: labels.as_deref(),
                n: a.n,
                seed: a.seed,
                eta: a.eta,
                guidance,
                batch_size: 100,
            },
            dev,
        );
        let (div, classified) = ev.diversity(&images)?;
        let mut v = serde_json::to_value(&div)?;
        let fid = div.fid_like.unwrap_or(f64::NAN);
        v["fid_like_ratio"] = json!(fid / fid_ref);
        v["class_entropy_ratio"] =
            json!(div.class_entropy().unwrap_or(f64::NAN) / (ev.class_names.len() as f64).ln());
        v["guidance"] = json!(guidance);
        let prompts: Vec<Option<String>> = match &labels {
            Some(l) if name == "conditional" => l
                .iter()
                .map(|&c| Some(hrf_data::prompt_for(&classes[c as usize])))
                .collect(),
            _ => vec![None; images.len()],
        };
        if let (Some(l), "conditional") = (&labels, name) {
            let pred = classified.predicted();
            let acc = pred
                .iter()
                .zip(l)
                .filter(|(p, y)| **p as i64 == **y)
                .count() as f64
                / l.len() as f64;
            v["accuracy"] = json!(acc);
            let per_class: Vec<f64> = (0..classes.len() as i64)
                .map(|c| {
                    let f: Vec<Vec<f32>> = l
                        .iter()
                        .zip(&classified.features)
                        .filter(|(y, _)| **y == c)
                        .map(|(_, f)| f.clone())
                        .collect();
                    diversity::vendi_score(&f)
                })
                .collect();
            v["per_prompt_vendi"] = json!(per_class.iter().sum::<f64>() / per_class.len() as f64);
        }
        let samples: Vec<Sample> = images
            .into_iter()
            .zip(prompts)
            .map(|(image, prompt)| Sample {
                image,
                prompt,
                metadata: serde_json::Value::Null,
            })
            .collect();
        for r in rewards.iter_mut() {
            if r.info().name == "prompt-alignment" && name != "conditional" {
                continue;
            }
            let scores: Vec<f32> = r.score(&samples)?.into_iter().map(|s| s.value).collect();
            v["rewards"][r.info().name] = json!(mean(&scores));
        }
        Ok(v)
    };

    match k {
        Some(k) => {
            let uncond = vec![k - 1; a.n];
            report["unconditional"] = run_set("unconditional", Some(uncond), 1.0)?;
            if !a.unconditional_only {
                let per = classes.len() as i64;
                let cond: Vec<i64> = (0..a.n as i64).map(|i| i % per).collect();
                report["conditional"] = run_set("conditional", Some(cond), a.guidance)?;
            }
        }
        None => report["unconditional"] = run_set("unconditional", None, 1.0)?,
    }
    report["wall_s"] = json!(started.elapsed().as_secs_f64());

    println!(
        "model {}  ({} samples per set, {} DDIM steps, η = {}, seed {})",
        a.model.display(),
        a.n,
        a.steps,
        a.eta,
        a.seed
    );
    println!(
        "FID-like(real train {}, real test) = {fid_ref:.3} (the ratio's yardstick; with 10k train images {fid_ref_10k:.3})",
        a.n
    );
    println!(
        "{:<14} {:>8} {:>9} {:>8} {:>9} {:>9} {:>8} {:>9}",
        "set", "Vendi", "H(class)", "H/ln10", "classes", "FID-like", "ratio", "accuracy"
    );
    for set in ["unconditional", "conditional"] {
        let v = &report[set];
        if v.is_null() {
            continue;
        }
        let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "{set:<14} {:>8.3} {:>9.3} {:>8.3} {:>9} {:>9.3} {:>8.3} {:>9}",
            f("vendi"),
            f("class_entropy"),
            f("class_entropy_ratio"),
            v["classes_covered"].as_u64().unwrap_or(0),
            f("fid_like"),
            f("fid_like_ratio"),
            v.get("accuracy")
                .and_then(|x| x.as_f64())
                .map_or("-".into(), |x| format!("{:.1}%", x * 100.0)),
        );
        if let Some(r) = v.get("rewards").and_then(|r| r.as_object()) {
            for (name, m) in r {
                println!("{:<14} mean {name} = {m}", "");
            }
        }
    }
    let json_text = serde_json::to_string_pretty(&report)?;
    match &a.json {
        Some(path) => std::fs::write(path, json_text + "\n")?,
        None => println!("{json_text}"),
    }
    Ok(ExitCode::SUCCESS)
}
