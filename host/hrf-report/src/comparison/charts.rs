//! A comparison's charts: each group's reward and Vendi curves against epoch and against UNet
//! evaluations, ending in the final evaluation, against the base model's line, and the
//! reward–diversity scatter of the final evaluations.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{Comparison, Finals, MeanStd, RunRecord};
use crate::chart::{save_chart, Chart, Marker, RefLine, Series, Style, PALETTE};
use crate::records::EvalReport;

/// One point of a run's curve: the epoch of the evaluation, x, the value, and its standard
/// error when the report has one.
type CurvePoint = (u64, f64, f64, Option<f64>);

/// Mean over a group's runs of the value at each epoch where every run has a point (at the
/// runs' mean x: their UNet evaluations by then differ a little), with dot markers and a band:
/// the standard deviation over the runs when there are several, else the one run's standard
/// errors where it has them at every point. Labelled `label` with what the band is.
fn mean_curve(label: &str, curves: &[Vec<CurvePoint>]) -> Series {
    let mut at: BTreeMap<u64, Vec<(f64, f64, Option<f64>)>> = BTreeMap::new();
    for c in curves {
        for &(epoch, x, y, se) in c {
            at.entry(epoch).or_default().push((x, y, se));
        }
    }
    let mut pts: Vec<(f64, MeanStd, Option<f64>)> = at
        .into_values()
        .filter(|ps| ps.len() == curves.len())
        .map(|ps| {
            let x = ps.iter().map(|p| p.0).sum::<f64>() / ps.len() as f64;
            let values: Vec<f64> = ps.iter().map(|p| p.1).collect();
            (x, MeanStd::of(&values), ps[0].2)
        })
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut s = Series::new("", pts.iter().map(|(x, m, _)| (*x, m.mean)).collect())
        .with_marker(Marker::Dot);
    s.label = if curves.len() > 1 {
        s.band = Some(pts.iter().map(|(_, m, _)| m.std).collect());
        format!("{label} ({} runs, ± std)", curves.len())
    } else {
        s.band = pts.iter().map(|p| p.2).collect();
        match s.band {
            Some(_) => format!("{label} (± s.e.)"),
            None => label.to_string(),
        }
    };
    s
}

type Getter = dyn Fn(&EvalReport) -> Option<f64>;

/// Each run's curve of `get` (with `se`, its standard error) over its evaluations during
/// training, or (`last`) its final evaluation alone; x is the epoch, or the UNet evaluations
/// used by then when `by_evals`.
fn curves_of(
    c: &Comparison,
    label: &str,
    get: &Getter,
    se: &Getter,
    by_evals: bool,
    last: bool,
) -> Vec<Vec<CurvePoint>> {
    c.runs
        .iter()
        .filter(|r| r.label == label)
        .map(|r| {
            let evals = match last {
                true => std::slice::from_ref(&r.last),
                false => &r.curve[..],
            };
            evals
                .iter()
                .filter_map(|e| {
                    let x = if by_evals {
                        match e.epoch {
                            0 => 0.0,
                            k => *r.cumulative_unet_evals.get(k as usize - 1)? as f64,
                        }
                    } else {
                        e.epoch as f64
                    };
                    Some((e.epoch, x, get(e)?, se(e)))
                })
                .collect()
        })
        .collect()
}

/// The y axis of a Vendi plot spans at least this fraction of the base model's score, so that
/// a change of a few per cent is drawn as a few per cent of the plot.
const VENDI_MIN_SPAN: f64 = 0.25;

#[allow(clippy::too_many_arguments)]
fn curve_chart(
    c: &Comparison,
    title: &str,
    x_label: &str,
    y_label: &str,
    get: &Getter,
    se: &Getter,
    by_evals: bool,
    min_span: f64,
) -> Chart {
    // Each group: its evaluations during training joined by a line, and its final evaluation
    // (a larger set: Vendi and entropy grow with the set) as a square apart, in its colour.
    let mut series = Vec::new();
    for (i, g) in c.groups.iter().enumerate() {
        let color = Some(PALETTE[i % PALETTE.len()]);
        let curve = mean_curve(&g.label, &curves_of(c, &g.label, get, se, by_evals, false));
        let last = mean_curve("", &curves_of(c, &g.label, get, se, by_evals, true));
        series.push(Series { color, ..curve });
        series.push(Series {
            color,
            label: String::new(),
            ..last.with_marker(Marker::Square)
        });
    }
    let base = c.base.as_ref().and_then(|b| Some((b.samples, get(b)?)));
    Chart {
        title: title.into(),
        x_label: x_label.into(),
        y_label: y_label.into(),
        series,
        style: Style::Lines,
        ref_lines: base
            .map(|(n, y)| RefLine::new(format!("base model ({n} samples)"), y))
            .into_iter()
            .collect(),
        y_min_span: base.map_or(0.0, |(_, y)| min_span * y.abs()),
        ..Chart::default()
    }
}

/// The comparison's charts, by file name: reward.png, vendi.png (against epoch),
/// reward-by-unet-evals.png, reward-vs-diversity.png (each run's final point, the base marked).
/// The curves end in the final evaluation; the base model is a dashed line.
pub fn charts(c: &Comparison) -> Vec<(&'static str, Chart)> {
    let n_curve = c
        .runs
        .iter()
        .flat_map(|r| r.curve.first())
        .map(|e| e.samples)
        .next()
        .unwrap_or(0);
    let n_final = c.runs.first().map_or(0, |r| r.last.samples);
    let reward: &Getter = &|e| Some(e.reward_mean);
    let reward_se: &Getter = &|e| Some(e.reward_sem).filter(|s| s.is_finite());
    let vendi: &Getter = &|e| e.diversity.as_ref().map(|d| d.vendi);
    let none: &Getter = &|_| None;
    let during = format!("{n_curve} samples per evaluation; squares: final, {n_final}");
    let mut charts = vec![
        (
            "reward.png",
            curve_chart(
                c,
                &format!("Reward ({during})"),
                "epoch",
                "mean reward",
                reward,
                reward_se,
                false,
                0.0,
            ),
        ),
        (
            "reward-by-unet-evals.png",
            curve_chart(
                c,
                &format!("Reward against UNet evaluations ({during})"),
                "UNet evaluations",
                "mean reward",
                reward,
                reward_se,
                true,
                0.0,
            ),
        ),
    ];
    if c.runs.iter().any(|r| r.last.diversity.is_some()) {
        charts.push((
            "vendi.png",
            curve_chart(
                c,
                &format!("Vendi score ({during})"),
                "epoch",
                "Vendi",
                vendi,
                none,
                false,
                VENDI_MIN_SPAN,
            ),
        ));
        let series = c
            .groups
            .iter()
            .map(|g| {
                let runs: Vec<&RunRecord> = c.runs.iter().filter(|r| r.label == g.label).collect();
                Series::new(
                    g.label.clone(),
                    runs.iter()
                        .map(|r| Finals::of(&r.last))
                        .map(|f| (f.vendi, f.reward))
                        .collect(),
                )
                .with_band(runs.iter().map(|r| r.last.reward_sem).collect())
            })
            .collect();
        let markers = c
            .base
            .as_ref()
            .map(Finals::of)
            .map(|b| vec![(b.vendi, b.reward, "base model".to_string())])
            .unwrap_or_default();
        charts.push((
            "reward-vs-diversity.png",
            Chart {
                title: format!(
                    "Final reward ± s.e. against diversity (one point per run, {n_final} samples)"
                ),
                x_label: "Vendi score".into(),
                y_label: "mean reward".into(),
                series,
                style: Style::Points,
                markers,
                ..Chart::default()
            },
        ));
    }
    charts
}

/// Writes `charts(c)` into `out` and returns the paths written.
pub fn write_plots(c: &Comparison, out: &Path) -> Result<Vec<PathBuf>, String> {
    let mut written = Vec::new();
    for (name, chart) in charts(c) {
        let path = out.join(name);
        save_chart(&chart, &path)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{report, run};
    use super::*;

    #[test]
    fn curves_average_where_every_run_has_a_point() {
        let s = mean_curve(
            "g",
            &[
                vec![(0, 0.0, 1.0, Some(0.5)), (1, 10.0, 2.0, Some(0.5))],
                vec![(0, 0.0, 3.0, None)],
            ],
        );
        assert_eq!(s.points, vec![(0.0, 2.0)]);
        assert_eq!(s.band, Some(vec![2f64.sqrt()]), "several runs: their std");
        assert_eq!(
            (s.label.as_str(), s.marker),
            ("g (2 runs, ± std)", Some(Marker::Dot))
        );
        let one = mean_curve(
            "g",
            &[vec![(0, 0.0, 1.0, Some(0.5)), (1, 10.0, 2.0, Some(0.25))]],
        );
        assert_eq!(
            one.band,
            Some(vec![0.5, 0.25]),
            "one run: its standard errors"
        );
        assert_eq!(one.label, "g (± s.e.)");
        let bare = mean_curve("g", &[vec![(0, 0.0, 1.0, Some(0.5)), (1, 10.0, 2.0, None)]]);
        // Runs whose UNet evaluations differ a little meet at their epochs, at the mean x.
        let apart = mean_curve(
            "g",
            &[
                vec![(0, 0.0, 1.0, None), (1, 100.0, 2.0, None)],
                vec![(0, 0.0, 3.0, None), (1, 110.0, 4.0, None)],
            ],
        );
        assert_eq!(apart.points, vec![(0.0, 2.0), (105.0, 3.0)]);
        assert_eq!((bare.band, bare.label.as_str()), (None, "g"));
    }

    #[test]
    fn the_curves_show_the_final_evaluation_against_the_base_line() {
        let mut runs = vec![
            run("ddpo", 0, 1.0, 5.0),
            run("ddpo", 1, 3.0, 7.0),
            run("hrf", 0, 0.9, 9.0),
        ];
        runs[2].last.reward_sem = 0.05;
        runs[2].curve[0].reward_sem = 0.1;
        runs[2].curve[1].reward_sem = 0.1;
        let c = Comparison::new(runs, Some(report(2, 0.25, 10.0, 2.0, 1000))).unwrap();
        let charts = charts(&c);
        let names: Vec<&str> = charts.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "reward.png",
                "reward-by-unet-evals.png",
                "vendi.png",
                "reward-vs-diversity.png"
            ]
        );
        let get = |name: &str| &charts.iter().find(|(n, _)| *n == name).unwrap().1;
        let reward = get("reward.png");
        let [ddpo, ddpo_final, hrf, hrf_final] = &reward.series[..] else {
            panic!("{:?}", reward.series)
        };
        assert_eq!(ddpo.points, [(0.0, 0.0), (1.0, 1.0)]);
        assert_eq!(ddpo.band, Some(vec![0.0, 2f64.sqrt() / 2.0]));
        assert_eq!(ddpo.marker, Some(Marker::Dot));
        assert_eq!(
            ddpo_final.points,
            [(2.0, 2.0)],
            "epoch 2: the final, mean of 1 and 3"
        );
        assert_eq!(ddpo_final.band, Some(vec![2f64.sqrt()]));
        assert_eq!(ddpo_final.marker, Some(Marker::Square));
        assert_eq!(
            ddpo_final.label, "",
            "explained by the title, not the legend"
        );
        assert_eq!(
            (ddpo.color, ddpo_final.color),
            (Some(PALETTE[0]), Some(PALETTE[0]))
        );
        assert_eq!(
            (hrf.color, hrf_final.color),
            (Some(PALETTE[1]), Some(PALETTE[1]))
        );
        assert_eq!(hrf.points, [(0.0, 0.0), (1.0, 0.45)]);
        assert_eq!(hrf.band, Some(vec![0.1, 0.1]), "one run: ± its s.e.");
        assert_eq!(hrf.label, "hrf (± s.e.)");
        assert_eq!(hrf_final.points, [(2.0, 0.9)]);
        assert_eq!(hrf_final.band, Some(vec![0.05]));
        assert_eq!(
            reward.ref_lines,
            [RefLine::new("base model (1000 samples)", 0.25)]
        );
        assert!(
            reward.title.contains("squares: final, 1000"),
            "{}",
            reward.title
        );
        let by_evals = get("reward-by-unet-evals.png");
        let xs: Vec<f64> = by_evals.series[0].points.iter().map(|p| p.0).collect();
        assert_eq!(xs, [0.0, 100.0]);
        assert_eq!(
            by_evals.series[1].points[0].0, 200.0,
            "the final, after 2 epochs"
        );
        let vendi = get("vendi.png");
        assert_eq!(vendi.series[3].points, [(2.0, 9.0)]);
        assert_eq!(
            vendi.series[2].band, None,
            "no Vendi uncertainty in a report"
        );
        assert_eq!(vendi.ref_lines[0].y, 10.0);
        assert_eq!(vendi.y_min_span, VENDI_MIN_SPAN * 10.0);
        let scatter = get("reward-vs-diversity.png");
        assert_eq!(scatter.series[1].band, Some(vec![0.05]));
        for (name, chart) in &charts {
            crate::chart::assert_drawable(name, chart);
        }
        let no_base = Comparison::new(vec![run("ddpo", 0, 1.0, 5.0)], None).unwrap();
        assert!(super::charts(&no_base)
            .iter()
            .all(|(_, ch)| ch.ref_lines.is_empty()));
    }
}
