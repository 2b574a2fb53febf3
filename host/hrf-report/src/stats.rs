//! Summary statistics shared by the trainer's log and the reports.

/// The mean of the values that were scored (skipped samples' totals are NaN); NaN if none.
pub fn mean_of_scored(v: &[f64]) -> f64 {
    let scored: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if scored.is_empty() {
        f64::NAN
    } else {
        mean_std(&scored).0
    }
}

/// Mean and population standard deviation.
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn population_moments_and_the_mean_of_what_was_scored() {
        assert_eq!(mean_std(&[1.0, 3.0]), (2.0, 1.0));
        assert_eq!(mean_std(&[]), (0.0, 0.0));
        assert_eq!(mean_of_scored(&[1.0, f64::NAN, 3.0]), 2.0);
        assert!(mean_of_scored(&[f64::NAN]).is_nan());
    }
}
