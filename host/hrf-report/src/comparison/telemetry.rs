//! Trust-region telemetry: what each epoch record of metrics.jsonl says about how far the
//! optimiser moved the policy (approx-KL, the PPO clip fraction, the share of optimiser steps
//! whose gradient was clipped, the effective ratio and advantage clips after HRF's window
//! scale, the learning rate), summarised per group as a mean over epochs, then mean ± std over
//! the group's runs. Runs written before a field existed leave it out: it shows as "—".

use serde::Serialize;
use serde_json::Value;

use super::{Comparison, MeanStd};

/// The trust-region fields of one epoch record; `None` where the record has no such field (an
/// older run) or writes null (e.g. no ratio clip for DDPO-SF).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EpochTelemetry {
    pub approx_kl: Option<f64>,
    pub clipfrac: Option<f64>,
    pub grad_norm: Option<f64>,
    pub optimizer_steps: Option<u64>,
    pub lr: Option<f64>,
    pub grad_clipped_steps: Option<u64>,
    pub grad_clipped_share: Option<f64>,
    pub ratio_clip_min: Option<f64>,
    pub ratio_clip_mean: Option<f64>,
    pub ratio_clip_max: Option<f64>,
    pub adv_clip_min: Option<f64>,
    pub adv_clip_mean: Option<f64>,
    pub adv_clip_max: Option<f64>,
}

impl EpochTelemetry {
    /// Reads an epoch record (a metrics.jsonl line); never fails.
    pub fn of(line: &Value) -> Self {
        let f = |k: &str| line[k].as_f64().filter(|v| v.is_finite());
        let u = |k: &str| line[k].as_u64();
        EpochTelemetry {
            approx_kl: f("approx_kl"),
            clipfrac: f("clipfrac"),
            grad_norm: f("grad_norm"),
            optimizer_steps: u("optimizer_steps"),
            lr: f("lr"),
            grad_clipped_steps: u("grad_clipped_steps"),
            grad_clipped_share: f("grad_clipped_share"),
            ratio_clip_min: f("ratio_clip_min"),
            ratio_clip_mean: f("ratio_clip_mean"),
            ratio_clip_max: f("ratio_clip_max"),
            adv_clip_min: f("adv_clip_min"),
            adv_clip_mean: f("adv_clip_mean"),
            adv_clip_max: f("adv_clip_max"),
        }
    }
}

/// One group's trust-region telemetry: each field the mean over a run's epochs that have it,
/// then mean ± std over the runs that have it at all (`None`: no run has it).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TrustRegion {
    pub label: String,
    pub approx_kl: Option<MeanStd>,
    pub clipfrac: Option<MeanStd>,
    pub grad_clipped_share: Option<MeanStd>,
    pub ratio_clip_mean: Option<MeanStd>,
    pub adv_clip_mean: Option<MeanStd>,
    /// The learning rate of each run's first and last epoch.
    pub lr_first: Option<MeanStd>,
    pub lr_last: Option<MeanStd>,
}

type Field = fn(&EpochTelemetry) -> Option<f64>;

fn over_runs(
    runs: &[&[EpochTelemetry]],
    per_run: &dyn Fn(&[EpochTelemetry]) -> Option<f64>,
) -> Option<MeanStd> {
    let values: Vec<f64> = runs.iter().filter_map(|t| per_run(t)).collect();
    (!values.is_empty()).then(|| MeanStd::of(&values))
}

fn epoch_mean(epochs: &[EpochTelemetry], get: Field) -> Option<f64> {
    let v: Vec<f64> = epochs.iter().filter_map(get).collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Every group's trust-region telemetry, in the comparison's order.
pub fn trust_region(c: &Comparison) -> Vec<TrustRegion> {
    c.groups
        .iter()
        .map(|g| {
            let runs: Vec<&[EpochTelemetry]> = c
                .runs
                .iter()
                .filter(|r| r.label == g.label)
                .map(|r| r.telemetry.as_slice())
                .collect();
            let mean = |get: Field| over_runs(&runs, &|t| epoch_mean(t, get));
            TrustRegion {
                label: g.label.clone(),
                approx_kl: mean(|t| t.approx_kl),
                clipfrac: mean(|t| t.clipfrac),
                grad_clipped_share: mean(|t| t.grad_clipped_share),
                ratio_clip_mean: mean(|t| t.ratio_clip_mean),
                adv_clip_mean: mean(|t| t.adv_clip_mean),
                lr_first: over_runs(&runs, &|t| t.first()?.lr),
                lr_last: over_runs(&runs, &|t| t.last()?.lr),
            }
        })
        .collect()
}

/// A value with `digits` decimals, or in scientific notation below 0.01 (a KL, a learning
/// rate); "—" when missing.
fn cell(m: &Option<MeanStd>, digits: usize) -> String {
    let Some(m) = m.filter(|m| m.mean.is_finite()) else {
        return "—".into();
    };
    let small = m.mean != 0.0 && m.mean.abs() < 0.01;
    let one = |v: f64| match (small, v == 0.0) {
        (true, true) => "0".into(),
        (true, false) => format!("{v:.2e}"),
        (false, _) => format!("{v:.digits$}"),
    };
    if m.n > 1 {
        format!("{} ± {}", one(m.mean), one(m.std))
    } else {
        one(m.mean)
    }
}

/// The "Trust region" table: one row per group.
pub fn trust_markdown(rows: &[TrustRegion]) -> String {
    let mut s = String::from(
        "## Trust region\n\nPer epoch record, averaged over each run's epochs, then mean ± std over the runs of a group; — where the runs did not record it.\n\n",
    );
    s += "| run | approx KL | clip fraction | grad-clipped share | ratio clip (mean) | advantage clip (mean) | lr first epoch | lr last epoch |\n";
    s += "|---|---|---|---|---|---|---|---|\n";
    for t in rows {
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            t.label,
            cell(&t.approx_kl, 4),
            cell(&t.clipfrac, 3),
            cell(&t.grad_clipped_share, 3),
            cell(&t.ratio_clip_mean, 4),
            cell(&t.adv_clip_mean, 3),
            cell(&t.lr_first, 4),
            cell(&t.lr_last, 4),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::super::tests::run;
    use super::*;

    fn epoch(kl: f64, lr: f64, share: Option<f64>) -> Value {
        let mut v = serde_json::json!({"kind": "epoch", "approx_kl": kl, "clipfrac": 0.5});
        if let Some(s) = share {
            v["lr"] = lr.into();
            v["grad_clipped_share"] = s.into();
            v["ratio_clip_mean"] = Value::Null;
            v["adv_clip_mean"] = 2.5.into();
        }
        v
    }

    #[test]
    fn new_fields_average_over_epochs_then_runs_and_old_runs_show_a_dash() {
        let t = EpochTelemetry::of(&epoch(1e-3, 3e-4, Some(0.25)));
        assert_eq!(t.approx_kl, Some(1e-3));
        assert_eq!(t.ratio_clip_mean, None, "null: no ratio clip (DDPO-SF)");
        assert_eq!(t.adv_clip_mean, Some(2.5));
        let old = EpochTelemetry::of(&epoch(2e-3, 0.0, None));
        assert_eq!((old.lr, old.grad_clipped_share), (None, None));

        let mut a = run("hrf", 0, 1.0, 5.0);
        a.telemetry = vec![
            EpochTelemetry::of(&epoch(1e-3, 3e-4, Some(0.0))),
            EpochTelemetry::of(&epoch(3e-3, 1e-4, Some(0.5))),
        ];
        let mut b = run("hrf", 1, 1.0, 5.0);
        b.telemetry = vec![EpochTelemetry::of(&epoch(4e-3, 3e-4, Some(1.0)))];
        let mut old_run = run("ddpo", 0, 1.0, 5.0);
        old_run.telemetry = vec![old.clone(), old];
        let c = Comparison::new(vec![a, b, old_run], None).unwrap();
        let rows = trust_region(&c);
        let hrf = &rows[0];
        // Runs: KL 2e-3 and 4e-3; clipped share 0.25 and 1.
        assert_eq!(hrf.approx_kl.unwrap().n, 2);
        assert!((hrf.approx_kl.unwrap().mean - 3e-3).abs() < 1e-15);
        assert!((hrf.grad_clipped_share.unwrap().mean - 0.625).abs() < 1e-12);
        assert_eq!(hrf.ratio_clip_mean, None);
        assert_eq!(hrf.lr_first.unwrap().mean, 3e-4);
        assert!((hrf.lr_last.unwrap().mean - 2e-4).abs() < 1e-15);
        let ddpo = &rows[1];
        assert!((ddpo.approx_kl.unwrap().mean - 2e-3).abs() < 1e-15);
        assert_eq!((ddpo.lr_first, ddpo.grad_clipped_share), (None, None));
        let md = trust_markdown(&rows);
        assert!(
            md.contains("| ddpo | 2.00e-3 | 0.500 | — | — | — | — | — |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| hrf | 3.00e-3 ± 1.41e-3 | 0.500 ± 0.000 | 0.625 ± 0.530 | — | 2.500 ± 0.000 | 3.00e-4 ± 0 | 2.00e-4 ± 1.41e-4 |"
            ),
            "{md}"
        );
    }
}
