//! The frontier verdicts: each run's reward–diversity curve over its evaluations, the reference
//! group's reward at the middle of its run (R_mid), and per group the diversity at R_mid and
//! the reward reached while keeping Vendi ≥ `VENDI_FLOOR` of the base, each as a mean over
//! seeds with a bootstrap interval (the arithmetic is `crate::frontier`).

use std::path::PathBuf;

use serde::Serialize;

use super::{Comparison, RunRecord};
use crate::frontier::{
    reward_above_floor, seeds_interval, value_at_epoch, value_at_reward, Interval,
    BOOTSTRAP_RESAMPLES, COVERAGE, VENDI_FLOOR,
};
use crate::records::EvalReport;

/// One evaluation on a run's curve: its reward, and its Vendi score and class entropy ÷ the
/// base model's evaluated on the same seeds (`None` where there is no such base).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FrontierPoint {
    pub epoch: u64,
    pub reward: f64,
    pub vendi_vs_base: Option<f64>,
    pub entropy_vs_base: Option<f64>,
    /// The final evaluation (the larger set) rather than one during training.
    pub final_eval: bool,
}

/// One run (seed) of a group, as a curve in evaluation order.
#[derive(Debug, Clone, Serialize)]
pub struct SeedCurve {
    pub dir: PathBuf,
    pub seed: u64,
    pub epochs: u64,
    pub points: Vec<FrontierPoint>,
}

impl SeedCurve {
    /// The run's evaluations during training by epoch, each divided by the run's own epoch-0
    /// evaluation (the base model on the same seeds and set size), then its final evaluation,
    /// divided by the base model evaluated as the final was (the comparison's base reference,
    /// or the epoch-0 evaluation when the final set is no larger). Vendi and entropy grow with
    /// the set, so a ratio is only ever taken between sets of one size.
    pub fn of(r: &RunRecord, shared_base: Option<&EvalReport>) -> Self {
        let mut during: Vec<&EvalReport> = r.curve.iter().collect();
        during.sort_by_key(|e| e.epoch);
        during.dedup_by_key(|e| e.epoch);
        let base0 = during.iter().copied().find(|e| e.epoch == 0);
        let point = |e: &EvalReport, base: Option<&EvalReport>, final_eval| {
            let ratio = |get: fn(&EvalReport) -> Option<f64>| {
                let (v, b) = (get(e)?, get(base?)?);
                Some(v / b).filter(|x| x.is_finite() && b > 0.0)
            };
            FrontierPoint {
                epoch: e.epoch,
                reward: e.reward_mean,
                vendi_vs_base: ratio(|e| Some(e.diversity.as_ref()?.vendi)),
                entropy_vs_base: ratio(|e| e.diversity.as_ref()?.class_entropy()),
                final_eval,
            }
        };
        let mut points: Vec<FrontierPoint> =
            during.iter().map(|e| point(e, base0, false)).collect();
        let final_base = [base0, shared_base]
            .into_iter()
            .flatten()
            .find(|b| b.samples == r.last.samples);
        if during.last().is_none_or(|e| e.epoch < r.last.epoch) {
            points.push(point(&r.last, final_base, true));
        }
        SeedCurve {
            dir: r.dir.clone(),
            seed: r.seed,
            epochs: r.epochs,
            points,
        }
    }

    /// (reward, diversity ÷ base) in evaluation order, where the ratio exists.
    pub fn diversity(&self, get: fn(&FrontierPoint) -> Option<f64>) -> Vec<(f64, f64)> {
        self.points
            .iter()
            .filter_map(|p| Some((p.reward, get(p)?)))
            .collect()
    }

    /// The reward at the middle of the run (epochs ÷ 2), linear in epoch between the
    /// evaluations around it.
    pub fn reward_at_midpoint(&self) -> Option<f64> {
        let pts: Vec<(f64, f64)> = self
            .points
            .iter()
            .map(|p| (p.epoch as f64, p.reward))
            .collect();
        value_at_epoch(&pts, self.epochs as f64 / 2.0)
    }

    /// The sample grid a run folder keeps of an evaluation (docs/ARCHITECTURE.md §7).
    pub fn grid_of(&self, p: &FrontierPoint) -> PathBuf {
        let name = match p.final_eval {
            true => "final.png".to_string(),
            false => format!("eval-{:04}.png", p.epoch),
        };
        self.dir.join("samples").join(name)
    }
}

/// The evaluation of a group's first seed whose reward is closest to R_mid, and its grid.
#[derive(Debug, Clone, Serialize)]
pub struct MatchedGrid {
    pub seed: u64,
    pub epoch: u64,
    pub reward: f64,
    pub final_eval: bool,
    pub grid: PathBuf,
}

/// One group's frontier and verdicts.
#[derive(Debug, Clone, Serialize)]
pub struct MethodFrontier {
    pub label: String,
    pub method: String,
    pub reference: bool,
    pub curves: Vec<SeedCurve>,
    /// Vendi ÷ base where each seed's reward first reaches R_mid, over the seeds that reach it.
    pub vendi_at_r_mid: Option<Interval>,
    pub vendi_reached: usize,
    pub entropy_at_r_mid: Option<Interval>,
    pub entropy_reached: usize,
    /// The best reward each seed reaches before its Vendi first drops below `VENDI_FLOOR` of
    /// the base's, over the seeds that start above it.
    pub reward_at_vendi_floor: Option<Interval>,
    pub matched: Option<MatchedGrid>,
}

/// The frontier analysis of a comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Frontier {
    /// The reference group (plain DDPO), named or found.
    pub reference: Option<String>,
    /// Why the verdicts at R_mid were not made (no reference, or it has no midpoint reward).
    pub skipped: Option<String>,
    /// The reference's mean reward at the middle of its run, over its seeds.
    pub r_mid: Option<f64>,
    pub r_mid_seeds: usize,
    /// The base model's reward on the evaluations during training (the runs' epoch 0, mean).
    pub base_reward: Option<f64>,
    pub vendi_floor: f64,
    pub bootstrap_resamples: usize,
    pub coverage: f64,
    pub methods: Vec<MethodFrontier>,
}

/// The group `hrf compare` measures the others against when no `--reference` names one: the
/// one whose runs are all plain DDPO (`ddpo-is`, no KL to base, every step trained). `Err`
/// says why there is none.
pub fn default_reference(c: &Comparison) -> Result<String, String> {
    let plain: Vec<&str> = c
        .groups
        .iter()
        .filter(|g| {
            c.runs
                .iter()
                .filter(|r| r.label == g.label)
                .all(|r| r.method == "ddpo-is" && r.kl_coef == 0.0 && r.start.is_none())
        })
        .map(|g| g.label.as_str())
        .collect();
    match plain[..] {
        [one] => Ok(one.to_string()),
        [] => Err("no group is plain DDPO (ddpo-is, kl_coef 0, no training.start); name one with --reference".into()),
        _ => Err(format!(
            "several groups are plain DDPO ({}); name one with --reference",
            plain.join(", ")
        )),
    }
}

impl Frontier {
    /// The frontier of every group; the verdicts at R_mid against `reference` (`Err` when it
    /// names no group; `None`: no reference, those verdicts skipped with the reason given).
    pub fn of(c: &Comparison, reference: Result<&str, String>) -> Result<Self, String> {
        if let Ok(name) = reference {
            if c.group(name).is_none() {
                return Err(format!(
                    "--reference {name}: no such group (groups: {})",
                    c.groups
                        .iter()
                        .map(|g| g.label.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        let curves_of = |label: &str| -> Vec<SeedCurve> {
            c.runs
                .iter()
                .filter(|r| r.label == label)
                .map(|r| SeedCurve::of(r, c.base.as_ref()))
                .collect()
        };
        let (mut r_mid, mut r_mid_seeds, mut skipped) = (None, 0, None);
        match &reference {
            Ok(name) => {
                let mids: Vec<f64> = curves_of(name)
                    .iter()
                    .filter_map(SeedCurve::reward_at_midpoint)
                    .collect();
                r_mid_seeds = mids.len();
                if mids.is_empty() {
                    skipped = Some(format!(
                        "`{name}` has no evaluations around the middle of its run"
                    ));
                } else {
                    r_mid = Some(mids.iter().sum::<f64>() / mids.len() as f64);
                }
            }
            Err(why) => skipped = Some(why.clone()),
        }
        let methods = c
            .groups
            .iter()
            .map(|g| {
                let curves = curves_of(&g.label);
                let at_level = |get: fn(&FrontierPoint) -> Option<f64>| {
                    let Some(level) = r_mid else {
                        return (None, 0);
                    };
                    let v: Vec<f64> = curves
                        .iter()
                        .filter_map(|s| value_at_reward(&s.diversity(get), level))
                        .collect();
                    (seeds_interval(&v), v.len())
                };
                let (vendi_at_r_mid, vendi_reached) = at_level(|p| p.vendi_vs_base);
                let (entropy_at_r_mid, entropy_reached) = at_level(|p| p.entropy_vs_base);
                let floor: Vec<f64> = curves
                    .iter()
                    .filter_map(|s| {
                        reward_above_floor(&s.diversity(|p| p.vendi_vs_base), VENDI_FLOOR)
                    })
                    .collect();
                let matched = r_mid.and_then(|level| {
                    let s = curves.first()?;
                    let p = s.points.iter().min_by(|a, b| {
                        (a.reward - level)
                            .abs()
                            .total_cmp(&(b.reward - level).abs())
                    })?;
                    Some(MatchedGrid {
                        seed: s.seed,
                        epoch: p.epoch,
                        reward: p.reward,
                        final_eval: p.final_eval,
                        grid: s.grid_of(p),
                    })
                });
                MethodFrontier {
                    label: g.label.clone(),
                    method: g.method.clone(),
                    reference: matches!(&reference, Ok(n) if *n == g.label),
                    vendi_at_r_mid,
                    vendi_reached,
                    entropy_at_r_mid,
                    entropy_reached,
                    reward_at_vendi_floor: seeds_interval(&floor),
                    matched,
                    curves,
                }
            })
            .collect();
        let base: Vec<f64> = c
            .runs
            .iter()
            .filter_map(|r| r.curve.iter().find(|e| e.epoch == 0))
            .map(|e| e.reward_mean)
            .collect();
        Ok(Frontier {
            reference: reference.ok().map(str::to_string),
            skipped,
            r_mid,
            r_mid_seeds,
            base_reward: (!base.is_empty()).then(|| base.iter().sum::<f64>() / base.len() as f64),
            vendi_floor: VENDI_FLOOR,
            bootstrap_resamples: BOOTSTRAP_RESAMPLES,
            coverage: COVERAGE,
            methods,
        })
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::tests::{report, run};
    use super::*;
    use crate::chart::Marker;
    use crate::comparison::{frontier_charts, frontier_markdown};

    /// A run of `epochs` whose evaluations during training are `during` (epoch, reward, Vendi,
    /// class entropy; 128 samples) and whose final one is `last` (1000 samples).
    pub(in crate::comparison) fn run_with(
        label: &str,
        seed: u64,
        method: &str,
        during: &[(u64, f64, f64, f64)],
        last: (f64, f64, f64),
    ) -> RunRecord {
        let mut r = run(label, seed, last.0, last.1);
        r.method = method.into();
        r.epochs = 4;
        r.curve = during
            .iter()
            .map(|&(e, rw, v, h)| report(e, rw, v, h, 128))
            .collect();
        r.last = report(4, last.0, last.1, last.2, 1000);
        r
    }

    /// Plain DDPO over two seeds (it loses Vendi as it gains reward) and HRF over one (it keeps
    /// Vendi but never reaches DDPO's mid-run reward), against a base evaluated on 1000
    /// samples with Vendi 20 and class entropy 2.5.
    pub(in crate::comparison) fn comparison() -> Comparison {
        let runs = vec![
            run_with(
                "ddpo",
                0,
                "ddpo-is",
                &[(0, 0.0, 10.0, 2.0), (2, 1.0, 8.0, 1.8)],
                (2.0, 12.0, 1.5),
            ),
            run_with(
                "ddpo",
                1,
                "ddpo-is",
                &[(0, 0.0, 10.0, 2.0), (2, 3.0, 6.0, 1.6)],
                (4.0, 10.0, 1.0),
            ),
            run_with(
                "hrf",
                0,
                "hrf",
                &[(0, 0.0, 10.0, 2.0), (2, 1.5, 9.5, 2.0)],
                (1.8, 19.0, 2.5),
            ),
        ];
        Comparison::new(runs, Some(report(4, 0.0, 20.0, 2.5, 1000))).unwrap()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn curves_divide_each_evaluation_by_the_base_on_the_same_set() {
        let c = comparison();
        let s = SeedCurve::of(&c.runs[0], c.base.as_ref());
        let point = |epoch, reward, vendi, entropy, final_eval| FrontierPoint {
            epoch,
            reward,
            vendi_vs_base: Some(vendi),
            entropy_vs_base: Some(entropy),
            final_eval,
        };
        // During training: ÷ the run's epoch-0 evaluation (Vendi 10, entropy 2); the final
        // (1000 samples): ÷ the base model on 1000 samples (Vendi 20, entropy 2.5).
        assert_eq!(
            s.points,
            [
                point(0, 0.0, 1.0, 1.0, false),
                point(2, 1.0, 0.8, 0.9, false),
                point(4, 2.0, 0.6, 0.6, true),
            ]
        );
        assert_eq!(
            s.grid_of(&s.points[1]),
            c.runs[0].dir.join("samples/eval-0002.png")
        );
        assert_eq!(
            s.grid_of(&s.points[2]),
            c.runs[0].dir.join("samples/final.png")
        );
        // No base reference evaluated on 1000 samples: the final point has no ratios.
        let bare = SeedCurve::of(&c.runs[0], None);
        assert_eq!(bare.points[2].vendi_vs_base, None);
        assert_eq!(bare.diversity(|p| p.vendi_vs_base).len(), 2);
    }

    #[test]
    fn verdicts_at_the_reference_midpoint_reward_and_under_the_vendi_floor() {
        let c = comparison();
        assert_eq!(default_reference(&c), Ok("ddpo".to_string()));
        let f = Frontier::of(&c, Ok("ddpo")).unwrap();
        // Epoch 4 / 2 = 2: DDPO's rewards 1 and 3 there.
        assert_eq!((f.r_mid, f.r_mid_seeds), (Some(2.0), 2));
        assert_eq!(f.skipped, None);
        let ddpo = &f.methods[0];
        assert!(ddpo.reference && !f.methods[1].reference);
        // Seed 0 reaches reward 2 at its final point (0.6); seed 1 two thirds of the way to
        // reward 3 on its first segment (1 − 0.4·2/3).
        let v = ddpo.vendi_at_r_mid.unwrap();
        assert!(
            close(v.mean, (0.6 + (1.0 - 0.4 * 2.0 / 3.0)) / 2.0),
            "{v:?}"
        );
        assert!(v.lo <= v.mean && v.mean <= v.hi);
        assert_eq!((ddpo.vendi_reached, ddpo.entropy_reached), (2, 2));
        // Entropy ÷ base: 0.6 at seed 0's final; seed 1: 1 − 0.2·2/3.
        let h = ddpo.entropy_at_r_mid.unwrap();
        assert!(
            close(h.mean, (0.6 + (1.0 - 0.2 * 2.0 / 3.0)) / 2.0),
            "{h:?}"
        );
        // Vendi falls below 90% half way to reward 1 (seed 0) and a quarter of the way to
        // reward 3 (seed 1).
        let floor = ddpo.reward_at_vendi_floor.unwrap();
        assert!(close(floor.mean, 0.625), "{floor:?}");
        // HRF never reaches reward 2, and keeps Vendi ≥ 95% to its best reward 1.8.
        let hrf = &f.methods[1];
        assert_eq!((hrf.vendi_at_r_mid, hrf.vendi_reached), (None, 0));
        let floor = hrf.reward_at_vendi_floor.unwrap();
        assert_eq!(
            (floor.mean, floor.lo, floor.hi, floor.n),
            (1.8, 1.8, 1.8, 1)
        );
        // Samples at matched reward: seed 0's evaluation closest to 2 (its final; HRF's 1.8).
        let m = ddpo.matched.as_ref().unwrap();
        assert_eq!((m.seed, m.epoch, m.final_eval), (0, 4, true));
        let m = hrf.matched.as_ref().unwrap();
        assert_eq!((m.epoch, m.reward), (4, 1.8));
        assert!(m.grid.ends_with("samples/final.png"));
        // The same again: the intervals are deterministic.
        let again = Frontier::of(&c, Ok("ddpo")).unwrap();
        assert_eq!(again.methods[0].vendi_at_r_mid, ddpo.vendi_at_r_mid);

        let md = frontier_markdown(&f, Some("samples-at-matched-reward.png"));
        println!("{md}");
        assert!(md.contains("R_mid = 2.0000: `ddpo`'s reward"), "{md}");
        assert!(!md.contains("Note: R_mid is not above"), "{md}");
        assert_eq!(f.base_reward, Some(0.0));
        assert!(
            md.contains(&format!(
                "| ddpo (reference) | 2 | 2.0000 | {} (reached 2/2) |",
                v.show(3)
            )),
            "{md}"
        );
        assert!(
            md.contains("| hrf | 1 | 2.0000 | — (reached 0/1) | — (reached 0/1) | 1.8000 |"),
            "{md}"
        );
        assert!(
            md.contains("side by side in samples-at-matched-reward.png"),
            "{md}"
        );
        assert!(md.contains("- `hrf`: seed 0, final evaluation, epoch 4 (reward 1.8000): runs/hrf-0/samples/final.png"), "{md}");
    }

    #[test]
    fn a_reference_that_lost_reward_by_mid_run_matches_at_the_base() {
        let mut c = comparison();
        for r in &mut c.runs {
            r.curve[0].reward_mean = 5.0;
        }
        let f = Frontier::of(&c, Ok("ddpo")).unwrap();
        // Seed midpoints 1 and 3 again; every curve starts above 2: its first point.
        assert_eq!(f.r_mid, Some(2.0));
        let v = f.methods[0].vendi_at_r_mid.unwrap();
        assert_eq!((v.mean, v.lo, v.hi), (1.0, 1.0, 1.0));
        let md = frontier_markdown(&f, None);
        assert!(
            md.contains("Note: R_mid is not above the base model's reward (5.0000)"),
            "{md}"
        );
    }

    #[test]
    fn without_a_single_plain_ddpo_group_the_matched_reward_verdicts_are_skipped() {
        let c = comparison();
        let e = Frontier::of(&c, Ok("nope")).unwrap_err();
        assert!(e.contains("ddpo, hrf"), "{e}");
        let mut runs = c.runs.clone();
        runs[2].method = "ddpo-is".into();
        let two = Comparison::new(runs.clone(), c.base.clone()).unwrap();
        let why = default_reference(&two).unwrap_err();
        assert!(
            why.contains("several groups are plain DDPO (ddpo, hrf)"),
            "{why}"
        );
        for r in &mut runs {
            r.kl_coef = 0.1;
        }
        runs[0].kl_coef = 0.0;
        runs[0].start = Some(serde_json::json!({"index": 2}));
        let none = Comparison::new(runs, c.base.clone()).unwrap();
        let why = default_reference(&none).unwrap_err();
        assert!(why.starts_with("no group is plain DDPO"), "{why}");
        let f = Frontier::of(&none, Err(why.clone())).unwrap();
        assert_eq!((f.reference.as_deref(), f.r_mid), (None, None));
        assert_eq!(f.skipped.as_deref(), Some(why.as_str()));
        // The floor verdict needs no reference.
        assert!(f.methods[1].reward_at_vendi_floor.is_some());
        assert!(f.methods.iter().all(|m| m.matched.is_none()));
        let md = frontier_markdown(&f, None);
        assert!(
            md.contains("Verdicts at matched reward skipped: no group is plain DDPO"),
            "{md}"
        );
        assert!(md.contains("| hrf | 1 | — | — | — | 1.8000 |"), "{md}");
    }

    #[test]
    fn frontier_plots_show_seeds_means_the_base_and_r_mid() {
        let f = Frontier::of(&comparison(), Ok("ddpo")).unwrap();
        let charts = frontier_charts(&f);
        let names: Vec<&str> = charts.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["frontier-vendi.png", "frontier-class-entropy.png"]);
        let vendi = &charts[0].1;
        // Three light seed lines, two means, the R_mid line.
        assert_eq!(vendi.series.len(), 6);
        assert!(vendi.series[..3]
            .iter()
            .all(|s| s.label.is_empty() && s.marker.is_none()));
        assert_eq!(vendi.series[3].label, "ddpo (reference, 2 seeds)");
        assert_eq!(vendi.series[3].marker, Some(Marker::Dot));
        assert_eq!(
            vendi.series[3].points,
            [(0.0, 1.0), (2.0, 0.7), (3.0, 0.55)]
        );
        assert_eq!(vendi.series[4].label, "hrf");
        let r_mid = &vendi.series[5];
        assert!(r_mid.points.iter().all(|p| p.0 == 2.0), "{r_mid:?}");
        assert_eq!(vendi.markers, [(0.0, 1.0, "base model".to_string())]);
        assert_eq!(vendi.ref_lines[0].y, VENDI_FLOOR);
        for (name, chart) in &charts {
            crate::chart::assert_drawable(name, chart);
        }
    }
}
