//! Reward–diversity frontiers: the arithmetic of `hrf compare`'s frontier verdicts on curves of
//! evaluations, with no knowledge of run folders. A curve is a run's evaluations in epoch
//! order; the verdicts read it at a matched reward level (diversity where the reward first
//! reaches a level) and under a diversity floor (the best reward before diversity first drops
//! below a share of the base model's), and summarise seeds by their mean with a bootstrap
//! percentile interval.

use serde::Serialize;

/// Verdict 2's floor: the reward a method reaches while keeping its Vendi score at least this
/// share of the base model's.
pub const VENDI_FLOOR: f64 = 0.9;

/// Bootstrap resamples of the seeds for every interval.
pub const BOOTSTRAP_RESAMPLES: usize = 2000;

/// The bootstrap's fixed seed: the same values always give the same interval.
pub const BOOTSTRAP_SEED: u64 = 0x4852_465f_4652_4f4e;

/// Coverage of the bootstrap percentile interval.
pub const COVERAGE: f64 = 0.95;

/// The value of a piecewise-linear function of epoch at `epoch`, given its points
/// `(epoch, value)` in increasing epoch: linear between the two points bracketing it (exactly
/// the point's value on a point). `None` outside the points' range, or with no points.
pub fn value_at_epoch(points: &[(f64, f64)], epoch: f64) -> Option<f64> {
    let first = points.first()?;
    if epoch == first.0 {
        return Some(first.1);
    }
    points.windows(2).find_map(|w| {
        let ((e0, v0), (e1, v1)) = (w[0], w[1]);
        if e0 < epoch && epoch <= e1 {
            Some(v0 + (v1 - v0) * (epoch - e0) / (e1 - e0))
        } else {
            None
        }
    })
}

/// Along a curve of `(reward, y)` points in evaluation order, `y` where the reward first
/// reaches `level`: the first point when the curve starts at or above it, else linear on the
/// first segment that crosses it (from below `level` to at or above it). `None`: never reached.
pub fn value_at_reward(curve: &[(f64, f64)], level: f64) -> Option<f64> {
    let first = curve.first()?;
    if first.0 >= level {
        return Some(first.1);
    }
    curve.windows(2).find_map(|w| {
        let ((r0, y0), (r1, y1)) = (w[0], w[1]);
        if r0 < level && r1 >= level {
            Some(y0 + (y1 - y0) * (level - r0) / (r1 - r0))
        } else {
            None
        }
    })
}

/// Along a curve of `(reward, diversity ÷ base)` points in evaluation order, the highest reward
/// on its prefix that keeps the diversity at or above `floor`: every point before the first one
/// below the floor, and the exact crossing on the segment into it (linear in both). `None` when
/// the curve is empty or starts below the floor.
pub fn reward_above_floor(curve: &[(f64, f64)], floor: f64) -> Option<f64> {
    let first = curve.first()?;
    if first.1 < floor {
        return None;
    }
    let mut best = first.0;
    for w in curve.windows(2) {
        let ((r0, d0), (r1, d1)) = (w[0], w[1]);
        if d1 < floor {
            // d0 ≥ floor > d1: the crossing is on this segment.
            let t = (d0 - floor) / (d0 - d1);
            return Some(best.max(r0 + (r1 - r0) * t));
        }
        best = best.max(r1);
    }
    Some(best)
}

/// A mean over seeds with its bootstrap percentile interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
    /// Values (seeds) it summarises.
    pub n: usize,
}

impl Interval {
    /// "mean [lo, hi]" with `digits` decimals (the mean alone for one value).
    pub fn show(&self, digits: usize) -> String {
        if self.n > 1 {
            format!(
                "{:.digits$} [{:.digits$}, {:.digits$}]",
                self.mean, self.lo, self.hi
            )
        } else {
            format!("{:.digits$}", self.mean)
        }
    }
}

/// splitmix64 (Steele, Lea and Flood 2014): a small, fixed, well-mixed generator for the
/// bootstrap's draws.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (multiply-shift; the bias is below 2⁻⁵⁰ for the n seen here).
    fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
}

/// The `q` quantile of sorted values, linear between order statistics.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos - pos.floor());
    match sorted.get(i + 1) {
        Some(next) if frac > 0.0 => sorted[i] + (next - sorted[i]) * frac,
        _ => sorted[i],
    }
}

/// The mean of `values` with the `COVERAGE` percentile interval of `resamples` bootstrap
/// means (values drawn with replacement, `seed` fixing the draws). `None` for no values.
pub fn bootstrap_mean(values: &[f64], resamples: usize, seed: u64) -> Option<Interval> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let mut rng = SplitMix64(seed);
    let mut means: Vec<f64> = (0..resamples.max(1))
        .map(|_| (0..n).map(|_| values[rng.below(n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let tail = (1.0 - COVERAGE) / 2.0;
    Some(Interval {
        mean,
        lo: quantile(&means, tail).min(mean),
        hi: quantile(&means, 1.0 - tail).max(mean),
        n,
    })
}

/// `bootstrap_mean` with the fixed resamples and seed every verdict uses.
pub fn seeds_interval(values: &[f64]) -> Option<Interval> {
    bootstrap_mean(values, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn the_midpoint_epoch_is_linear_between_the_evaluations_around_it() {
        let pts = [(0.0, 1.0), (2.0, 3.0), (4.0, 7.0)];
        // Epochs 4 / 2 = 2: on an evaluation, its value.
        assert_eq!(value_at_epoch(&pts, 2.0), Some(3.0));
        // Epochs 5 / 2 = 2.5 between evaluations at 2 and 4: a quarter of the way.
        assert!(close(value_at_epoch(&pts, 3.0).unwrap(), 5.0));
        assert!(close(value_at_epoch(&pts, 2.5).unwrap(), 4.0));
        assert_eq!(value_at_epoch(&pts, 0.0), Some(1.0));
        assert_eq!(value_at_epoch(&pts, 4.0), Some(7.0));
        assert_eq!(value_at_epoch(&pts, 4.5), None, "past the last evaluation");
        assert_eq!(value_at_epoch(&[], 1.0), None);
    }

    #[test]
    fn diversity_is_read_where_the_reward_first_reaches_the_level() {
        // Reward 0 → 2 → 1 → 4, Vendi ÷ base 1 → 0.8 → 0.9 → 0.5.
        let curve = [(0.0, 1.0), (2.0, 0.8), (1.0, 0.9), (4.0, 0.5)];
        // In the middle of the first segment.
        assert!(close(value_at_reward(&curve, 1.0).unwrap(), 0.9));
        assert!(close(value_at_reward(&curve, 0.5).unwrap(), 0.95));
        // Exactly at a point: that point (the first crossing, not the later one).
        assert!(close(value_at_reward(&curve, 2.0).unwrap(), 0.8));
        // Only the last segment reaches 3: a third of the way from reward 1 to 4.
        assert!(close(
            value_at_reward(&curve, 3.0).unwrap(),
            0.9 - 0.4 * 2.0 / 3.0
        ));
        // Never reached.
        assert_eq!(value_at_reward(&curve, 4.5), None);
        // A curve that starts at or above the level: its first point.
        assert_eq!(value_at_reward(&curve, -1.0), Some(1.0));
        assert_eq!(value_at_reward(&curve, 0.0), Some(1.0));
        assert_eq!(value_at_reward(&[], 0.0), None);
    }

    #[test]
    fn the_floor_keeps_the_prefix_up_to_the_first_drop_below_it() {
        // Vendi ÷ base 1 → 0.95 → 0.85 → 0.95 (recovers later: not counted).
        let curve = [(0.0, 1.0), (1.0, 0.95), (3.0, 0.85), (9.0, 0.95)];
        // Crossing 0.9 half way from (1, 0.95) to (3, 0.85): reward 2.
        assert!(close(reward_above_floor(&curve, 0.9).unwrap(), 2.0));
        // Never below: the best reward of the whole curve.
        assert!(close(reward_above_floor(&curve, 0.8).unwrap(), 9.0));
        // A reward that falls before the drop: the best of the prefix, not its last point.
        let falling = [(0.0, 1.0), (5.0, 0.95), (1.0, 0.92), (2.0, 0.5)];
        let expect = 5.0f64.max(1.0 + (2.0 - 1.0) * (0.92 - 0.9) / (0.92 - 0.5));
        assert!(close(reward_above_floor(&falling, 0.9).unwrap(), expect));
        // Exactly at the floor is kept.
        assert_eq!(
            reward_above_floor(&[(0.0, 1.0), (2.0, 0.9)], 0.9),
            Some(2.0)
        );
        // Starting below the floor keeps nothing.
        assert_eq!(reward_above_floor(&[(0.0, 0.5), (2.0, 1.0)], 0.9), None);
        assert_eq!(reward_above_floor(&[], 0.9), None);
    }

    #[test]
    fn the_bootstrap_is_deterministic_and_brackets_the_mean() {
        let constant = seeds_interval(&[0.7, 0.7, 0.7]).unwrap();
        assert_eq!((constant.lo, constant.hi), (constant.mean, constant.mean));
        assert_eq!(constant.n, 3);
        let values = [1.0, 2.0, 3.0, 4.0, 10.0];
        let a = seeds_interval(&values).unwrap();
        assert!(close(a.mean, 4.0));
        assert!(a.lo < a.mean && a.mean < a.hi, "{a:?}");
        assert!(a.lo >= 1.0 && a.hi <= 10.0, "{a:?}");
        assert_eq!(
            seeds_interval(&values),
            Some(a),
            "same values, same interval"
        );
        // Another seed draws differently (and still brackets the mean).
        let b = bootstrap_mean(&values, BOOTSTRAP_RESAMPLES, 1).unwrap();
        assert_ne!((a.lo, a.hi), (b.lo, b.hi));
        assert!(b.lo < b.mean && b.mean < b.hi);
        assert_eq!(seeds_interval(&[]), None);
        let one = seeds_interval(&[2.5]).unwrap();
        assert_eq!(
            (one.mean, one.lo, one.hi, one.show(2).as_str()),
            (2.5, 2.5, 2.5, "2.50")
        );
        assert_eq!(a.show(1), format!("4.0 [{:.1}, {:.1}]", a.lo, a.hi));
    }

    #[test]
    fn quantiles_interpolate_between_order_statistics() {
        let s = [0.0, 1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&s, 0.0), 0.0);
        assert_eq!(quantile(&s, 1.0), 4.0);
        assert!(close(quantile(&s, 0.125), 0.5));
        let mut rng = SplitMix64(7);
        assert!((0..1000).all(|_| rng.below(3) < 3));
    }
}
