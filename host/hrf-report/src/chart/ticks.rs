//! A chart's axis ticks: "nice" steps (1, 2 or 5 × 10^k) that cover or fit in a range, and
//! their labels (fixed-point or compact scientific).

/// Ticks at a "nice" step (1, 2 or 5 × 10^k) that cover `lo..=hi`: the first is ≤ `lo`, the last
/// ≥ `hi`, 4 to 7 of them. An empty or tiny range is widened around its value first.
pub fn nice_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let (lo, hi) = widened(lo, hi);
    let k0 = ((hi - lo) / 7.0).log10().floor() as i32 - 1;
    for k in k0..k0 + 5 {
        for m in [1.0, 2.0, 5.0] {
            let step = scaled(m, k);
            let (a, b) = (snap(lo / step, f64::floor), snap(hi / step, f64::ceil));
            if b - a <= 6.0 {
                return (a as i64..=b as i64)
                    .map(|i| scaled(i as f64 * m, k))
                    .collect();
            }
        }
    }
    vec![lo, hi]
}

/// Ticks at the finest "nice" step (1, 2 or 5 × 10^k) that puts at most 7 of them inside
/// `lo..=hi` (at least 2): for an axis whose ends are not ticks.
pub fn ticks_within(lo: f64, hi: f64) -> Vec<f64> {
    let (lo, hi) = widened(lo, hi);
    let k0 = ((hi - lo) / 7.0).log10().floor() as i32 - 1;
    for k in k0..k0 + 5 {
        for m in [1.0, 2.0, 5.0] {
            let step = scaled(m, k);
            let (a, b) = (snap(lo / step, f64::ceil), snap(hi / step, f64::floor));
            if b - a <= 6.0 {
                return (a as i64..=b as i64)
                    .map(|i| scaled(i as f64 * m, k))
                    .collect();
            }
        }
    }
    vec![lo, hi]
}

/// `lo..hi` ordered, made finite, and widened around its value when empty or tiny.
pub(super) fn widened(lo: f64, hi: f64) -> (f64, f64) {
    let (mut lo, mut hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
    if !lo.is_finite() || !hi.is_finite() || !(hi - lo).is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    let mag = lo.abs().max(hi.abs());
    if hi - lo <= mag * 1e-9 || hi - lo < f64::MIN_POSITIVE * 1e6 {
        let pad = if mag > 1e-300 { mag * 0.05 } else { 1.0 };
        (lo, hi) = (lo - pad, hi + pad);
    }
    (lo, hi)
}

/// Labels for ticks from `nice_ticks`: fixed-point with as many decimals as the step needs, or
/// compact scientific ("3e-4", "1.5e6", trailing zeros dropped) where that is shorter.
pub fn tick_labels(ticks: &[f64]) -> Vec<String> {
    let step = match ticks {
        [a, b, ..] => (b - a).abs(),
        [a] => a.abs().max(1.0),
        [] => return Vec::new(),
    };
    let k = (step.log10() + 1e-9).floor() as i32;
    let zero = |t: f64| t.abs() < step * 1e-6;
    let fixed: Vec<String> = ticks
        .iter()
        .map(|&t| {
            let t = if zero(t) { 0.0 } else { t };
            format!("{t:.*}", (-k).max(0) as usize)
        })
        .collect();
    let sci: Vec<String> = ticks
        .iter()
        .map(|&t| {
            if zero(t) {
                return "0".to_string();
            }
            let mut e = (t.abs().log10() + 1e-9).floor() as i32;
            let mut mant = t / 10f64.powi(e);
            if mant.abs() >= 9.999_999 {
                e += 1;
                mant /= 10.0;
            }
            let mant = format!("{mant:.*}", (e - k).max(0) as usize);
            let mant = match mant.contains('.') {
                true => mant.trim_end_matches('0').trim_end_matches('.'),
                false => &mant,
            };
            format!("{mant}e{e}")
        })
        .collect();
    let longest = |v: &[String]| v.iter().map(|s| s.len()).max().unwrap_or(0);
    if longest(&fixed) <= longest(&sci) {
        fixed
    } else {
        sci
    }
}

/// m × 10^k, exact for the small integers m that ticks use (dividing by 10^-k rounds correctly).
fn scaled(m: f64, k: i32) -> f64 {
    if k >= 0 {
        m * 10f64.powi(k)
    } else {
        m / 10f64.powi(-k)
    }
}

/// Rounds `q` to the nearest integer when float error puts it a hair away from one, else `f(q)`.
fn snap(q: f64, f: fn(f64) -> f64) -> f64 {
    if (q - q.round()).abs() < 1e-9 * q.abs().max(1.0) {
        q.round()
    } else {
        f(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_nice_and_cover_the_range() {
        let mut ranges = vec![
            (0.0, 1.0),
            (0.13, 0.87),
            (-3.2, 7.9),
            (3e-4, 3.1e-4),
            (0.0, 12000.0),
            (12000.0, 12001.0),
            (5.0, 5.0),
            (0.0, 0.0),
            (-1e-7, 2e-7),
            (1e6, 5e7),
            (-250.0, -249.0),
            (1.0, 1.0 + 1e-12),
            (0.6, 1.4),
        ];
        let mut s = 12345u64;
        let mut rnd = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        for _ in 0..2000 {
            let scale = 10f64.powf(rnd() * 16.0 - 8.0);
            let (a, b) = ((rnd() - 0.5) * scale, (rnd() - 0.5) * scale);
            ranges.push((a, b));
        }
        for (lo, hi) in ranges {
            let t = nice_ticks(lo, hi);
            assert!((4..=7).contains(&t.len()), "{lo}..{hi}: {t:?}");
            assert!(
                t[0] <= lo.min(hi) && *t.last().unwrap() >= hi.max(lo),
                "{lo}..{hi}: {t:?}"
            );
            let step = t[1] - t[0];
            let k = step.log10().floor();
            let m = step / 10f64.powf(k);
            assert!(
                [1.0, 2.0, 5.0, 10.0].iter().any(|n| (m - n).abs() < 1e-6),
                "{lo}..{hi}: step {step}"
            );
            for w in t.windows(2) {
                assert!(((w[1] - w[0]) / step - 1.0).abs() < 1e-6, "{t:?}");
            }
            for &x in &t {
                assert!(((x / step) - (x / step).round()).abs() < 1e-6, "{t:?}");
            }
            let labels = tick_labels(&t);
            assert!(
                labels.iter().all(|l| l.len() <= 12),
                "{lo}..{hi}: {labels:?}"
            );
            let mut dedup = labels.clone();
            dedup.dedup();
            assert_eq!(dedup.len(), labels.len(), "distinct labels {labels:?}");
        }
        assert_eq!(nice_ticks(0.0, 1.0), [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(tick_labels(&nice_ticks(0.0, 1.0))[1], "0.2");
        assert!(tick_labels(&nice_ticks(0.0, 12000.0)).contains(&"12000".to_string()));
        let small = tick_labels(&nice_ticks(0.0, 3e-4));
        assert!(small.contains(&"3e-4".to_string()), "{small:?}");
        let neg = tick_labels(&nice_ticks(-1.0, 1.0));
        assert!(neg.contains(&"-0.5".to_string()) && !neg.iter().any(|l| l.starts_with("-0.0")));
        assert!(tick_labels(&nice_ticks(0.0, 5e7)).contains(&"5e7".to_string()));
    }

    #[test]
    fn ticks_within_a_range_are_nice_and_inside_it() {
        let mut s = 99u64;
        let mut rnd = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut ranges = vec![(-0.06, 1.06), (2.1, 2.35), (0.0, 0.0), (5.0, 5.0)];
        for _ in 0..2000 {
            let scale = 10f64.powf(rnd() * 16.0 - 8.0);
            ranges.push(((rnd() - 0.5) * scale, (rnd() - 0.5) * scale));
        }
        for (lo, hi) in ranges {
            let t = ticks_within(lo, hi);
            let (a, b) = widened(lo, hi);
            assert!((2..=7).contains(&t.len()), "{lo}..{hi}: {t:?}");
            assert!(
                t[0] >= a - 1e-12 * a.abs() && *t.last().unwrap() <= b + 1e-12 * b.abs(),
                "{lo}..{hi}: {t:?}"
            );
            let step = t[1] - t[0];
            let m = step / 10f64.powf(step.log10().floor());
            assert!(
                [1.0, 2.0, 5.0, 10.0].iter().any(|n| (m - n).abs() < 1e-6),
                "{lo}..{hi}: step {step}"
            );
            let labels = tick_labels(&t);
            let mut dedup = labels.clone();
            dedup.dedup();
            assert_eq!(dedup.len(), labels.len(), "distinct labels {labels:?}");
        }
        assert_eq!(ticks_within(-0.06, 1.06), [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
    }
}
