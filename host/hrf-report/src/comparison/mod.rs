//! `hrf compare`'s comparison of finished runs side by side. Runs are grouped by their
//! `run.name` (the seeds of one configuration), and each group's final evaluation is summarised
//! as mean ± standard deviation over its runs, against the base model evaluated the same way: a
//! Markdown table, a JSON file, plots (reward and Vendi against epoch and against UNet
//! evaluations, a reward–diversity scatter with the base marked). This module reads the runs
//! back from their folders and says which runs compare alike; `summary` groups them, `markdown`
//! writes the table and `charts` the plots. Beyond the final numbers: each method's
//! reward–diversity frontier over its evaluations during training, read at a matched reward
//! and under a diversity floor (`frontier_verdicts`, with its table in `frontier_markdown` and
//! its plots in `frontier_charts`), and each group's trust-region telemetry from the epoch
//! records (`telemetry`).

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::records::{current, EvalReport, GuardEvent, METRICS_FILE, RESOLVED_FILE};

mod charts;
mod frontier_charts;
mod frontier_markdown;
mod frontier_verdicts;
mod markdown;
mod summary;
mod telemetry;

pub use charts::{charts, write_plots};
pub use frontier_charts::frontier_charts;
pub use frontier_markdown::frontier_markdown;
pub use frontier_verdicts::{
    default_reference, Frontier, FrontierPoint, MatchedGrid, MethodFrontier, SeedCurve,
};
pub use markdown::{markdown, markdown_report};
pub use summary::{
    Comparison, Finals, GroupSummary, MeanStd, Verdict, Verdicts, COLLAPSE, GAIN_SHARE, KEEP,
};
pub use telemetry::{trust_markdown, trust_region, EpochTelemetry, TrustRegion};

/// What must agree between runs (and with the base reference) for their final numbers to be
/// comparable: the model, the evaluation's seeds, size, chain and guidance, and the rewards.
/// Paths are compared in one spelling (`configs/../models/x` is `models/x`): older run folders
/// kept them as the YAML wrote them.
pub fn evaluation_key(resolved: &Value) -> Value {
    let model = resolved["model"]["weights"]
        .as_str()
        .or(resolved["model"]["config"].as_str());
    in_one_spelling(serde_json::json!({
        "model": model,
        "steps": resolved["sampling"]["steps"],
        "evaluation": {
            "seed": resolved["evaluation"]["seed"],
            "eta": resolved["evaluation"]["eta"],
            "guidance": resolved["evaluation"]["guidance"],
            "final_samples": resolved["evaluation"]["final_samples"],
        },
        "rewards": resolved["rewards"],
        "prompts": resolved["prompts"],
    }))
}

/// An evaluation key with every path in one spelling: the model folder (a named config is no
/// path and stays) and the rewards' files. Keys that older versions cached spell paths as the
/// pipeline did; passed through this they compare equal to today's.
pub fn in_one_spelling(mut key: Value) -> Value {
    let one_spelling = |p: &mut String| {
        *p = hrf_config::limits::canonical(Path::new(p.as_str()))
            .to_string_lossy()
            .into_owned();
    };
    // Resolved pipelines from before on_error and transform were written lack them: their
    // defaults are left out of the key.
    if let Some(Value::Array(rewards)) = key.get_mut("rewards") {
        for r in rewards.iter_mut().filter_map(Value::as_object_mut) {
            for (field, default) in [("on_error", "fail"), ("transform", "identity")] {
                if r.get(field).and_then(Value::as_str) == Some(default) {
                    r.remove(field);
                }
            }
        }
    }
    if let Some(Value::String(m)) = key.get_mut("model") {
        if Path::new(m.as_str()).is_absolute() {
            one_spelling(m);
        }
    }
    let rewards = key.get_mut("rewards").and_then(Value::as_array_mut);
    for r in rewards
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
    {
        for field in ["path", "dir"] {
            if let Some(Value::String(p)) = r.get_mut(field) {
                one_spelling(p);
            }
        }
        let stages = r.get_mut("stages").and_then(Value::as_array_mut);
        for stage in stages.into_iter().flatten() {
            if let Some(Value::String(p)) = stage.get_mut("model") {
                one_spelling(p);
            }
        }
        let models = r.get_mut("models").and_then(Value::as_object_mut);
        for p in models.into_iter().flat_map(|m| m.values_mut()) {
            if let Value::String(p) = p {
                one_spelling(p);
            }
        }
    }
    key
}

/// One finished run, read back from its folder.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub dir: PathBuf,
    /// `run.name`: the group it belongs to.
    pub label: String,
    pub method: String,
    pub seed: u64,
    pub epochs: u64,
    /// `training.kl_coef` (0: no KL-to-base regulariser).
    pub kl_coef: f64,
    /// `training.start` as resolved (DDPO ablations that train only the steps from a start
    /// index on); `None`: every step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<Value>,
    /// The final evaluation (the larger fixed-seed set).
    pub last: EvalReport,
    /// The evaluations during training (the smaller set), base included, by epoch.
    pub curve: Vec<EvalReport>,
    /// UNet evaluations used up to the end of each epoch (index e: after e + 1 epochs).
    pub cumulative_unet_evals: Vec<u64>,
    /// Images scored by the rewards while training (evaluations not counted).
    pub reward_evals: u64,
    /// Sampling, reward, training and evaluation time summed over the epochs (a resumed run's
    /// pieces add up).
    pub wall_s: f64,
    /// The trust-region telemetry of each epoch record, in order (fields an older run did not
    /// write are `None`).
    #[serde(skip)]
    pub telemetry: Vec<EpochTelemetry>,
    /// The evaluations where a guard acted (stop or rollback), in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub guard: Vec<GuardEvent>,
    #[serde(skip)]
    pub key: Value,
}

fn read_json_lines(path: &Path) -> Result<Vec<Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))
        })
        .collect()
}

impl RunRecord {
    /// UNet evaluations of the whole run.
    pub fn unet_evals(&self) -> u64 {
        self.cumulative_unet_evals.last().copied().unwrap_or(0)
    }

    /// Reads a finished run folder (its resolved pipeline and metrics.jsonl).
    pub fn load(dir: &Path) -> Result<Self, String> {
        let resolved_path = dir.join(RESOLVED_FILE);
        let text = std::fs::read_to_string(&resolved_path).map_err(|e| {
            format!(
                "{}: not a run folder ({}: {e})",
                dir.display(),
                RESOLVED_FILE
            )
        })?;
        // YAML (JSON in older run folders, which YAML reads too).
        let resolved: Value =
            hrf_config::parse_yaml(&resolved_path, &text).map_err(|e| e.to_string())?;
        let all = read_json_lines(&dir.join(METRICS_FILE))?;
        // Compute is counted on every line, the abandoned branches of rollbacks included; the
        // curve and the telemetry are the branch the run ended on.
        let kept = current(&all);
        let mut guard = Vec::new();
        let report = |l: &Value| -> Result<EvalReport, String> {
            serde_json::from_value(l["report"].clone())
                .map_err(|e| format!("{}: {METRICS_FILE}: evaluation: {e}", dir.display()))
        };
        let mut last = None;
        let mut curve = Vec::new();
        let (mut unet_evals, mut reward_evals, mut wall_s) = (0u64, 0u64, 0f64);
        let mut cumulative_unet_evals = Vec::new();
        let mut telemetry = Vec::new();
        for (l, &current) in all.iter().zip(&kept) {
            match l["kind"].as_str() {
                Some("epoch") => {
                    unet_evals += l["unet_evals"].as_u64().unwrap_or(0);
                    reward_evals += l["reward_calls"].as_u64().unwrap_or(0);
                    wall_s += ["sample_s", "reward_wait_s", "train_s"]
                        .iter()
                        .filter_map(|k| l[*k].as_f64())
                        .sum::<f64>();
                    if current {
                        telemetry.push(EpochTelemetry::of(l));
                        cumulative_unet_evals.push(unet_evals);
                    }
                }
                Some("eval") => {
                    let r = report(l)?;
                    wall_s += r.eval_s;
                    if current {
                        curve.push(r);
                    }
                }
                Some("final") => {
                    let r = report(l)?;
                    wall_s += r.eval_s;
                    last = Some(r);
                }
                Some("guard") => {
                    let e: GuardEvent = serde_json::from_value(l.clone())
                        .map_err(|e| format!("{}: {METRICS_FILE}: guard: {e}", dir.display()))?;
                    if e.action == "stop" || e.action == "rollback" {
                        guard.push(e);
                    }
                }
                _ => {}
            }
        }
        let last = last.ok_or_else(|| {
            format!(
                "{}: unfinished (no final evaluation in {METRICS_FILE}); finish it with `hrf run --resume {0}`",
                dir.display()
            )
        })?;
        let str_at = |v: &Value| v.as_str().unwrap_or("?").to_string();
        Ok(RunRecord {
            dir: dir.to_path_buf(),
            label: str_at(&resolved["run"]["name"]),
            method: str_at(&resolved["training"]["method"]),
            seed: resolved["run"]["seed"].as_u64().unwrap_or(0),
            epochs: resolved["training"]["epochs"].as_u64().unwrap_or(0),
            kl_coef: resolved["training"]["kl_coef"].as_f64().unwrap_or(0.0),
            start: Some(resolved["training"]["start"].clone()).filter(|v| !v.is_null()),
            last,
            curve,
            cumulative_unet_evals,
            reward_evals,
            wall_s,
            telemetry,
            guard,
            key: evaluation_key(&resolved),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::diversity::{ClassCoverage, Diversity, FEATURES_CLASSIFIER};

    pub(super) fn report(
        epoch: u64,
        reward: f64,
        vendi: f64,
        entropy: f64,
        samples: usize,
    ) -> EvalReport {
        EvalReport {
            epoch,
            samples,
            reward_mean: reward,
            reward_sem: 0.0,
            reward_components: BTreeMap::new(),
            reward_trajectory: vec![],
            diversity: Some(Diversity {
                samples,
                vendi,
                features: FEATURES_CLASSIFIER.into(),
                classes: Some(ClassCoverage {
                    class_entropy: entropy,
                    classes_covered: 10,
                    class_histogram: vec![],
                    is_like: 2.0,
                }),
                fid_like: Some(1.0),
            }),
            per_prompt_vendi: None,
            class_accuracy: None,
            sample_rewards: vec![],
            gold: BTreeMap::new(),
            eval_s: 1.0,
        }
    }

    pub(super) fn run(label: &str, seed: u64, reward: f64, vendi: f64) -> RunRecord {
        RunRecord {
            dir: PathBuf::from(format!("runs/{label}-{seed}")),
            label: label.into(),
            method: "ddpo-is".into(),
            seed,
            epochs: 2,
            kl_coef: 0.0,
            start: None,
            last: report(2, reward, vendi, 2.0, 1000),
            curve: vec![
                report(0, 0.0, 10.0, 2.0, 128),
                report(1, reward / 2.0, vendi, 2.0, 128),
            ],
            cumulative_unet_evals: vec![100, 200],
            reward_evals: 64,
            wall_s: 10.0,
            telemetry: vec![],
            guard: vec![],
            key: serde_json::json!({"same": true}),
        }
    }

    #[test]
    fn paths_spelled_differently_give_the_same_key() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let resolved = |model: &Path, stage: &Path| {
            serde_json::json!({
                "model": {"weights": model, "device": "cpu"},
                "sampling": {"steps": 5},
                "evaluation": {"seed": 1, "eta": 0.0, "guidance": 1.0, "final_samples": 8},
                "rewards": [{"kind": "onnx", "name": "s", "stages": [{"model": stage}]}],
            })
        };
        let a = resolved(
            &repo.join("configs/../models/testbed"),
            &repo.join("configs/../models/aesthetic-head.onnx"),
        );
        let b = resolved(
            &repo.join("models/testbed"),
            &repo.join("models/./aesthetic-head.onnx"),
        );
        assert_ne!(a, b);
        assert_eq!(evaluation_key(&a), evaluation_key(&b));
        let other = resolved(
            &repo.join("models/testbed-wide"),
            &repo.join("models/aesthetic-head.onnx"),
        );
        assert_ne!(evaluation_key(&a), evaluation_key(&other));
        let named = serde_json::json!({"model": {"config": "testbed"}});
        assert_eq!(evaluation_key(&named)["model"], "testbed");
        // A key cached by an older hrf, paths as the pipeline spelled them, matches today's.
        let mut cached = evaluation_key(&b);
        cached["model"] = repo
            .join("configs/../models/testbed")
            .to_string_lossy()
            .into();
        assert_ne!(cached, evaluation_key(&b));
        assert_eq!(in_one_spelling(cached), evaluation_key(&b));
    }
}
