//! The pieces of Hierarchical Reward Fine-tuning (docs/ALGORITHM.md §3, §4) that are not DDPO's:
//! the start index k of each anchor group (window schedule for HRF, candidate search for HRF-D, a
//! fixed or uniform start for the DDPO ablations), the re-noised starts x_τk ~ q(x_τk | x₀), and
//! the window fraction f = N_train(k) / N_train(0) that scales the clipping.

use hrf_config::training::{ClipScale, StartIndex, TrainingSettings, WindowCluster};
use hrf_diffusion::DdimScheduler;
use tch::{Device, Kind, Tensor};

use crate::rng::KeyedRng;

/// The start indices of `cluster` from which at least one step is trainable.
pub fn usable_starts(sched: &DdimScheduler, cluster: &WindowCluster) -> Vec<usize> {
    cluster
        .steps
        .iter()
        .copied()
        .filter(|&k| !sched.trainable_steps(k).is_empty())
        .collect()
}

/// k ~ Uniform(active cluster), over the starts that leave something to train.
/// None when the cluster has no such start.
pub fn draw_start(
    sched: &DdimScheduler,
    cluster: &WindowCluster,
    rng: &mut KeyedRng,
) -> Option<usize> {
    let usable = usable_starts(sched, cluster);
    (!usable.is_empty()).then(|| usable[rng.below(usable.len() as u64) as usize])
}

/// The first trained step of a DDPO sample: 0, a fixed k, or k drawn uniformly from the starts
/// that leave something to train (the ablations of docs/ALGORITHM.md §2.1, without a schedule).
pub fn ddpo_start(sched: &DdimScheduler, start: Option<StartIndex>, rng: &mut KeyedRng) -> usize {
    match start {
        None => 0,
        Some(StartIndex::Fixed(k)) => k,
        Some(StartIndex::Uniform) => {
            let usable: Vec<usize> = (0..sched.num_steps())
                .filter(|&k| !sched.trainable_steps(k).is_empty())
                .collect();
            usable[rng.below(usable.len() as u64) as usize]
        }
    }
}

/// Checks, against the chain the scheduler makes, that every start the run can draw leaves a
/// step to train: each window cluster with epochs has such a start, and a DDPO fixed start is
/// not past the last trainable step. The error names the field.
pub fn check_starts(sched: &DdimScheduler, t: &TrainingSettings) -> Result<(), String> {
    if let Some(h) = t.hrf.as_ref().filter(|_| t.method.is_hierarchical()) {
        for (i, c) in h.window.iter().enumerate() {
            if c.epochs > 0 && usable_starts(sched, c).is_empty() {
                return Err(format!(
                    "training.hrf.window[{i}]: no start in {:?} leaves a trainable step \
                     (steps {:?} are degenerate)",
                    c.steps,
                    (0..sched.num_steps())
                        .filter(|&i| !sched.is_trainable(i))
                        .collect::<Vec<_>>()
                ));
            }
        }
    }
    if let Some(StartIndex::Fixed(k)) = t.start {
        if sched.trainable_steps(k).is_empty() {
            return Err(format!(
                "training.start.fixed: no trainable step from {k} on (of {} steps)",
                sched.num_steps()
            ));
        }
    }
    Ok(())
}

/// The expected chain steps an epoch samples and trains per sample, relative to DDPO's full
/// chain (1.0, 1.0): HRF rolls members from k and adds one anchor chain per group; HRF-D adds
/// `copies` chains from every candidate start per group. For estimates (`--dry-run`).
pub fn relative_cost(sched: &DdimScheduler, t: &TrainingSettings) -> (f64, f64) {
    let n = sched.num_steps() as f64;
    let Some(h) = t.hrf.as_ref().filter(|_| t.method.is_hierarchical()) else {
        return (1.0, 1.0);
    };
    let epochs: usize = h.window.iter().map(|c| c.epochs).sum::<usize>().max(1);
    let (mut member, mut trained) = (0.0, 0.0);
    for c in &h.window {
        let usable = usable_starts(sched, c);
        if usable.is_empty() {
            continue;
        }
        let w = c.epochs as f64 / epochs as f64 / usable.len() as f64;
        member += usable.iter().map(|&k| w * (n - k as f64) / n).sum::<f64>();
        trained += usable
            .iter()
            .map(|&k| w * trained_fraction(sched, k))
            .sum::<f64>();
    }
    let g = h.group_size as f64;
    let mut sampled = member + 1.0 / g;
    if t.method == hrf_config::training::Method::HrfD {
        let cands: f64 = (0..sched.num_steps())
            .step_by(h.stride)
            .map(|s| (n - s as f64) / n)
            .sum();
        sampled += h.copies as f64 * cands / g;
    }
    (sampled, trained)
}

/// N_train(k) / N_train(0): the share of the chain's trainable steps in the window k..N−1.
pub fn trained_fraction(sched: &DdimScheduler, k: usize) -> f64 {
    sched.trainable_steps(k).len() as f64 / sched.trainable_steps(0).len().max(1) as f64
}

/// The window fraction f that scales HRF's clips for a start k (`training.hrf.clip_scale`):
/// N_train(k)/N_train(0) (`trainable`), (N − k)/N as the authors' code counts it, every step
/// of the chain included (`chain`), or 1 (`off`).
pub fn window_fraction(sched: &DdimScheduler, k: usize, scale: ClipScale) -> f64 {
    match scale {
        ClipScale::Trainable => trained_fraction(sched, k),
        ClipScale::Chain => {
            let n = sched.num_steps();
            n.saturating_sub(k) as f64 / n.max(1) as f64
        }
        ClipScale::Off => 1.0,
    }
}

/// Clips each advantage to ±`adv_clip`·f_r, f_r being its sample's window fraction (1 for DDPO).
pub fn clip_advantages(adv: &mut [f64], scales: &[f64], adv_clip: f64) {
    for (a, f) in adv.iter_mut().zip(scales) {
        let c = adv_clip * f;
        *a = a.clamp(-c, c);
    }
}

/// Re-noises each row's anchor to its start: x = √ᾱ_τk · x₀ + √(1 − ᾱ_τk) · ε, with τ_k the
/// training timestep of DDIM step k (q(x_τk | x₀) of the forward process).
pub fn renoise(
    sched: &DdimScheduler,
    anchors: &Tensor,
    starts: &[usize],
    noise: &Tensor,
    device: Device,
) -> Tensor {
    let taus: Vec<i64> = starts.iter().map(|&k| sched.timesteps()[k]).collect();
    sched.add_noise(anchors, noise, &Tensor::from_slice(&taus).to_device(device))
}

/// Min–max normalisation over a vector (ε = 1e-8 in the denominator); a constant vector → 0.
fn min_max(v: &[f64]) -> Vec<f64> {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    v.iter().map(|x| (x - lo) / (hi - lo + 1e-8)).collect()
}

/// HRF-D's choice of k (docs/ALGORITHM.md §4). `candidates` are s₀ < … < s_M, `reward[j]` is
/// R(s_j) (the mean reward of the copies denoised from s_j) and `diversity[j]` is D(s_j). With
/// ΔR_j = R(s_{j+1}) − R(s_j) and both ΔR and D(s_1..s_M) min–max normalised,
/// score_j = ΔR̂_j − β·D̂_{j+1}; k = s_{j*} for the first maximal j.
pub fn choose_start(candidates: &[usize], reward: &[f64], diversity: &[f64], beta: f64) -> usize {
    assert!(candidates.len() >= 2 && reward.len() == candidates.len());
    assert_eq!(diversity.len(), candidates.len());
    let gains: Vec<f64> = reward.windows(2).map(|w| w[1] - w[0]).collect();
    let gains = min_max(&gains);
    let div = min_max(&diversity[1..]);
    let mut best = 0;
    let mut best_score = f64::NEG_INFINITY;
    for j in 0..gains.len() {
        let score = gains[j] - beta * div[j];
        if score > best_score {
            best_score = score;
            best = j;
        }
    }
    candidates[best]
}

/// D(s) = 1 − cos(flatten(x), flatten(anchor)) for each row of `finals` against its anchor.
pub fn cosine_distance(finals: &Tensor, anchors: &Tensor) -> Vec<f64> {
    let a = finals.flatten(1, -1).to_kind(Kind::Double);
    let b = anchors.flatten(1, -1).to_kind(Kind::Double);
    let cos = (&a * &b).sum_dim_intlist(1, false, Kind::Double)
        / (a.norm_scalaropt_dim(2, [1], false) * b.norm_scalaropt_dim(2, [1], false) + 1e-12);
    let d: Tensor = 1.0 - cos;
    Vec::<f64>::try_from(d.to_device(Device::Cpu)).expect("f64")
}

#[cfg(test)]
mod tests {
    use super::*;
    use hrf_diffusion::SchedulerConfig;

    fn sched(n: i64) -> DdimScheduler {
        DdimScheduler::new(SchedulerConfig::default(), n, 1e-4).unwrap()
    }

    /// Within an epoch, k is uniform over the active cluster; the schedule moves with the epoch.
    #[test]
    fn starts_are_uniform_over_the_active_cluster() {
        let s = sched(10);
        let settings = hrf_config::training::HrfSettings {
            group_size: 4,
            window: vec![
                WindowCluster {
                    steps: (0..5).collect(),
                    epochs: 2,
                },
                WindowCluster {
                    steps: vec![6, 8],
                    epochs: 1,
                },
            ],
            stride: 2,
            copies: 4,
            beta: 0.5,
            update: Default::default(),
            clip_scale: Default::default(),
        };
        for (epoch, want) in [
            (0u64, (0..5).collect::<Vec<_>>()),
            (1, (0..5).collect()),
            (2, vec![6, 8]),
        ] {
            let cluster = settings.cluster_at(epoch);
            let mut counts = std::collections::BTreeMap::new();
            let draws = 20_000;
            for g in 0..draws {
                let mut rng = KeyedRng::new(&[3, epoch, g]);
                *counts
                    .entry(draw_start(&s, cluster, &mut rng).unwrap())
                    .or_insert(0usize) += 1;
            }
            assert_eq!(
                counts.keys().copied().collect::<Vec<_>>(),
                want,
                "epoch {epoch}"
            );
            // Chi-square against uniform, df = m − 1 ≤ 4: 18.5 is the 0.999 quantile at df 4.
            let expect = draws as f64 / want.len() as f64;
            let chi2: f64 = counts
                .values()
                .map(|&c| (c as f64 - expect).powi(2) / expect)
                .sum();
            assert!(chi2 < 18.5, "epoch {epoch}: χ² = {chi2}, {counts:?}");
        }
    }

    /// A start with nothing left to train (the degenerate last step) is never drawn.
    #[test]
    fn starts_without_trainable_steps_are_skipped() {
        let s = sched(10);
        assert!(
            !s.is_trainable(9),
            "steps_offset 0: the last step is degenerate"
        );
        let only_last = WindowCluster {
            steps: vec![9],
            epochs: 1,
        };
        assert_eq!(draw_start(&s, &only_last, &mut KeyedRng::new(&[0])), None);
        let c = WindowCluster {
            steps: vec![8, 9],
            epochs: 1,
        };
        for g in 0..50 {
            assert_eq!(draw_start(&s, &c, &mut KeyedRng::new(&[g])), Some(8));
        }
    }

    #[test]
    fn the_ablations_start_where_they_say() {
        let s = sched(10);
        let mut rng = KeyedRng::new(&[1]);
        assert_eq!(ddpo_start(&s, None, &mut rng), 0);
        assert_eq!(ddpo_start(&s, Some(StartIndex::Fixed(6)), &mut rng), 6);
        let mut seen = [0usize; 10];
        for _ in 0..9000 {
            seen[ddpo_start(&s, Some(StartIndex::Uniform), &mut rng)] += 1;
        }
        // 0..=8 (9 is degenerate), each about 1000 times.
        assert_eq!(seen[9], 0);
        assert!(
            seen[..9].iter().all(|&c| (850..1150).contains(&c)),
            "{seen:?}"
        );
    }

    /// Both clips scale with f: a start with a quarter of the trainable steps gets a quarter of
    /// the advantage clip (the ratio clip is scaled the same way in `Ddpo::train`).
    #[test]
    fn advantage_clips_scale_with_the_window() {
        let mut adv = vec![3.0, -3.0, 0.5, -0.2, 3.0];
        clip_advantages(&mut adv, &[1.0, 1.0, 0.25, 0.25, 0.0], 2.5);
        assert_eq!(adv, vec![2.5, -2.5, 0.5, -0.2, 0.0]);
        let mut adv = vec![1.0, -1.0];
        clip_advantages(&mut adv, &[0.2, 0.2], 2.5);
        assert_eq!(adv, vec![0.5, -0.5]);
    }

    #[test]
    fn the_window_fraction_counts_trainable_steps_or_the_chain() {
        let s = sched(10);
        let f = |k, scale| window_fraction(&s, k, scale);
        // 9 trainable steps (0..=8); from k = 3: 3..=8 → 6.
        assert_eq!(f(0, ClipScale::Trainable), 1.0);
        assert!((f(3, ClipScale::Trainable) - 6.0 / 9.0).abs() < 1e-12);
        assert_eq!(f(9, ClipScale::Trainable), 0.0);
        // The authors' count, len(range(k, N)) / N, at every k; 1 without scaling.
        for k in 0..10 {
            assert_eq!(f(k, ClipScale::Chain), (10 - k) as f64 / 10.0, "k = {k}");
            assert_eq!(f(k, ClipScale::Off), 1.0);
        }
        let s40 = sched(40);
        assert_eq!(window_fraction(&s40, 20, ClipScale::Chain), 0.5);
        assert_eq!(window_fraction(&s40, 39, ClipScale::Chain), 1.0 / 40.0);
    }

    /// x_τk = √ᾱ·x₀ + √(1−ᾱ)·ε: over many independent ε, mean √ᾱ·anchor and variance 1−ᾱ.
    #[test]
    fn renoised_starts_have_the_forward_process_moments() {
        let s = sched(10);
        let anchor = Tensor::linspace(-1.0, 1.0, 64, (Kind::Float, Device::Cpu)).view([1, 1, 8, 8]);
        let n = 20_000;
        for k in [0usize, 4, 8] {
            let anchors = anchor.expand([n, 1, 8, 8], false).contiguous();
            let noise = crate::sampling::keyed_noise(
                9,
                &(0..n as u64).collect::<Vec<_>>(),
                k as u64,
                &[1, 8, 8],
                Device::Cpu,
            );
            let x = renoise(&s, &anchors, &vec![k; n as usize], &noise, Device::Cpu);
            let abar = s.alpha_cumprod(s.timesteps()[k]);
            let mean = x.mean_dim(0, false, Kind::Double);
            let var = x.var_dim(0, false, false);
            let want_mean = anchor.get(0).to_kind(Kind::Double) * abar.sqrt();
            let mean_err = (mean - want_mean).abs().max().double_value(&[]);
            let var_err = (var - (1.0 - abar)).abs().max().double_value(&[]);
            // s.e. of a mean ≈ √(1−ᾱ)/√n ≤ 0.007; of a variance ≈ (1−ᾱ)·√(2/n) ≤ 0.01; 64 pixels.
            assert!(mean_err < 0.035, "k {k}: mean off by {mean_err}");
            assert!(
                var_err < 0.05 * (1.0 - abar).max(0.01),
                "k {k}: variance off by {var_err}"
            );
        }
    }

    /// A constructed reward: R rises by 1 from s₀ to s₁, by 3 from s₁ to s₂ and by 2 from s₂ to
    /// s₃, so without diversity the biggest gain starts at s₁. A large diversity loss at s₂
    /// moves the choice to the next best gain whose end keeps diversity.
    #[test]
    fn hrf_d_picks_the_largest_reward_gain_net_of_diversity_loss() {
        let cands = [0, 2, 4, 6];
        let r = [0.0, 1.0, 4.0, 6.0];
        assert_eq!(choose_start(&cands, &r, &[0.0, 0.1, 0.1, 0.1], 0.5), 2);
        assert_eq!(choose_start(&cands, &r, &[0.0, 0.1, 0.9, 0.1], 0.0), 2);
        // D̂ = (0, 1, 0) over s₁..s₃: score = (0, 1, 0.5) − β·(0, 1, 0) → β = 0.8: (0, 0.2, 0.5).
        assert_eq!(choose_start(&cands, &r, &[0.0, 0.1, 0.9, 0.1], 0.8), 4);
        // Constant gains and diversity normalise to 0: the first candidate wins.
        assert_eq!(
            choose_start(&cands, &[0.0, 1.0, 2.0, 3.0], &[0.5; 4], 0.5),
            0
        );
    }

    #[test]
    fn cosine_distance_is_zero_for_the_anchor_and_two_for_its_negative() {
        let a = hrf_diffusion::init::keyed_normal(&[346], &[3, 1, 4, 4]);
        let d = cosine_distance(
            &Tensor::cat(&[a.shallow_clone(), -&a], 0),
            &Tensor::cat(&[&a, &a], 0),
        );
        assert!(
            d[..3].iter().all(|x| x.abs() < 1e-6) && d[3..].iter().all(|x| (x - 2.0).abs() < 1e-6),
            "{d:?}"
        );
    }
}
