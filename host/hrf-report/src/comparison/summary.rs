//! A comparison's numbers: mean ± standard deviation over the runs of each group (`MeanStd`,
//! `Finals`, `GroupSummary`, `Comparison`) and the verdicts against a reference group.

use std::collections::BTreeMap;

use serde::Serialize;

use super::RunRecord;
use crate::records::EvalReport;

/// Mean and sample standard deviation (0 for one value).
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct MeanStd {
    pub mean: f64,
    pub std: f64,
    pub n: usize,
}

impl MeanStd {
    pub fn of(values: &[f64]) -> Self {
        let n = values.len();
        if n == 0 {
            return MeanStd {
                mean: f64::NAN,
                std: f64::NAN,
                n,
            };
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let std = if n > 1 {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        MeanStd { mean, std, n }
    }

    pub(super) fn show(&self, digits: usize) -> String {
        if !self.mean.is_finite() {
            "–".into()
        } else if self.n > 1 {
            format!("{:.digits$} ± {:.digits$}", self.mean, self.std)
        } else {
            format!("{:.digits$}", self.mean)
        }
    }
}

/// The final numbers of one run, or of the base model.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Finals {
    pub reward: f64,
    pub vendi: f64,
    pub class_entropy: f64,
    pub classes_covered: f64,
    pub fid_like: f64,
    pub is_like: f64,
}

impl Finals {
    pub fn of(r: &EvalReport) -> Self {
        let d = r.diversity.as_ref();
        let c = d.and_then(|d| d.classes.as_ref());
        let nan = f64::NAN;
        Finals {
            reward: r.reward_mean,
            vendi: d.map_or(nan, |d| d.vendi),
            class_entropy: c.map_or(nan, |c| c.class_entropy),
            classes_covered: c.map_or(nan, |c| c.classes_covered as f64),
            fid_like: d.and_then(|d| d.fid_like).unwrap_or(nan),
            is_like: c.map_or(nan, |c| c.is_like),
        }
    }
}

/// A group of runs (one `run.name`): every final number as mean ± std over its runs.
#[derive(Debug, Clone, Serialize)]
pub struct GroupSummary {
    pub label: String,
    pub method: String,
    pub seeds: Vec<u64>,
    pub epochs: Vec<u64>,
    pub reward: MeanStd,
    /// Reward minus the base model's (per run, then averaged).
    pub gain: Option<MeanStd>,
    pub vendi: MeanStd,
    pub vendi_vs_base: Option<MeanStd>,
    pub class_entropy: MeanStd,
    pub entropy_vs_base: Option<MeanStd>,
    pub classes_covered: MeanStd,
    pub fid_like: MeanStd,
    pub is_like: MeanStd,
    pub unet_evals: MeanStd,
    pub reward_evals: MeanStd,
    pub wall_s: MeanStd,
}

/// Runs side by side, grouped, against an optional base reference.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub base: Option<EvalReport>,
    pub groups: Vec<GroupSummary>,
    pub runs: Vec<RunRecord>,
}

impl Comparison {
    /// Groups `runs` by label in the order first seen. Fails when their evaluations differ in
    /// anything that makes the final numbers incomparable.
    pub fn new(runs: Vec<RunRecord>, base: Option<EvalReport>) -> Result<Self, String> {
        let first = runs.first().ok_or("no runs to compare")?;
        for r in &runs[1..] {
            if r.key != first.key {
                return Err(format!(
                    "{} and {} were not evaluated alike (model, sampling.steps, evaluation seed/eta/guidance/final_samples, rewards or prompts differ): their numbers are not comparable",
                    first.dir.display(),
                    r.dir.display()
                ));
            }
        }
        let mut order: Vec<String> = Vec::new();
        let mut members: BTreeMap<String, Vec<&RunRecord>> = BTreeMap::new();
        for r in &runs {
            if !members.contains_key(&r.label) {
                order.push(r.label.clone());
            }
            members.entry(r.label.clone()).or_default().push(r);
        }
        let base_f = base.as_ref().map(Finals::of);
        let groups = order
            .iter()
            .map(|label| {
                let rs = &members[label];
                let f: Vec<Finals> = rs.iter().map(|r| Finals::of(&r.last)).collect();
                let col = |get: &dyn Fn(&Finals) -> f64| {
                    MeanStd::of(&f.iter().map(get).collect::<Vec<_>>())
                };
                let rel = |get: &dyn Fn(&Finals) -> f64, diff: bool| {
                    base_f.map(|b| {
                        col(&|x: &Finals| {
                            if diff {
                                get(x) - get(&b)
                            } else {
                                get(x) / get(&b)
                            }
                        })
                    })
                };
                let methods: Vec<&str> = rs.iter().map(|r| r.method.as_str()).collect();
                GroupSummary {
                    label: label.clone(),
                    method: if methods.iter().all(|m| *m == methods[0]) {
                        methods[0].to_string()
                    } else {
                        methods.join("/")
                    },
                    seeds: rs.iter().map(|r| r.seed).collect(),
                    epochs: rs.iter().map(|r| r.epochs).collect(),
                    reward: col(&|x| x.reward),
                    gain: rel(&|x| x.reward, true),
                    vendi: col(&|x| x.vendi),
                    vendi_vs_base: rel(&|x| x.vendi, false),
                    class_entropy: col(&|x| x.class_entropy),
                    entropy_vs_base: rel(&|x| x.class_entropy, false),
                    classes_covered: col(&|x| x.classes_covered),
                    fid_like: col(&|x| x.fid_like),
                    is_like: col(&|x| x.is_like),
                    unet_evals: MeanStd::of(
                        &rs.iter().map(|r| r.unet_evals() as f64).collect::<Vec<_>>(),
                    ),
                    reward_evals: MeanStd::of(
                        &rs.iter().map(|r| r.reward_evals as f64).collect::<Vec<_>>(),
                    ),
                    wall_s: MeanStd::of(&rs.iter().map(|r| r.wall_s).collect::<Vec<_>>()),
                }
            })
            .collect();
        Ok(Comparison { base, groups, runs })
    }

    pub fn group(&self, label: &str) -> Option<&GroupSummary> {
        self.groups.iter().find(|g| g.label == label)
    }
}

/// How a group measures up against a reference group (plain DDPO) under the claim HRF makes:
/// at least `gain_share` of the reference's reward gain while keeping Vendi and class entropy at
/// least `keep` of the base model's. The claim is only tested when the reference itself lost
/// diversity (Vendi below `collapse` of the base).
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub label: String,
    /// This group's mean gain ÷ the reference's mean gain.
    pub gain_share: f64,
    pub vendi_vs_base: f64,
    pub entropy_vs_base: f64,
    pub meets_target: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verdicts {
    pub reference: String,
    pub reference_vendi_vs_base: f64,
    /// The reference collapsed diversity, so the claim could be tested.
    pub claim_tested: bool,
    pub groups: Vec<Verdict>,
}

pub const GAIN_SHARE: f64 = 0.9;
pub const KEEP: f64 = 0.9;
pub const COLLAPSE: f64 = 0.8;

impl Comparison {
    /// The verdicts against `reference` (needs the base reference).
    pub fn verdicts(&self, reference: &str) -> Result<Verdicts, String> {
        let r = self.group(reference).ok_or_else(|| {
            format!(
                "--reference {reference}: no such group (groups: {})",
                self.groups
                    .iter()
                    .map(|g| g.label.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        let need = |g: &GroupSummary| -> Result<(f64, f64, f64), String> {
            Ok((
                g.gain.ok_or("no base reference")?.mean,
                g.vendi_vs_base.ok_or("no base reference")?.mean,
                g.entropy_vs_base.ok_or("no base reference")?.mean,
            ))
        };
        let (ref_gain, ref_vendi, _) = need(r)?;
        let mut groups = Vec::new();
        for g in self.groups.iter().filter(|g| g.label != reference) {
            let (gain, vendi, entropy) = need(g)?;
            let gain_share = gain / ref_gain;
            groups.push(Verdict {
                label: g.label.clone(),
                gain_share,
                vendi_vs_base: vendi,
                entropy_vs_base: entropy,
                meets_target: gain_share >= GAIN_SHARE && vendi >= KEEP && entropy >= KEEP,
            });
        }
        Ok(Verdicts {
            reference: reference.to_string(),
            reference_vendi_vs_base: ref_vendi,
            claim_tested: ref_vendi < COLLAPSE,
            groups,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{report, run};
    use super::*;
    use crate::comparison::markdown;

    #[test]
    fn groups_average_over_seeds_against_the_base() {
        let runs = vec![
            run("ddpo", 0, 1.0, 5.0),
            run("hrf", 0, 0.9, 9.0),
            run("ddpo", 1, 3.0, 7.0),
        ];
        let base = report(2, 0.0, 10.0, 2.0, 1000);
        let c = Comparison::new(runs, Some(base)).unwrap();
        assert_eq!(
            c.groups
                .iter()
                .map(|g| g.label.as_str())
                .collect::<Vec<_>>(),
            ["ddpo", "hrf"]
        );
        let d = c.group("ddpo").unwrap();
        assert_eq!(d.reward.n, 2);
        assert!((d.reward.mean - 2.0).abs() < 1e-12);
        assert!((d.reward.std - 2f64.sqrt()).abs() < 1e-12);
        assert!((d.vendi_vs_base.unwrap().mean - 0.6).abs() < 1e-12);
        assert!((d.gain.unwrap().mean - 2.0).abs() < 1e-12);
        let v = c.verdicts("ddpo").unwrap();
        assert!(v.claim_tested, "DDPO kept 60% of Vendi: collapsed");
        assert_eq!(v.groups.len(), 1);
        assert!((v.groups[0].gain_share - 0.45).abs() < 1e-12);
        assert!(!v.groups[0].meets_target, "45% of the gain is short of 90%");
        let md = markdown(&c, Some(&v));
        assert!(
            md.contains("| ddpo | ddpo-is | 2 | 2 | 2.0000 ± 1.4142 |"),
            "{md}"
        );
        assert!(md.contains("target missed"), "{md}");
        assert!(c.verdicts("nope").unwrap_err().contains("ddpo, hrf"));
    }

    #[test]
    fn a_reference_that_kept_its_diversity_leaves_the_claim_untested() {
        let runs = vec![run("ddpo", 0, 1.0, 9.5), run("hrf", 0, 1.0, 9.5)];
        let c = Comparison::new(runs, Some(report(2, 0.0, 10.0, 2.0, 1000))).unwrap();
        let v = c.verdicts("ddpo").unwrap();
        assert!(!v.claim_tested);
        assert!(v.groups[0].meets_target);
        assert!(markdown(&c, Some(&v)).contains("Claim not tested"));
    }

    #[test]
    fn runs_evaluated_differently_are_refused() {
        let mut b = run("hrf", 0, 1.0, 5.0);
        b.key = serde_json::json!({"same": false});
        let e = Comparison::new(vec![run("ddpo", 0, 1.0, 5.0), b], None).unwrap_err();
        assert!(e.contains("not comparable"), "{e}");
    }
}
