//! The frontier plots: reward against Vendi ÷ base and against class entropy ÷ base, one colour
//! per group, each seed's curve as a light line and the group's mean curve (the mean over seeds
//! at each evaluation index) dark with dots, the base model marked at (its reward, 1) and R_mid
//! as a vertical line.

use super::{Frontier, FrontierPoint};
use crate::chart::{Chart, Marker, RefLine, Series, Style, PALETTE, REF_COLOR};
use crate::frontier::VENDI_FLOOR;

type Ratio = fn(&FrontierPoint) -> Option<f64>;

/// A colour lightened towards white: the seeds' lines under the mean.
fn light(c: [u8; 3]) -> [u8; 3] {
    c.map(|v| (v as f64 * 0.4 + 255.0 * 0.6).round() as u8)
}

fn frontier_chart(f: &Frontier, title: &str, y_label: &str, get: Ratio, floor: bool) -> Chart {
    let mut series = Vec::new();
    let mut light_series = Vec::new();
    let (mut y_lo, mut y_hi) = (1.0f64, 1.0f64);
    for (i, m) in f.methods.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let curves: Vec<Vec<(f64, f64)>> = m.curves.iter().map(|s| s.diversity(get)).collect();
        for c in &curves {
            for &(_, y) in c {
                (y_lo, y_hi) = (y_lo.min(y), y_hi.max(y));
            }
            light_series.push(Series {
                color: Some(light(color)),
                ..Series::new("", c.clone())
            });
        }
        let shortest = curves.iter().map(Vec::len).min().unwrap_or(0);
        let mean: Vec<(f64, f64)> = (0..shortest)
            .map(|k| {
                let n = curves.len() as f64;
                (
                    curves.iter().map(|c| c[k].0).sum::<f64>() / n,
                    curves.iter().map(|c| c[k].1).sum::<f64>() / n,
                )
            })
            .collect();
        let label = match (curves.len(), m.reference) {
            (1, false) => m.label.clone(),
            (1, true) => format!("{} (reference)", m.label),
            (n, false) => format!("{} ({n} seeds)", m.label),
            (n, true) => format!("{} (reference, {n} seeds)", m.label),
        };
        series.push(Series {
            color: Some(color),
            ..Series::new(label, mean).with_marker(Marker::Dot)
        });
    }
    // Seeds first, so that the means are drawn over them.
    light_series.append(&mut series);
    let mut series = light_series;
    if let Some(r) = f.r_mid {
        let pad = 0.05 * (y_hi - y_lo).max(0.05);
        series.push(Series {
            color: Some(REF_COLOR),
            ..Series::new(
                format!("R_mid = {r:.4}"),
                vec![(r, y_lo - pad), (r, y_hi + pad)],
            )
        });
    }
    let markers: Vec<(f64, f64, String)> = f
        .base_reward
        .map(|b| (b, 1.0, "base model".to_string()))
        .into_iter()
        .collect();
    Chart {
        title: title.into(),
        x_label: "mean reward".into(),
        y_label: y_label.into(),
        series,
        style: Style::Lines,
        markers,
        ref_lines: match floor {
            true => vec![RefLine::new(
                format!("Vendi floor ({:.0}% of base)", VENDI_FLOOR * 100.0),
                VENDI_FLOOR,
            )],
            false => vec![],
        },
        y_min_span: 0.25,
    }
}

/// The frontier plots, by file name: frontier-vendi.png and frontier-class-entropy.png (none
/// when no run has diversity numbers).
pub fn frontier_charts(f: &Frontier) -> Vec<(&'static str, Chart)> {
    let any = |get: Ratio| {
        f.methods
            .iter()
            .flat_map(|m| &m.curves)
            .any(|s| !s.diversity(get).is_empty())
    };
    let mut charts = Vec::new();
    if any(|p| p.vendi_vs_base) {
        charts.push((
            "frontier-vendi.png",
            frontier_chart(
                f,
                "Reward against Vendi ÷ base (light: seeds; dark: mean over seeds)",
                "Vendi ÷ base",
                |p| p.vendi_vs_base,
                true,
            ),
        ));
    }
    if any(|p| p.entropy_vs_base) {
        charts.push((
            "frontier-class-entropy.png",
            frontier_chart(
                f,
                "Reward against class entropy ÷ base (light: seeds; dark: mean)",
                "class entropy ÷ base",
                |p| p.entropy_vs_base,
                false,
            ),
        ));
    }
    charts
}
