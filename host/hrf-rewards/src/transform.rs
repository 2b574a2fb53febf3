//! Turning a reward's scores before they are weighted (`transform:` of a reward entry).

use hrf_core::{Reward, RewardError, RewardInfo, Sample, Score};

/// Scores below this count as it under `log`, so a probability of 0 gives ln(1e-6) ≈ −13.8
/// instead of −∞.
pub const LOG_FLOOR: f32 = 1e-6;

/// A reward whose scores are replaced by their natural logarithm (`transform: log`). The
/// score as the inner reward gave it stays in the extras as `score`.
pub struct LogScore {
    inner: Box<dyn Reward>,
}

impl LogScore {
    pub fn new(inner: Box<dyn Reward>) -> Self {
        Self { inner }
    }
}

impl Reward for LogScore {
    fn info(&self) -> RewardInfo {
        self.inner.info()
    }

    fn take_call_stats(&mut self) -> Option<hrf_core::CallStats> {
        self.inner.take_call_stats()
    }

    fn score(&mut self, samples: &[Sample]) -> Result<Vec<Score>, RewardError> {
        let mut scores = self.inner.score(samples)?;
        for (i, s) in scores.iter_mut().enumerate() {
            if s.value < 0.0 {
                return Err(RewardError::Failed {
                    reward: self.info().label(),
                    message: format!(
                        "sample {i} scored {}; `transform: log` needs scores ≥ 0",
                        s.value
                    ),
                });
            }
            s.extras.insert("score".into(), s.value);
            // NaN stays NaN (the reward set reports or skips it); `max` would hide it.
            if !s.value.is_nan() {
                s.value = s.value.max(LOG_FLOOR).ln();
            }
        }
        Ok(scores)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_samples::samples;

    /// Scores each sample with a fixed value, in order.
    struct Fixed(Vec<f32>);

    impl Reward for Fixed {
        fn info(&self) -> RewardInfo {
            RewardInfo {
                name: "fixed".into(),
                version: "1".into(),
                higher_is_better: true,
                batch_hint: None,
            }
        }
        fn score(&mut self, samples: &[Sample]) -> Result<Vec<Score>, RewardError> {
            Ok(self.0[..samples.len()]
                .iter()
                .map(|&v| Score::new(v))
                .collect())
        }
    }

    #[test]
    fn log_of_probabilities_with_a_floor() {
        let mut r = LogScore::new(Box::new(Fixed(vec![1.0, 0.5, 0.0, f32::NAN])));
        let s = r.score(&samples(4)).unwrap();
        assert_eq!(s[0].value, 0.0);
        assert!((s[1].value - (-std::f32::consts::LN_2)).abs() < 1e-7);
        assert!((s[2].value - (-13.815511)).abs() < 1e-5, "{}", s[2].value);
        assert!(s[3].value.is_nan());
        assert_eq!(s[1].extras["score"], 0.5);
    }

    #[test]
    fn a_negative_score_is_an_error_naming_the_reward_and_sample() {
        let mut r = LogScore::new(Box::new(Fixed(vec![0.2, -0.1])));
        let e = r.score(&samples(2)).unwrap_err().to_string();
        assert!(
            e.contains("fixed") && e.contains("sample 1 scored -0.1"),
            "{e}"
        );
    }
}
