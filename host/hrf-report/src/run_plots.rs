//! The run's plots (`plots/*.png`), redrawn from metrics.jsonl after every epoch so that a
//! resumed run draws exactly what an uninterrupted one would. `run_charts` builds them (pure
//! data, tested); `write_run_plots` renders and saves them.
//!
//! Each plot shows the fixed-seed evaluations during training as markers joined by a line, the
//! final evaluation (the larger set) as a square apart, ± one standard error where the report carries one
//! (reward: `reward_sem`; class entropy: from the class histogram), and the base model's
//! evaluation (epoch 0) as a dashed line.

use std::path::Path;

use serde_json::Value;

use crate::chart::{save_chart, Chart, Marker, RefLine, Series, Style};

/// The plots a run draws, by file name under `plots/`.
pub const REWARD_PLOT: &str = "reward.png";
pub const DIVERSITY_PLOT: &str = "diversity.png";
pub const ENTROPY_PLOT: &str = "class-entropy.png";

const TRAIN_COLOR: [u8; 3] = [150, 170, 200];
const EVAL_COLOR: [u8; 3] = [31, 119, 180];
const FINAL_COLOR: [u8; 3] = [214, 39, 40];
const UNIFORM_COLOR: [u8; 3] = [150, 150, 150];
const GUARD_COLOR: [u8; 3] = [230, 120, 20];
const ROLLED_BACK_COLOR: [u8; 3] = [170, 170, 170];

/// A diversity plot's y axis spans at least this fraction of the base model's value, so that
/// a change of a few per cent is drawn as a few per cent of the plot.
pub const DIVERSITY_MIN_SPAN: f64 = 0.25;

/// Draws reward, diversity and class entropy against epoch from `dir/metrics.jsonl`.
pub fn write_run_plots(dir: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(dir.join(crate::records::METRICS_FILE))
        .map_err(|e| format!("metrics.jsonl: {e}"))?;
    let lines: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for (name, chart) in run_charts(&lines) {
        save_chart(&chart, &dir.join("plots").join(name))?;
    }
    Ok(())
}

/// One evaluation read back from metrics.jsonl.
#[derive(Debug, Clone, PartialEq)]
struct Eval {
    epoch: f64,
    /// The final evaluation (kind "final", the larger set).
    last: bool,
    samples: Option<u64>,
    reward: Option<f64>,
    reward_sem: Option<f64>,
    vendi: Option<f64>,
    entropy: Option<f64>,
    entropy_se: Option<f64>,
    classes: Option<usize>,
    /// What the Vendi score's features are (older records: the classifier's).
    features: String,
}

impl Eval {
    fn of(line: &Value) -> Option<Eval> {
        let last = match line["kind"].as_str() {
            Some("eval") => false,
            Some("final") => true,
            _ => return None,
        };
        let r = &line["report"];
        let d = &r["diversity"];
        let hist: Option<Vec<u64>> = d["class_histogram"]
            .as_array()
            .and_then(|h| h.iter().map(|c| c.as_u64()).collect());
        Some(Eval {
            epoch: r["epoch"].as_f64()?,
            last,
            samples: r["samples"].as_u64(),
            reward: r["reward_mean"].as_f64(),
            reward_sem: r["reward_sem"].as_f64(),
            vendi: d["vendi"].as_f64(),
            entropy: d["class_entropy"].as_f64(),
            entropy_se: hist.as_deref().and_then(entropy_standard_error),
            classes: hist.as_ref().map(|h| h.len()).filter(|&k| k > 1),
            features: d["features"]
                .as_str()
                .unwrap_or(crate::diversity::FEATURES_CLASSIFIER)
                .to_string(),
        })
    }
}

/// Standard error of the plug-in entropy (nats) of a histogram of n draws, by the delta
/// method: sqrt((Σ p ln² p − H²) / n). It is 0 for a uniform histogram, where the first-order
/// term vanishes; `None` for an empty one.
pub fn entropy_standard_error(counts: &[u64]) -> Option<f64> {
    let n: u64 = counts.iter().sum();
    if n == 0 {
        return None;
    }
    let ps = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| c as f64 / n as f64);
    let h: f64 = ps.clone().map(|p| -p * p.ln()).sum();
    let m2: f64 = ps.map(|p| p * p.ln() * p.ln()).sum();
    Some(((m2 - h * h).max(0.0) / n as f64).sqrt())
}

/// The evaluation curve of one quantity: the evaluations during training in order, with dot
/// markers and, where every point has one, its ± band; the final evaluation as a square apart
/// (a larger set: Vendi and the entropy estimate grow with the set, so a line to it would show a
/// change that is partly the set's size); the base model (the epoch-0 evaluation) for a
/// reference line.
fn eval_series(
    evals: &[Eval],
    value: impl Fn(&Eval) -> Option<f64>,
    se: impl Fn(&Eval) -> Option<f64>,
    what: &str,
) -> (Vec<Series>, Option<f64>) {
    let with: Vec<&Eval> = evals.iter().filter(|e| value(e).is_some()).collect();
    if with.is_empty() {
        return (vec![], None);
    }
    let during: Vec<&Eval> = with.iter().copied().filter(|e| !e.last).collect();
    let band: Option<Vec<f64>> = during.iter().map(|e| se(e)).collect();
    let point = |e: &Eval| (e.epoch, value(e).unwrap());
    let n_during = during.first().and_then(|e| e.samples);
    let plus = if band.is_some() { " ± s.e." } else { "" };
    let mut curve = Series {
        label: match n_during {
            Some(n) => format!("{what}{plus} (n={n})"),
            None => format!("{what}{plus}"),
        },
        color: Some(EVAL_COLOR),
        ..Series::new("", during.iter().map(|e| point(e)).collect())
    }
    .with_marker(Marker::Dot);
    curve.band = band;
    let mut series: Vec<Series> = vec![curve]
        .into_iter()
        .filter(|s| !s.points.is_empty())
        .collect();
    if let Some(f) = with.iter().find(|e| e.last) {
        let mut last = Series {
            label: match f.samples {
                Some(n) => format!("final (n={n})"),
                None => "final".into(),
            },
            color: Some(FINAL_COLOR),
            ..Series::new("", vec![point(f)])
        }
        .with_marker(Marker::Square);
        last.band = se(f).map(|s| vec![s]);
        series.push(last);
    }
    let base = with
        .iter()
        .find(|e| !e.last && e.epoch == 0.0)
        .and_then(|e| value(e));
    (series, base)
}

fn base_line(base: Option<f64>) -> Vec<RefLine> {
    base.map(|b| RefLine::new("base model (epoch 0)", b))
        .into_iter()
        .collect()
}

/// The evaluations a guard's rollback superseded, as grey diamonds: the branch the run left.
fn rolled_back(evals: &[Eval], value: impl Fn(&Eval) -> Option<f64>) -> Vec<Series> {
    let points: Vec<(f64, f64)> = evals
        .iter()
        .filter_map(|e| Some((e.epoch, value(e)?)))
        .collect();
    if points.is_empty() {
        return Vec::new();
    }
    vec![Series {
        color: Some(ROLLED_BACK_COLOR),
        ..Series::new("rolled back (not kept)", points)
    }
    .with_marker(Marker::Diamond)]
}

/// The run's charts from the lines of its metrics.jsonl, by file name under `plots/`: the
/// reward always; Vendi score and class entropy when the evaluations measured diversity. Lines a
/// guard's rollback superseded are drawn apart, as what the run left behind.
pub fn run_charts(all: &[Value]) -> Vec<(&'static str, Chart)> {
    let keep = crate::records::current(all);
    let left: Vec<Eval> = all
        .iter()
        .zip(&keep)
        .filter(|(_, k)| !**k)
        .filter_map(|(l, _)| Eval::of(l))
        .collect();
    let lines: Vec<Value> = all
        .iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .map(|(l, _)| l.clone())
        .collect();
    let lines = &lines[..];
    let train: Vec<(f64, f64)> = lines
        .iter()
        .filter(|l| l["kind"] == "epoch")
        // Epoch e's samples come from the weights after e epochs.
        .filter_map(|l| Some((l["epoch"].as_f64()?, l["reward_mean"].as_f64()?)))
        .collect();
    let evals: Vec<Eval> = lines.iter().filter_map(Eval::of).collect();
    let n_final = evals.iter().find(|e| e.last).and_then(|e| e.samples);
    let epoch_axis = |title: String,
                      y_label: &str,
                      series: Vec<Series>,
                      ref_lines: Vec<RefLine>,
                      y_min_span: f64| Chart {
        title,
        x_label: "epoch".into(),
        y_label: y_label.into(),
        series,
        style: Style::Lines,
        ref_lines,
        y_min_span,
        ..Chart::default()
    };
    // The guards' floors (the limit of the newest check of each) and what they did.
    let guards: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "guard").collect();
    let floor = |guard: &str| -> Vec<RefLine> {
        guards
            .iter()
            .rev()
            .flat_map(|l| l["checks"].as_array().into_iter().flatten())
            .find(|c| c["guard"] == guard)
            .and_then(|c| c["limit"].as_f64())
            .map(|y| RefLine {
                color: Some(GUARD_COLOR),
                ..RefLine::new(format!("guard: {guard}"), y)
            })
            .into_iter()
            .collect()
    };
    let acted: Vec<String> = guards
        .iter()
        .filter_map(|l| {
            let epoch = l["epoch"].as_u64()?;
            match (l["action"].as_str()?, l["to_epoch"].as_u64()) {
                ("stop", _) => Some(format!("guard stopped training at epoch {epoch}")),
                ("rollback", Some(to)) => Some(format!("rolled back at {epoch} to {to}")),
                _ => None,
            }
        })
        .collect();
    let titled = |what: &str| {
        let mut t = match n_final {
            Some(n) => format!("{what}; final evaluation: {n} samples"),
            None => what.to_string(),
        };
        if !acted.is_empty() {
            t += &format!("; {}", acted.join(", "));
        }
        t
    };

    let (mut series, base) = eval_series(&evals, |e| e.reward, |e| e.reward_sem, "evaluation");
    series.extend(rolled_back(&left, |e| e.reward));
    series.insert(
        0,
        Series {
            color: Some(TRAIN_COLOR),
            ..Series::new("training samples", train)
        },
    );
    let mut charts = vec![(
        REWARD_PLOT,
        epoch_axis(
            titled("Reward (fixed-seed evaluations ± s.e.)"),
            "mean reward",
            series,
            base_line(base),
            0.0,
        ),
    )];

    let (mut series, base) = eval_series(&evals, |e| e.vendi, |_| None, "evaluation");
    if series.is_empty() {
        return charts;
    }
    series.extend(rolled_back(&left, |e| e.vendi));
    let span = |base: Option<f64>, series: &[Series]| {
        let v = base.or_else(|| series.first()?.points.first().map(|p| p.1));
        v.map_or(0.0, |v| DIVERSITY_MIN_SPAN * v.abs())
    };
    charts.push((
        DIVERSITY_PLOT,
        epoch_axis(
            titled(&format!(
                "Diversity (Vendi score of {} features)",
                evals.last().map_or("classifier", |e| e.features.as_str())
            )),
            "Vendi score",
            series.clone(),
            [base_line(base), floor("vendi_floor")].concat(),
            span(base, &series),
        ),
    ));

    let (mut series, base) = eval_series(&evals, |e| e.entropy, |e| e.entropy_se, "evaluation");
    if !series.is_empty() {
        series.extend(rolled_back(&left, |e| e.entropy));
        let mut ref_lines = [base_line(base), floor("class_entropy_floor")].concat();
        if let Some(k) = evals.iter().find_map(|e| e.classes) {
            ref_lines.push(RefLine {
                color: Some(UNIFORM_COLOR),
                ..RefLine::new(format!("all {k} classes alike (ln {k})"), (k as f64).ln())
            });
        }
        charts.push((
            ENTROPY_PLOT,
            epoch_axis(
                titled("Class coverage (entropy of the classifier's labels)"),
                "class entropy (nats)",
                series.clone(),
                ref_lines,
                span(base, &series),
            ),
        ));
    }
    charts
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval(kind: &str, epoch: u64, samples: u64, reward: f64, sem: f64, hist: &[u64]) -> Value {
        let entropy = {
            let n: u64 = hist.iter().sum();
            hist.iter()
                .filter(|&&c| c > 0)
                .map(|&c| c as f64 / n as f64)
                .map(|p| -p * p.ln())
                .sum::<f64>()
        };
        json!({"kind": kind, "report": {
            "epoch": epoch, "samples": samples, "reward_mean": reward, "reward_sem": sem,
            "reward_components": {}, "eval_s": 1.0,
            "diversity": {"samples": samples, "vendi": 10.0 + reward, "class_entropy": entropy,
                "classes_covered": 3, "class_histogram": hist, "is_like": 2.0}
        }})
    }

    fn epoch(e: u64, reward: f64) -> Value {
        json!({"kind": "epoch", "epoch": e, "reward_mean": reward, "unet_evals": 10})
    }

    /// A run of 4 epochs evaluated every 2 (128 samples) and finally (256 samples).
    fn metrics() -> Vec<Value> {
        vec![
            eval("eval", 0, 128, -1.0, 0.1, &[40, 40, 48]),
            epoch(0, -0.9),
            epoch(1, -0.7),
            eval("eval", 2, 128, -0.5, 0.1, &[60, 30, 38]),
            epoch(2, -0.4),
            epoch(3, -0.3),
            json!({"kind": "note", "text": "ignored"}),
            eval("final", 4, 256, -0.2, 0.05, &[150, 50, 56]),
        ]
    }

    fn chart<'a>(charts: &'a [(&str, Chart)], name: &str) -> &'a Chart {
        &charts.iter().find(|(n, _)| *n == name).unwrap().1
    }

    #[test]
    fn the_reward_plot_draws_every_evaluation_the_final_one_and_the_base_line() {
        let charts = run_charts(&metrics());
        let names: Vec<&str> = charts.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, [REWARD_PLOT, DIVERSITY_PLOT, ENTROPY_PLOT]);
        let c = chart(&charts, REWARD_PLOT);
        let [train, curve, last] = &c.series[..] else {
            panic!("{:?}", c.series)
        };
        assert_eq!(
            train.points,
            [(0.0, -0.9), (1.0, -0.7), (2.0, -0.4), (3.0, -0.3)]
        );
        assert_eq!((train.marker, &train.band), (None, &None));
        assert_eq!(curve.points, [(0.0, -1.0), (2.0, -0.5)], "during training");
        assert_eq!(curve.band, Some(vec![0.1, 0.1]), "± reward_sem");
        assert_eq!(curve.marker, Some(Marker::Dot));
        assert_eq!(curve.label, "evaluation ± s.e. (n=128)");
        assert_eq!(last.points, [(4.0, -0.2)], "the final evaluation");
        assert_eq!(last.band, Some(vec![0.05]));
        assert_eq!(last.marker, Some(Marker::Square));
        assert_eq!(last.label, "final (n=256)");
        assert_eq!(c.ref_lines, [RefLine::new("base model (epoch 0)", -1.0)]);
        assert!(
            c.title.contains("final evaluation: 256 samples"),
            "{}",
            c.title
        );
        crate::chart::render_chart(c).unwrap();
    }

    #[test]
    fn the_diversity_plots_have_their_base_line_bands_where_known_and_a_sensible_axis() {
        let charts = run_charts(&metrics());
        let v = chart(&charts, DIVERSITY_PLOT);
        assert_eq!(v.series[0].points, [(0.0, 9.0), (2.0, 9.5)]);
        assert_eq!(
            v.series[0].band, None,
            "the report has no Vendi uncertainty"
        );
        assert_eq!(v.series[0].label, "evaluation (n=128)");
        assert_eq!(v.series[1].points, [(4.0, 9.8)]);
        assert_eq!(v.ref_lines[0].y, 9.0);
        assert!((v.y_min_span - DIVERSITY_MIN_SPAN * 9.0).abs() < 1e-12);

        let h = chart(&charts, ENTROPY_PLOT);
        let se = h.series[0].band.as_ref().expect("entropy ± s.e.");
        assert_eq!(se.len(), 2);
        assert_eq!(se[1], entropy_standard_error(&[60, 30, 38]).unwrap());
        assert!(se.iter().all(|s| *s > 0.0 && *s < 0.1), "{se:?}");
        let last = entropy_standard_error(&[150, 50, 56]).unwrap();
        assert_eq!(h.series[1].band, Some(vec![last]));
        let base = h.series[0].points[0].1;
        assert_eq!(h.ref_lines[0], RefLine::new("base model (epoch 0)", base));
        assert_eq!(
            h.ref_lines[1].y,
            3f64.ln(),
            "the most a 3-class histogram can hold"
        );
        assert!(h.ref_lines[1].label.contains("ln 3"));
        for c in [v, h] {
            crate::chart::render_chart(c).unwrap();
        }
    }

    #[test]
    fn every_character_of_the_plots_text_has_a_glyph() {
        for (name, c) in run_charts(&metrics()) {
            let texts = [&c.title, &c.x_label, &c.y_label]
                .into_iter()
                .chain(c.series.iter().map(|s| &s.label))
                .chain(c.ref_lines.iter().map(|r| &r.label));
            for t in texts {
                let bad: String = t
                    .chars()
                    .filter(|&ch| !crate::chart::has_glyph(ch))
                    .collect();
                assert!(bad.is_empty(), "{name}: {t:?} has {bad:?}");
            }
        }
    }

    #[test]
    fn a_run_before_its_first_epoch_and_one_without_diversity_still_plot() {
        let base_only = run_charts(&metrics()[..1]);
        assert_eq!(base_only.len(), 3);
        let c = chart(&base_only, REWARD_PLOT);
        assert_eq!(
            c.series.len(),
            2,
            "training (empty) and the base evaluation"
        );
        assert!(c.series[0].points.is_empty());
        assert_eq!(c.ref_lines[0].y, -1.0);
        crate::chart::render_chart(c).unwrap();

        let mut plain = metrics();
        for l in &mut plain {
            if let Some(r) = l.get_mut("report") {
                r["diversity"] = Value::Null;
                r.as_object_mut().unwrap().remove("reward_sem");
            }
        }
        let charts = run_charts(&plain);
        assert_eq!(charts.len(), 1, "no diversity, no diversity plots");
        let curve = &charts[0].1.series[1];
        assert_eq!(curve.band, None, "no reward_sem, no band");
        assert_eq!(curve.label, "evaluation (n=128)");
    }

    #[test]
    fn a_rollback_draws_the_left_branch_apart_and_the_floor() {
        let mut lines = metrics();
        lines.pop(); // the final evaluation, written again below
                     // Epoch 4 fails the floor and the run goes back to epoch 2: its evaluation and the
                     // epochs after 2 are the branch it left; epochs 3–4 are trained again.
        lines.push(eval("eval", 4, 8, -3.0, 0.1, &[8, 0, 0]));
        lines.push(
            json!({"kind": "guard", "epoch": 4, "action": "rollback", "to_epoch": 2,
            "failing": ["vendi_floor"], "lr_scale": 0.5,
            "checks": [{"guard": "vendi_floor", "value": 7.0, "limit": 8.5, "passed": false}]}),
        );
        lines.push(epoch(2, -1.0));
        lines.push(epoch(3, -1.0));
        lines.push(eval("eval", 4, 8, -1.0, 0.1, &[3, 3, 2]));
        lines.push(eval("final", 4, 256, -0.9, 0.05, &[90, 90, 76]));
        let charts = run_charts(&lines);
        let v = chart(&charts, DIVERSITY_PLOT);
        let left = v
            .series
            .iter()
            .find(|s| s.label == "rolled back (not kept)")
            .expect("the left branch");
        assert_eq!(left.points, [(4.0, 7.0)]);
        assert_eq!(left.marker, Some(Marker::Diamond));
        let kept = &v.series[0];
        assert!(kept.points.contains(&(4.0, 9.0)), "{:?}", kept.points);
        assert!(!kept.points.contains(&(4.0, 7.0)));
        assert!(v
            .ref_lines
            .iter()
            .any(|r| r.label == "guard: vendi_floor" && r.y == 8.5));
        assert!(v.title.contains("rolled back at 4 to 2"), "{}", v.title);
        // Without a rollback there is no such series.
        let plain = run_charts(&metrics());
        assert!(chart(&plain, DIVERSITY_PLOT)
            .series
            .iter()
            .all(|s| s.label != "rolled back (not kept)"));
    }

    #[test]
    fn entropy_standard_error_follows_the_delta_method() {
        assert_eq!(entropy_standard_error(&[]), None);
        assert_eq!(entropy_standard_error(&[0, 0]), None);
        // Uniform: no first-order spread (up to rounding in Σ p ln² p − H²).
        assert!(entropy_standard_error(&[5, 5, 5]).unwrap() < 1e-6);
        assert_eq!(entropy_standard_error(&[7, 0]), Some(0.0));
        // Two classes, p = 0.25: Var = p(1-p) ln²(p/(1-p)) / n.
        let (p, n) = (0.25f64, 400.0);
        let want = (p * (1.0 - p) * (p / (1.0 - p)).ln().powi(2) / n).sqrt();
        let got = entropy_standard_error(&[100, 300]).unwrap();
        assert!((got - want).abs() < 1e-12, "{got} {want}");
        let quarter = entropy_standard_error(&[400, 1200]).unwrap();
        assert!(
            (quarter - want / 2.0).abs() < 1e-12,
            "4× the samples, half the error"
        );
    }

    #[test]
    fn a_committed_run_draws_its_three_plots_with_the_final_evaluation() {
        let run = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../experiments/hrf-vs-ddpo/equal-unet-evals/aesthetic/ddpo-kl-s2");
        let dir = std::env::temp_dir().join(format!("hrf-run-plots-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("plots")).unwrap();
        std::fs::copy(
            run.join(crate::records::METRICS_FILE),
            dir.join(crate::records::METRICS_FILE),
        )
        .unwrap();
        write_run_plots(&dir).unwrap();
        for name in [REWARD_PLOT, DIVERSITY_PLOT, ENTROPY_PLOT] {
            let png = std::fs::read(dir.join("plots").join(name)).unwrap();
            // The PNG signature, then the IHDR chunk: width and height, big-endian.
            assert_eq!(&png[1..4], b"PNG", "{name}");
            let size = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
            assert_eq!((size(16), size(20)), (800, 500), "{name}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
        let text = std::fs::read_to_string(run.join(crate::records::METRICS_FILE)).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let charts = run_charts(&lines);
        let reward = chart(&charts, REWARD_PLOT);
        // Evaluated at epochs 0, 4 and 8 on 128 samples, finally at 9 on 1000.
        let xs: Vec<f64> = reward.series[1].points.iter().map(|p| p.0).collect();
        assert_eq!(xs, [0.0, 4.0, 8.0]);
        assert_eq!(reward.series[2].points[0].0, 9.0);
        assert_eq!(reward.series[2].label, "final (n=1000)");
        assert!((reward.ref_lines[0].y - -0.17660341170267202).abs() < 1e-15);
    }
}
