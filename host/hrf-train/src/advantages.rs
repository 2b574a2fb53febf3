//! Advantages from rewards (docs/ALGORITHM.md §2.2): over the whole epoch, per prompt with
//! ddpo-pytorch's stat tracker, or within groups of samples that share an anchor (HRF); then
//! clipped. Computed in f64; the tracker's state is saved in checkpoints.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

/// (r − mean) / (std + eps) with the population std.
fn standardise(values: &[f64], mean_of: &[f64], eps: f64) -> Vec<f64> {
    let n = mean_of.len().max(1) as f64;
    let mean = mean_of.iter().sum::<f64>() / n;
    let std = (mean_of.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
    values.iter().map(|r| (r - mean) / (std + eps)).collect()
}

/// Whole-epoch standardisation, ε = 1e-8 (ddpo-pytorch without per-prompt tracking).
pub fn epoch_advantages(rewards: &[f64]) -> Vec<f64> {
    standardise(rewards, rewards, 1e-8)
}

/// Standardisation within each group (samples sharing an anchor in HRF), ε = 1e-8.
pub fn group_advantages(rewards: &[f64], groups: &[usize]) -> Vec<f64> {
    let mut out = vec![0.0; rewards.len()];
    let mut members: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, &g) in groups.iter().enumerate() {
        members.entry(g).or_default().push(i);
    }
    for idx in members.values() {
        let r: Vec<f64> = idx.iter().map(|&i| rewards[i]).collect();
        for (&i, a) in idx.iter().zip(standardise(&r, &r, 1e-8)) {
            out[i] = a;
        }
    }
    out
}

/// ddpo-pytorch's per-prompt stat tracker: each prompt keeps its last `buffer_size` rewards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerPromptTracker {
    pub buffer_size: usize,
    pub min_count: usize,
    buffers: BTreeMap<String, VecDeque<f64>>,
}

impl PerPromptTracker {
    pub fn new(buffer_size: usize, min_count: usize) -> Self {
        Self {
            buffer_size,
            min_count,
            buffers: BTreeMap::new(),
        }
    }

    /// Appends this epoch's rewards to each prompt's buffer first, then standardises each
    /// prompt's rewards by its buffer (ε = 1e-6), or by the whole epoch's rewards while the buffer
    /// holds fewer than `min_count`.
    pub fn update(&mut self, prompts: &[String], rewards: &[f64]) -> Vec<f64> {
        assert_eq!(prompts.len(), rewards.len());
        let mut out = vec![0.0; rewards.len()];
        let mut by_prompt: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, p) in prompts.iter().enumerate() {
            by_prompt.entry(p).or_default().push(i);
        }
        for (prompt, idx) in by_prompt {
            let r: Vec<f64> = idx.iter().map(|&i| rewards[i]).collect();
            let buf = self.buffers.entry(prompt.to_string()).or_default();
            for &v in &r {
                if buf.len() == self.buffer_size {
                    buf.pop_front();
                }
                buf.push_back(v);
            }
            let adv = if buf.len() < self.min_count {
                standardise(&r, rewards, 1e-6)
            } else {
                let stats: Vec<f64> = buf.iter().copied().collect();
                standardise(&r, &stats, 1e-6)
            };
            for (&i, a) in idx.iter().zip(adv) {
                out[i] = a;
            }
        }
        out
    }
}

/// Clips advantages to ±`clip`.
pub fn clip(advantages: &mut [f64], clip: f64) {
    for a in advantages {
        *a = a.clamp(-clip, clip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_advantages_are_standardised() {
        let a = epoch_advantages(&[1.0, 2.0, 3.0, 4.0]);
        let mean: f64 = a.iter().sum::<f64>() / 4.0;
        let var: f64 = a.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 4.0;
        assert!(mean.abs() < 1e-12 && (var - 1.0).abs() < 1e-6);
    }

    #[test]
    fn groups_are_standardised_separately() {
        let a = group_advantages(&[1.0, 3.0, 10.0, 30.0], &[0, 0, 1, 1]);
        assert!((a[0] + 1.0).abs() < 1e-6 && (a[1] - 1.0).abs() < 1e-6);
        assert!((a[2] + 1.0).abs() < 1e-6 && (a[3] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn buffers_keep_the_last_rewards() {
        let mut t = PerPromptTracker::new(2, 1);
        let p = vec!["a".to_string(); 3];
        t.update(&p, &[1.0, 2.0, 3.0]);
        assert_eq!(t.buffers["a"], [2.0, 3.0]);
        let mut c = [5.0, -7.0, 0.5];
        clip(&mut c, 2.5);
        assert_eq!(c, [2.5, -2.5, 0.5]);
    }
}
