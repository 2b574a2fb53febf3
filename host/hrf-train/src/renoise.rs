//! The re-noising diagnostic (`hrf diagnose renoise`), HRF's motivation: does the model have a
//! coarse-to-fine structure? Base samples x₀ are re-noised to τ_k with the forward process that
//! HRF uses for its trajectories of interest (docs/ALGORITHM.md §3.3, `hrf::renoise`), denoised
//! again from step k to the end, and compared with the original: mean reward change, the share
//! of samples whose evaluation-classifier class changed, and the pixel distance, per k. If
//! early starts (small k) change the class and late ones only details, the chain is coarse to
//! fine and HRF's windows mean something.
//!
//! Every draw is keyed (docs/ARCHITECTURE.md §4): the base samples as `hrf eval`'s (seed, key =
//! sample index), and for start k the re-noising ε and the steps' noise from the seed
//! mix(seed, RENOISE_TAG, k) (streams 0 and i + 1, as a trajectory), so no number depends on the
//! batch size, and the chain from k never reuses the base chain's noise.

use hrf_core::{Image, Reward, RewardError, Sample};
use hrf_diffusion::DdimScheduler;
use hrf_report::chart::{Chart, Marker, RefLine, Series, Style};
use hrf_rewards::onnx::OnnxError;
use serde::Serialize;
use tch::{Device, Tensor};

use crate::evaluation::Evaluator;
use crate::hrf::renoise;
use crate::policy::Policy;
use crate::sampling::{denoise_from, keyed_noise, sample, SampleRequest};

/// The key tag of the re-noised chains ("renoise" in ASCII).
pub const RENOISE_TAG: u64 = 0x0072_656e_6f69_7365;

/// What the pixel distance is, as the report names it.
pub const PIXEL_DISTANCE: &str =
    "RMS over pixels of the difference of the 8-bit images scaled to [0, 1], mean over samples";

/// The seed of everything drawn for start k.
pub fn start_seed(seed: u64, k: usize) -> u64 {
    crate::rng::mix(&[seed, RENOISE_TAG, k as u64])
}

/// The start indices measured: 0, every, 2·every, … below `steps`, and always the last step.
pub fn starts_every(steps: usize, every: usize) -> Vec<usize> {
    let mut ks: Vec<usize> = (0..steps).step_by(every.max(1)).collect();
    if steps > 0 && ks.last() != Some(&(steps - 1)) {
        ks.push(steps - 1);
    }
    ks
}

/// x_τk = √ᾱ_τk · x₀ + √(1 − ᾱ_τk) · ε for rows keyed by `keys`, ε keyed by
/// (start_seed(seed, k), key, stream 0).
pub fn renoised_start(
    sched: &DdimScheduler,
    x0: &Tensor,
    keys: &[u64],
    k: usize,
    seed: u64,
    device: Device,
) -> Tensor {
    let size = x0.size();
    let noise = keyed_noise(start_seed(seed, k), keys, 0, &size[1..], device);
    renoise(
        sched,
        &x0.to_device(device),
        &vec![k; keys.len()],
        &noise,
        device,
    )
}

/// Re-noises `x0` to τ_k and rolls the policy from step k to the end of the chain (η = `eta`,
/// guidance `guidance`); the steps' noise is keyed by (start_seed(seed, k), key, i + 1).
#[allow(clippy::too_many_arguments)]
pub fn rerun_from(
    policy: &dyn Policy,
    sched: &DdimScheduler,
    x0: &Tensor,
    labels: Option<&Tensor>,
    k: usize,
    (eta, guidance): (f64, f64),
    (seed, keys): (u64, &[u64]),
    device: Device,
) -> Tensor {
    let x = renoised_start(sched, x0, keys, k, seed, device);
    let req = SampleRequest {
        labels,
        keys,
        seed: start_seed(seed, k),
        eta,
        guidance,
    };
    denoise_from(policy, sched, x, k, &req, device, &mut |_, _| {})
}

/// What to measure.
pub struct RenoiseSettings {
    /// Base samples, keyed 0..n.
    pub n: usize,
    pub seed: u64,
    /// DDIM η of the base samples and of the re-runs.
    pub eta: f64,
    /// Guidance weight (1 for unconditional samples).
    pub guidance: f64,
    /// The start indices measured (`starts_every`).
    pub starts: Vec<usize>,
    /// Rows per UNet batch (changes no number).
    pub batch_size: usize,
}

/// A mean with its standard error (sample standard deviation / √n).
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct MeanSe {
    pub mean: f64,
    pub sem: f64,
}

impl MeanSe {
    /// As evaluation's reward s.e.: the population std over √(n − 1), which is the sample std
    /// over √n.
    pub fn of(v: &[f64]) -> MeanSe {
        let (mean, std) = hrf_report::stats::mean_std(v);
        MeanSe {
            mean,
            sem: std / (v.len().max(2) as f64 - 1.0).sqrt(),
        }
    }
}

/// One reward's mean on the base samples, or its mean change (re-run − original).
#[derive(Debug, Clone, Serialize)]
pub struct RewardStat {
    pub reward: String,
    #[serde(flatten)]
    pub value: MeanSe,
}

/// The measures at one start index k.
#[derive(Debug, Clone, Serialize)]
pub struct RenoiseRow {
    pub k: usize,
    /// τ_k, the training timestep of step k.
    pub timestep: i64,
    /// √ᾱ_τk: how much of x₀ the re-noised start keeps.
    pub sqrt_alpha_bar: f64,
    /// Per reward: mean of (reward of the re-run − reward of the original).
    pub reward_change: Vec<RewardStat>,
    /// Share of samples whose evaluation-classifier class differs from the original's.
    pub class_change: MeanSe,
    /// `PIXEL_DISTANCE` between the re-run and the original.
    pub pixel_distance: MeanSe,
    /// UNet evaluations of the re-runs from k.
    pub unet_evals: u64,
    pub wall_s: f64,
}

/// Everything measured.
#[derive(Debug, Clone, Serialize)]
pub struct RenoiseReport {
    /// Per reward: mean on the base samples.
    pub base_reward: Vec<RewardStat>,
    /// The base samples' evaluation-classifier classes, counted per class.
    pub base_class_histogram: Vec<usize>,
    pub rows: Vec<RenoiseRow>,
}

#[derive(Debug, thiserror::Error)]
pub enum RenoiseError {
    #[error(transparent)]
    Reward(#[from] RewardError),
    #[error(transparent)]
    Classifier(#[from] OnnxError),
}

/// Every reward's scores of `images`, in the order of `rewards`.
fn score_all(
    rewards: &mut [Box<dyn Reward>],
    images: &[Image],
) -> Result<Vec<Vec<f64>>, RewardError> {
    let samples: Vec<Sample> = images
        .iter()
        .map(|image| Sample {
            image: image.clone(),
            prompt: None,
            metadata: serde_json::Value::Null,
        })
        .collect();
    rewards
        .iter_mut()
        .map(|r| {
            let scores = r.score(&samples)?;
            hrf_core::check_scores(&r.info(), samples.len(), &scores)?;
            Ok(scores.iter().map(|s| s.value as f64).collect())
        })
        .collect()
}

/// `PIXEL_DISTANCE` of two images of the same size.
pub fn pixel_rms(a: &Image, b: &Image) -> f64 {
    let (a, b) = (a.data(), b.data());
    assert_eq!(a.len(), b.len(), "images of one size");
    let ss: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| ((x as f64 - y as f64) / 255.0).powi(2))
        .sum();
    (ss / a.len().max(1) as f64).sqrt()
}

/// The base samples (model space, one tensor per batch) and their images.
fn base_samples(
    policy: &dyn Policy,
    sched: &DdimScheduler,
    labels: Option<&[i64]>,
    s: &RenoiseSettings,
    device: Device,
) -> (Vec<(Vec<u64>, Tensor)>, Vec<Image>) {
    let keys: Vec<u64> = (0..s.n as u64).collect();
    let mut batches = Vec::new();
    let mut images = Vec::with_capacity(s.n);
    for chunk in keys.chunks(s.batch_size.max(1)) {
        let y = batch_labels(labels, chunk);
        let x = sample(
            policy,
            sched,
            &SampleRequest {
                labels: y.as_ref(),
                keys: chunk,
                seed: s.seed,
                eta: s.eta,
                guidance: s.guidance,
            },
            device,
        );
        images.extend(policy.decode(&x));
        batches.push((chunk.to_vec(), x));
    }
    (batches, images)
}

fn batch_labels(labels: Option<&[i64]>, keys: &[u64]) -> Option<Tensor> {
    labels.map(|l| Tensor::from_slice(&keys.iter().map(|&k| l[k as usize]).collect::<Vec<_>>()))
}

/// Runs the diagnostic: n base samples, then for each start k in `s.starts` the re-runs and
/// their measures against the base; `on_row` sees each row as it is done. `labels` holds one
/// condition per sample (the null class for an unconditional set), or None for an
/// unconditional model. The rewards score unprompted samples.
#[allow(clippy::too_many_arguments)]
pub fn renoise_diagnostic(
    policy: &dyn Policy,
    sched: &DdimScheduler,
    labels: Option<&[i64]>,
    s: &RenoiseSettings,
    rewards: &mut [Box<dyn Reward>],
    classifier: &mut Evaluator,
    device: Device,
    on_row: &mut dyn FnMut(&RenoiseRow),
) -> Result<RenoiseReport, RenoiseError> {
    let names: Vec<String> = rewards.iter().map(|r| r.info().name).collect();
    let (batches, base_images) = base_samples(policy, sched, labels, s, device);
    let base_scores = score_all(rewards, &base_images)?;
    let base_classes = classifier.classify(&base_images)?.predicted();
    let mut hist = vec![0usize; classifier.class_names.len().max(1)];
    for &c in &base_classes {
        if c >= hist.len() {
            hist.resize(c + 1, 0);
        }
        hist[c] += 1;
    }
    let stat = |name: &String, v: &[f64]| RewardStat {
        reward: name.clone(),
        value: MeanSe::of(v),
    };
    let mut report = RenoiseReport {
        base_reward: names
            .iter()
            .zip(&base_scores)
            .map(|(n, v)| stat(n, v))
            .collect(),
        base_class_histogram: hist,
        rows: Vec::with_capacity(s.starts.len()),
    };
    let n_steps = sched.num_steps();
    for &k in &s.starts {
        assert!(k < n_steps, "start {k} inside the chain of {n_steps} steps");
        let started = std::time::Instant::now();
        let mut images = Vec::with_capacity(s.n);
        let mut unet_evals = 0;
        for (keys, x0) in &batches {
            let y = batch_labels(labels, keys);
            let x = rerun_from(
                policy,
                sched,
                x0,
                y.as_ref(),
                k,
                (s.eta, s.guidance),
                (s.seed, keys),
                device,
            );
            let per_step = policy.step_evals(y.as_ref(), s.guidance, keys.len() as u64);
            unet_evals += per_step * (n_steps - k) as u64;
            images.extend(policy.decode(&x));
        }
        let scores = score_all(rewards, &images)?;
        let classes = classifier.classify(&images)?.predicted();
        let changed: Vec<f64> = classes
            .iter()
            .zip(&base_classes)
            .map(|(a, b)| f64::from(u8::from(a != b)))
            .collect();
        let dist: Vec<f64> = images
            .iter()
            .zip(&base_images)
            .map(|(a, b)| pixel_rms(a, b))
            .collect();
        let tau = sched.timesteps()[k];
        let row = RenoiseRow {
            k,
            timestep: tau,
            sqrt_alpha_bar: sched.alpha_cumprod(tau).sqrt(),
            reward_change: names
                .iter()
                .zip(scores.iter().zip(&base_scores))
                .map(|(n, (new, old))| {
                    let d: Vec<f64> = new.iter().zip(old).map(|(a, b)| a - b).collect();
                    stat(n, &d)
                })
                .collect(),
            class_change: MeanSe::of(&changed),
            pixel_distance: MeanSe::of(&dist),
            unet_evals,
            wall_s: started.elapsed().as_secs_f64(),
        };
        on_row(&row);
        report.rows.push(row);
    }
    Ok(report)
}

/// The three panels of renoise.png, against k: the mean reward change (± s.e., one line per
/// reward, 0 dashed), the class-change rate (± s.e., 10 % dashed), and the pixel distance with
/// √ᾱ_τk beside it.
pub fn renoise_charts(report: &RenoiseReport, n_steps: usize) -> Vec<Chart> {
    let ks: Vec<f64> = report.rows.iter().map(|r| r.k as f64).collect();
    let x_label = format!(
        "start index k of the re-run (0 = pure noise, {} = last step)",
        n_steps - 1
    );
    let line = |label: String, get: &dyn Fn(&RenoiseRow) -> MeanSe, band: bool| {
        let v: Vec<MeanSe> = report.rows.iter().map(get).collect();
        let s = Series::new(
            label,
            ks.iter().copied().zip(v.iter().map(|m| m.mean)).collect(),
        )
        .with_marker(Marker::Dot);
        if band {
            s.with_band(v.iter().map(|m| m.sem).collect())
        } else {
            s
        }
    };
    let chart = |title: &str, y_label: &str, series: Vec<Series>, refs: Vec<RefLine>| Chart {
        title: title.into(),
        x_label: x_label.clone(),
        y_label: y_label.into(),
        series,
        style: Style::Lines,
        ref_lines: refs,
        ..Chart::default()
    };
    let rewards: Vec<Series> = report
        .base_reward
        .iter()
        .enumerate()
        .map(|(j, b)| line(b.reward.clone(), &|r| r.reward_change[j].value, true))
        .collect();
    vec![
        chart(
            "Reward change after re-noising to step k",
            "mean reward change (re-run - original) ± s.e.",
            rewards,
            vec![RefLine::new("no change", 0.0)],
        ),
        chart(
            "Class changes after re-noising to step k",
            "share of samples whose evaluation-classifier class changed ± s.e.",
            vec![line("class-change rate".into(), &|r| r.class_change, true)],
            vec![RefLine::new("10%", 0.1)],
        ),
        chart(
            "Pixel distance after re-noising to step k",
            "RMS pixel distance in [0, 1]",
            vec![
                line("RMS pixel distance".into(), &|r| r.pixel_distance, true),
                line(
                    "sqrt(alpha_bar) at tau_k".into(),
                    &|r| MeanSe {
                        mean: r.sqrt_alpha_bar,
                        sem: 0.0,
                    },
                    false,
                ),
            ],
            vec![],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use hrf_diffusion::{DiffusersModel, SchedulerConfig, UNetConfig};
    use tch::Kind;

    fn sched(n: i64) -> DdimScheduler {
        DdimScheduler::new(SchedulerConfig::default(), n, 1e-4).unwrap()
    }

    /// x_τk of a constant x₀ over many keyed draws: per element, mean √ᾱ·x₀ and variance 1 − ᾱ.
    #[test]
    fn renoised_starts_have_mean_sqrt_alpha_bar_x0_and_variance_one_minus_alpha_bar() {
        let s = sched(10);
        let n = 8192i64;
        let keys: Vec<u64> = (0..n as u64).collect();
        let x0 = Tensor::full([n, 1, 4, 4], 0.6, (Kind::Float, Device::Cpu));
        for k in [2usize, 7] {
            let x = renoised_start(&s, &x0, &keys, k, 11, Device::Cpu).to_kind(Kind::Double);
            let abar = s.alpha_cumprod(s.timesteps()[k]);
            let mean = x.mean_dim(0, false, Kind::Double);
            let var = x.var_dim(0, true, false);
            let mean_err = (mean - 0.6 * abar.sqrt()).abs().max().double_value(&[]);
            let var_err = (var - (1.0 - abar)).abs().max().double_value(&[]);
            // Standard errors over n draws: of a mean √(1 − ᾱ)/√n, of a variance
            // (1 − ᾱ)·√(2/(n − 1)). 5 s.e. for each of the 16 elements: a false alarm has
            // probability about 16 · 6e-7 per check (and the keyed draws are fixed anyway).
            let mean_tol = 5.0 * (1.0 - abar).sqrt() / (n as f64).sqrt();
            let var_tol = 5.0 * (1.0 - abar) * (2.0 / (n - 1) as f64).sqrt();
            assert!(
                mean_err < mean_tol,
                "k {k}: mean off by {mean_err} > {mean_tol}"
            );
            assert!(
                var_err < var_tol,
                "k {k}: variance off by {var_err} > {var_tol}"
            );
        }
        // The same keys give the same draws whatever the batch: row 5 alone equals row 5.
        let all = renoised_start(&s, &x0.narrow(0, 0, 8), &keys[..8], 3, 11, Device::Cpu);
        let one = renoised_start(&s, &x0.narrow(0, 5, 1), &keys[5..6], 3, 11, Device::Cpu);
        assert!(all.get(5).equal(&one.get(0)));
    }

    /// From the last step the re-run stays close to the sample; from k = 0 it forgets it: two
    /// opposite samples re-run with the same keys end (almost) alike.
    #[test]
    fn the_last_start_keeps_the_sample_and_the_first_forgets_it() {
        let s = sched(10);
        let model = DiffusersModel::new_seeded(&UNetConfig::testbed(), Device::Cpu, 5).unwrap();
        let keys = [0u64, 1];
        let labels = Tensor::from_slice(&[10i64, 10]);
        let x0 = hrf_diffusion::init::keyed_normal(&[77], &[2, 1, 32, 32]).clamp(-1.0, 1.0);
        let rms =
            |a: &Tensor, b: &Tensor| (a - b).square().mean(Kind::Double).sqrt().double_value(&[]);
        let last = s.num_steps() - 1;
        let abar = s.alpha_cumprod(s.timesteps()[last]);
        let start = renoised_start(&s, &x0, &keys, last, 3, Device::Cpu);
        assert!(rms(&start, &x0) < 2.0 * (1.0 - abar).sqrt() + 1e-6);
        let again = rerun_from(
            &model.unet,
            &s,
            &x0,
            Some(&labels),
            last,
            (1.0, 1.0),
            (3, &keys),
            Device::Cpu,
        );
        assert!(
            rms(&again, &x0) < 0.05,
            "last start moved the sample by {}",
            rms(&again, &x0)
        );

        // k = 0: x_τ0 keeps √ᾱ_τ0 ≈ 0.02 of x₀, so +x₀ and −x₀ start 2√ᾱ·|x₀| apart at most.
        let abar0 = s.alpha_cumprod(s.timesteps()[0]);
        assert!(abar0.sqrt() < 0.05, "√ᾱ_τ0 = {}", abar0.sqrt());
        let neg = -&x0;
        let (a, b) = (
            renoised_start(&s, &x0, &keys, 0, 3, Device::Cpu),
            renoised_start(&s, &neg, &keys, 0, 3, Device::Cpu),
        );
        let gap = (&a - &b).abs().max().double_value(&[]);
        assert!(gap <= 2.0 * abar0.sqrt() + 1e-5, "{gap}");
        let run = |x: &Tensor, keys: &[u64]| {
            rerun_from(
                &model.unet,
                &s,
                x,
                Some(&labels),
                0,
                (1.0, 1.0),
                (3, keys),
                Device::Cpu,
            )
        };
        let (fa, fb) = (run(&x0, &keys), run(&neg, &keys));
        let other = run(&x0, &[2, 3]);
        let same_keys = rms(&fa, &fb);
        let other_keys = rms(&fa, &other);
        assert!(
            same_keys < 0.1 * other_keys,
            "from k = 0 the result depends on x₀ ({same_keys}) almost as much as on the noise ({other_keys})"
        );
    }

    #[test]
    fn starts_include_the_last_step_and_stats_have_standard_errors() {
        assert_eq!(starts_every(10, 4), vec![0, 4, 8, 9]);
        assert_eq!(starts_every(10, 3), vec![0, 3, 6, 9]);
        assert_eq!(starts_every(3, 1), vec![0, 1, 2]);
        let m = MeanSe::of(&[1.0, 0.0, 1.0, 0.0]);
        assert_eq!(m.mean, 0.5);
        // Sample variance 1/3, over n = 4.
        assert!((m.sem - (1.0f64 / 12.0).sqrt()).abs() < 1e-12);
        let a = Image::from_chw_unit(2, 1, hrf_core::Channels::L8, &[-1.0, 1.0]).unwrap();
        let b = Image::from_chw_unit(2, 1, hrf_core::Channels::L8, &[-1.0, -1.0]).unwrap();
        assert!((pixel_rms(&a, &b) - 0.5f64.sqrt()).abs() < 1e-12);
        assert_eq!(pixel_rms(&a, &a), 0.0);
    }
}
