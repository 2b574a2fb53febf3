//! Where a chart's data area lies and what its axes span: the data's range (bands, markers
//! and reference lines included) padded, a minimum span for the y axis, the ticks and their
//! labels, and the legend's rows.

use super::font::{fit_text, text_width, CELL};
use super::spec::{finite, Chart, HEIGHT, TICK, WIDTH};
use super::ticks::{tick_labels, ticks_within, widened};

/// Fractions of the data's x and y ranges left empty on each side, so that markers, error bars
/// and the extreme points stay off the frame.
const X_PAD: f64 = 0.03;
const Y_PAD: f64 = 0.06;

/// One row of the legend.
pub(super) enum LegendKey {
    Series(usize),
    Ref(usize),
}

/// Where the data area lies (pixel columns `left..=right`, rows `top..=bottom`) and its axes.
pub(super) struct Layout {
    pub(super) left: i32,
    pub(super) right: i32,
    pub(super) top: i32,
    pub(super) bottom: i32,
    pub(super) x_range: (f64, f64),
    pub(super) y_range: (f64, f64),
    pub(super) x_ticks: Vec<f64>,
    pub(super) y_ticks: Vec<f64>,
    pub(super) x_labels: Vec<String>,
    pub(super) y_labels: Vec<String>,
    pub(super) legend: Vec<(LegendKey, String)>,
}

impl Layout {
    pub(super) fn px(&self, x: f64) -> i32 {
        let (a, b) = self.x_range;
        let f = ((x - a) / (b - a)).clamp(-1.0, 2.0);
        self.left + (f * (self.right - self.left) as f64).round() as i32
    }

    pub(super) fn py(&self, y: f64) -> i32 {
        let (a, b) = self.y_range;
        let f = ((y - a) / (b - a)).clamp(-1.0, 2.0);
        self.bottom - (f * (self.bottom - self.top) as f64).round() as i32
    }
}

const LEGEND_CHARS: usize = 28;

/// The y axis's range: `lo..hi` (the data, bands and reference lines) widened to `min_span`
/// about its middle, then padded by `Y_PAD` of its span on each side.
fn y_axis_range(lo: f64, hi: f64, min_span: f64) -> (f64, f64) {
    let (mut lo, mut hi) = widened(lo, hi);
    if min_span.is_finite() && hi - lo < min_span.abs() {
        let mid = (lo + hi) / 2.0;
        (lo, hi) = (mid - min_span.abs() / 2.0, mid + min_span.abs() / 2.0);
    }
    let pad = (hi - lo) * Y_PAD;
    (lo - pad, hi + pad)
}

pub(super) fn layout(chart: &Chart) -> Result<Layout, String> {
    let mut xs = (f64::INFINITY, f64::NEG_INFINITY);
    let mut ys = xs;
    let mut grow = |(x, y): (f64, f64)| {
        xs = (xs.0.min(x), xs.1.max(x));
        ys = (ys.0.min(y), ys.1.max(y));
    };
    let mut any = false;
    for s in &chart.series {
        if let Some(band) = &s.band {
            if band.len() != s.points.len() {
                return Err(format!(
                    "chart {:?}: series {:?} has {} band values for {} points",
                    chart.title,
                    s.label,
                    band.len(),
                    s.points.len()
                ));
            }
        }
        for (i, &p) in s.points.iter().enumerate() {
            if !finite(p) {
                continue;
            }
            any = true;
            grow(p);
            if let Some(b) = s
                .band
                .as_ref()
                .map(|b| b[i].abs())
                .filter(|b| b.is_finite())
            {
                grow((p.0, p.1 - b));
                grow((p.0, p.1 + b));
            }
        }
    }
    if !any {
        return Err(format!(
            "chart {:?}: no series has a point with finite x and y",
            chart.title
        ));
    }
    for m in &chart.markers {
        if finite((m.0, m.1)) {
            grow((m.0, m.1));
        }
    }
    for r in chart.ref_lines.iter().filter(|r| r.y.is_finite()) {
        ys = (ys.0.min(r.y), ys.1.max(r.y));
    }
    let x_range = {
        let (lo, hi) = widened(xs.0, xs.1);
        let pad = (hi - lo) * X_PAD;
        (lo - pad, hi + pad)
    };
    let x_ticks = ticks_within(x_range.0, x_range.1);
    let y_range = y_axis_range(ys.0, ys.1, chart.y_min_span);
    let y_ticks = ticks_within(y_range.0, y_range.1);
    let (x_labels, y_labels) = (tick_labels(&x_ticks), tick_labels(&y_ticks));
    let fit = |l: &str| fit_text(l, LEGEND_CHARS as i32 * CELL);
    let legend: Vec<(LegendKey, String)> = chart
        .series
        .iter()
        .enumerate()
        .map(|(i, s)| (LegendKey::Series(i), fit(&s.label)))
        .chain(
            chart
                .ref_lines
                .iter()
                .enumerate()
                .filter(|(_, r)| r.y.is_finite())
                .map(|(i, r)| (LegendKey::Ref(i), fit(&r.label))),
        )
        .filter(|(_, l)| !l.is_empty())
        .collect();
    let y_label_w = y_labels.iter().map(|l| text_width(l, 1)).max().unwrap_or(0);
    let legend_w = legend
        .iter()
        .map(|(_, l)| text_width(l, 1))
        .max()
        .unwrap_or(0);
    let left = 12 + y_label_w + 4 + TICK;
    let right = WIDTH as i32 - 1 - (if legend_w > 0 { legend_w + 48 } else { 24 });
    let top = 56;
    let bottom = HEIGHT as i32 - 1 - 46;
    Ok(Layout {
        left,
        right,
        top,
        bottom,
        x_range,
        y_range,
        x_ticks,
        y_ticks,
        x_labels,
        y_labels,
        legend,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{chart_of, diagonal, has_color_near};
    use super::*;
    use crate::chart::{render_chart, Series, Style};

    #[test]
    fn points_land_near_the_corners_of_the_data_area() {
        for style in [Style::Lines, Style::Points] {
            let chart = diagonal(style);
            let lay = layout(&chart).unwrap();
            assert_eq!(lay.x_range, (-X_PAD, 1.0 + X_PAD), "room either side");
            assert_eq!(lay.y_range, (-Y_PAD, 1.0 + Y_PAD), "and above and below");
            assert_eq!(lay.x_ticks, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
            let img = render_chart(&chart).unwrap();
            let green = [10, 200, 30];
            let (x0, x1, y0, y1) = (lay.px(0.0), lay.px(1.0), lay.py(0.0), lay.py(1.0));
            assert!(x0 - lay.left >= 10 && lay.right - x1 >= 10, "{x0} {x1}");
            assert!(lay.bottom - y0 >= 15 && y1 - lay.top >= 15, "{y0} {y1}");
            assert!(has_color_near(&img, x0, y0, green));
            assert!(has_color_near(&img, x1, y1, green));
            assert!(!has_color_near(&img, x0 + 10, y1 + 10, green));
            assert!(!has_color_near(&img, x1 - 10, y0 - 10, green));
            let (mx, my) = ((lay.left + lay.right) / 2, (lay.top + lay.bottom) / 2);
            assert_eq!(has_color_near(&img, mx, my, green), style == Style::Lines);
        }
    }

    #[test]
    fn a_minimum_span_keeps_a_tiny_spread_small() {
        let mut chart = chart_of(vec![Series::new(
            "class entropy",
            vec![(0.0, 2.20), (1.0, 2.18), (2.0, 2.23)],
        )]);
        let (lo, hi) = layout(&chart).unwrap().y_range;
        assert!(lo < 2.18 && hi > 2.23 && hi - lo < 0.07, "{lo}..{hi}");
        chart.y_min_span = 0.5;
        let lay = layout(&chart).unwrap();
        let (lo, hi) = lay.y_range;
        assert!(hi - lo >= 0.5 && lo < 2.18 && hi > 2.23, "{lo}..{hi}");
        assert!(
            ((lo + hi) / 2.0 - 2.205).abs() < 1e-9,
            "about the data's middle"
        );
        let spread = lay.py(2.18) - lay.py(2.23);
        assert!(spread < (lay.bottom - lay.top) / 8, "{spread} pixels");
    }
}
