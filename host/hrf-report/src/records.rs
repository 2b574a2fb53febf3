//! The run folder's records and file names (docs/ARCHITECTURE.md §7): the lines of
//! `metrics.jsonl` that report an evaluation, the best-so-far record, `summary.json`, the paired
//! gain between two evaluations, and the one-line description of an evaluation.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::diversity::Diversity;
use crate::stats::mean_std;

/// One line per epoch and per evaluation (docs/ARCHITECTURE.md §3, step 7).
pub const METRICS_FILE: &str = "metrics.jsonl";

/// The pipeline file a run folder keeps, every default written out.
pub const RESOLVED_FILE: &str = "pipeline.resolved.yaml";

/// Written last, when a run has finished: its presence marks a finished run folder.
pub const SUMMARY_FILE: &str = "summary.json";

/// One evaluation on fixed-seed samples.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    /// Epochs trained before it (0: the base model).
    pub epoch: u64,
    pub samples: usize,
    pub reward_mean: f64,
    /// Standard error of the mean reward.
    pub reward_sem: f64,
    pub reward_components: BTreeMap<String, f64>,
    /// Mean reward of x̂₀ predicted at every DDIM step (index 0 = noisiest), on the first
    /// samples of the set.
    pub reward_trajectory: Vec<f64>,
    pub diversity: Option<Diversity>,
    /// Conditional runs: the Vendi score within each prompt's samples, averaged.
    pub per_prompt_vendi: Option<f64>,
    /// Conditional runs: fraction of samples the evaluation classifier assigns to their prompt.
    pub class_accuracy: Option<f64>,
    /// Each sample's total reward in seed order (`None`: left out by an `on_error: skip`
    /// reward). Evaluations share their seeds, so two of them compare sample by sample.
    #[serde(default)]
    pub sample_rewards: Vec<Option<f64>>,
    /// `evaluation.gold`: each gold reward's mean on the set (its score turned so that higher
    /// is better, times its weight), never trained on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub gold: BTreeMap<String, f64>,
    pub eval_s: f64,
}

/// The gain of one evaluation over another on the seeds they share, with the standard error
/// of the per-sample differences: the same noise on both sides cancels out of it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PairedGain {
    pub mean: f64,
    pub sem: f64,
    /// Samples scored in both evaluations.
    pub samples: usize,
}

impl PairedGain {
    /// `None` when fewer than two samples were scored in both.
    pub fn between(before: &EvalReport, after: &EvalReport) -> Option<Self> {
        let d: Vec<f64> = before
            .sample_rewards
            .iter()
            .zip(&after.sample_rewards)
            .filter_map(|(a, b)| Some((*b)? - (*a)?))
            .collect();
        if d.len() < 2 {
            return None;
        }
        let (mean, std) = mean_std(&d);
        Some(Self {
            mean,
            sem: std / (d.len() as f64 - 1.0).sqrt(),
            samples: d.len(),
        })
    }

    /// The gain in standard errors (infinite for an exact, non-zero gain).
    pub fn z(&self) -> f64 {
        self.mean / self.sem
    }
}

/// The best evaluation so far, by the pipeline's rule.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BestRecord {
    pub epoch: u64,
    pub reward_mean: f64,
    pub vendi: Option<f64>,
}

/// One guard's check at one evaluation (docs/GUARDS.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuardCheck {
    /// `vendi_floor`, `class_entropy_floor` or `gold_drop`.
    pub guard: String,
    /// `gold_drop`: the gold reward watched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gold: Option<String>,
    /// The evaluation's value: Vendi, class entropy, or the gold reward's drop below its best.
    pub value: f64,
    /// The floor (a diversity guard's, in the measure's units) or the largest drop allowed.
    pub limit: f64,
    pub failed: bool,
}

impl GuardCheck {
    /// One line: `vendi_floor: 7.91 < 8.00`.
    pub fn describe(&self) -> String {
        let what = match &self.gold {
            Some(g) => format!("{} ({g})", self.guard),
            None => self.guard.clone(),
        };
        let (op, ok_op) = if self.guard == "gold_drop" {
            (">", "≤")
        } else {
            ("<", "≥")
        };
        let op = if self.failed { op } else { ok_op };
        format!("{what}: {:.4} {op} {:.4}", self.value, self.limit)
    }
}

/// A `kind: "guard"` line of metrics.jsonl: the guards' checks at one evaluation and what the
/// run did. A rollback supersedes the epoch and evaluation lines after `to_epoch` that came
/// before it ([`current_lines`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuardEvent {
    /// The evaluation's epoch (epochs trained before it).
    pub epoch: u64,
    pub checks: Vec<GuardCheck>,
    /// Failing evaluations in a row, this one included.
    pub failing: usize,
    /// `ok`, `wait` (failing, within `patience`), `stop`, `rollback`, or `final` (the final
    /// evaluation: checked for best/, nothing done).
    pub action: String,
    /// `rollback`: the epoch of the checkpoint the run went back to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_epoch: Option<u64>,
    /// `rollback`: the factor on the learning rate from here on (all rollbacks so far).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_scale: Option<f64>,
}

impl GuardEvent {
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.failed)
    }

    /// One line for the terminal and `hrf compare`: `stop at epoch 6: vendi_floor: 7.9 < 8.0`.
    pub fn describe(&self) -> String {
        let failed: Vec<String> = self
            .checks
            .iter()
            .filter(|c| c.failed)
            .map(GuardCheck::describe)
            .collect();
        let mut s = format!(
            "{} at epoch {}: {}",
            self.action,
            self.epoch,
            failed.join(", ")
        );
        if let Some(to) = self.to_epoch {
            s += &format!(" → back to epoch {to}");
        }
        if let Some(f) = self.lr_scale {
            s += &format!(", lr × {f}");
        }
        s
    }
}

/// What the guards did over a run, for summary.json.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GuardSummary {
    /// The epoch training stopped at, when a guard stopped it.
    pub stopped_at: Option<u64>,
    pub rollbacks: usize,
    /// The evaluations where a guard acted (`stop` or `rollback`), in order.
    pub fired: Vec<GuardEvent>,
}

/// The lines of a metrics.jsonl (as read, in order) without those a rollback superseded: a
/// `guard` line with `to_epoch: E` drops the epoch lines of epochs ≥ E (0-based: the epoch
/// line `e` is the (e + 1)-th epoch) and the evaluations after epoch E written before it. The
/// guard lines themselves are kept.
pub fn current_lines(lines: Vec<serde_json::Value>) -> Vec<serde_json::Value> {
    let keep = current(&lines);
    lines
        .into_iter()
        .zip(keep)
        .filter_map(|(l, k)| k.then_some(l))
        .collect()
}

/// Per line of [`current_lines`]'s input: whether it is kept.
pub fn current(lines: &[serde_json::Value]) -> Vec<bool> {
    let mut keep = vec![true; lines.len()];
    for (i, l) in lines.iter().enumerate() {
        let Some(to) = l["to_epoch"].as_u64().filter(|_| l["kind"] == "guard") else {
            continue;
        };
        for (o, k) in lines[..i].iter().zip(&mut keep) {
            let superseded = match o["kind"].as_str() {
                Some("epoch") => o["epoch"].as_u64().is_some_and(|e| e >= to),
                Some("eval") | Some("final") => {
                    o["report"]["epoch"].as_u64().is_some_and(|e| e > to)
                }
                _ => false,
            };
            *k &= !superseded;
        }
    }
    keep
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub dir: PathBuf,
    pub epochs: u64,
    pub base: Option<EvalReport>,
    pub last: EvalReport,
    pub best: Option<BestRecord>,
    /// The final evaluation's gain over the base model's on the seeds both scored.
    pub gain: Option<PairedGain>,
    /// Wall seconds summed over the run's processes (a killed process's work after its last
    /// checkpoint is redone by the next, and counted once).
    pub wall_s: f64,
    /// With a `guard:` section: where it stopped the run, its rollbacks, what fired.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guard: Option<GuardSummary>,
    /// Where the run's last process ran.
    pub machine: Machine,
}

/// The machine a run ran on. A run is deterministic on one machine, but libtorch's CPU kernels
/// round differently on another CPU type or thread count (and training amplifies it), so a
/// run's numbers reproduce bit for bit on a machine like this one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// The device the model ran on (`Cpu`, `Cuda(0)`).
    pub device: String,
    /// The CPU's model name (/proc/cpuinfo), or "unknown".
    pub cpu: String,
    /// libtorch's intra-op threads (1 with workers: each worker and the main thread run at one).
    pub threads: usize,
    /// The one-thread workers the UNet's passes ran on (`model.workers`; 1: the pool).
    #[serde(default = "one")]
    pub workers: usize,
}

fn one() -> usize {
    1
}

impl Machine {
    /// The CPU's model name from /proc/cpuinfo ("unknown" where there is none).
    pub fn cpu_model() -> String {
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "unknown".into())
    }
}

/// One line about an evaluation, for the terminal.
pub fn describe_eval(what: &str, r: &EvalReport) -> String {
    let mut s = format!(
        "eval {what} ({} samples): reward {:.4} ± {:.4} (s.e.)",
        r.samples, r.reward_mean, r.reward_sem
    );
    if let Some(d) = &r.diversity {
        s += &format!(", Vendi {:.2}", d.vendi);
        match &d.classes {
            Some(c) => {
                s += &format!(
                    ", class entropy {:.3}, {} classes",
                    c.class_entropy, c.classes_covered
                )
            }
            None => s += &format!(" ({} features)", d.features),
        }
        if let Some(f) = d.fid_like {
            s += &format!(", FID-like {f:.2}");
        }
    }
    if let Some(a) = r.class_accuracy {
        s += &format!(", class accuracy {:.1}%", a * 100.0);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(sample_rewards: Vec<Option<f64>>) -> EvalReport {
        EvalReport {
            epoch: 0,
            samples: sample_rewards.len(),
            reward_mean: 0.0,
            reward_sem: 0.0,
            reward_components: BTreeMap::new(),
            reward_trajectory: vec![],
            diversity: None,
            per_prompt_vendi: None,
            class_accuracy: None,
            sample_rewards,
            gold: BTreeMap::new(),
            eval_s: 0.0,
        }
    }

    #[test]
    fn paired_gain_is_over_the_seeds_both_scored() {
        // Differences 1, 2, 3 (the skipped third seed and the unmatched fifth left out):
        // mean 2, sample std 1, s.e. 1/√3.
        let before = report(vec![Some(0.0), Some(1.0), None, Some(-1.0), Some(9.0)]);
        let after = report(vec![Some(1.0), Some(3.0), Some(5.0), Some(2.0)]);
        let g = PairedGain::between(&before, &after).unwrap();
        assert_eq!(g.samples, 3);
        assert!((g.mean - 2.0).abs() < 1e-12, "{g:?}");
        assert!((g.sem - 1.0 / 3f64.sqrt()).abs() < 1e-12, "{g:?}");
        assert!((g.z() - 2.0 * 3f64.sqrt()).abs() < 1e-9);
        // A shift common to every seed has no spread: its standard error is 0.
        let shifted = report(vec![Some(0.5), Some(1.5), None, Some(-0.5), Some(9.5)]);
        let g = PairedGain::between(&before, &shifted).unwrap();
        assert!((g.mean - 0.5).abs() < 1e-12 && g.sem < 1e-12);
        assert_eq!(PairedGain::between(&before, &report(vec![Some(1.0)])), None);
    }
}
