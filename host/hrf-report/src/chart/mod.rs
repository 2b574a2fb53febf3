//! Line and scatter charts as PNG files (training curves against epoch, reward–diversity
//! scatters), drawn pixel by pixel: "nice" axis ticks, shaded ± bands with error bars, point
//! markers, dashed horizontal reference lines (e.g. the base model), labelled special points, a
//! legend, and text in a 5×7 bitmap font embedded here (ASCII 32–126 and the few symbols and
//! Greek letters in `EXTRA`, such as ±, ×, ÷, ≥, –, ·, ² and σ; any other character draws as a
//! box, see `has_glyph`).
//!
//! This module holds `render_chart` and `save_chart`, and the legend; `spec` the chart's types
//! and shared colours, `layout` places the data area and its axes, `ticks` picks the axes'
//! ticks and labels, `draw` has the drawing primitives over `pixels`, `font` the bitmap font and
//! text, `panels` lays images side by side, `stack` puts charts one above another;
//! hrf-data writes the canvas as a PNG, as it writes sample grids.

use std::path::Path;

use image::{Rgb, RgbImage};

mod draw;
mod font;
mod layout;
mod panels;
mod pixels;
mod spec;
mod stack;
mod ticks;

use draw::{
    band_fill, blend, draw_band, draw_dashed, draw_dot, draw_error_bar, draw_marker, draw_polyline,
};
pub use font::has_glyph;
use font::{draw_text, fit_text, text_width};
use hrf_data::grid::write_canvas;
use layout::{layout, Layout, LegendKey};
pub use panels::save_panels;
use pixels::fill_rect;
use spec::{finite, series_color, GRID, TEXT, TICK, WHITE};
pub use spec::{
    Chart, Marker, RefLine, Series, Style, BAND_ALPHA, HEIGHT, PALETTE, REF_COLOR, WIDTH,
};
pub use stack::save_chart_stack;
pub use ticks::{nice_ticks, tick_labels, ticks_within};

/// Renders `chart` and writes it as a PNG via a temporary file in the same folder, then renames it.
pub fn save_chart(chart: &Chart, path: &Path) -> Result<(), String> {
    let canvas = render_chart(chart)?;
    write_canvas(&canvas, path)
}

/// Tests: every text of `chart` has glyphs in the chart font, and the chart renders.
#[cfg(test)]
pub(crate) fn assert_drawable(name: &str, chart: &Chart) {
    let texts = [&chart.title, &chart.x_label, &chart.y_label]
        .into_iter()
        .chain(chart.series.iter().map(|s| &s.label))
        .chain(chart.ref_lines.iter().map(|r| &r.label));
    for t in texts {
        assert!(t.chars().all(has_glyph), "{name}: {t:?}");
    }
    render_chart(chart).unwrap();
}

/// Renders `chart` as a `WIDTH`×`HEIGHT` RGB image.
pub fn render_chart(chart: &Chart) -> Result<RgbImage, String> {
    let lay = layout(chart)?;
    let mut img = RgbImage::from_pixel(WIDTH, HEIGHT, Rgb(WHITE));

    // Grid lines at the ticks.
    for &t in &lay.x_ticks {
        let x = lay.px(t);
        fill_rect(&mut img, x, lay.top, x + 1, lay.bottom + 1, GRID);
    }
    for &t in &lay.y_ticks {
        let y = lay.py(t);
        fill_rect(&mut img, lay.left, y, lay.right + 1, y + 1, GRID);
    }

    // Bands under everything drawn in colour.
    if chart.style == Style::Lines {
        for (i, s) in chart.series.iter().enumerate() {
            if let Some(band) = &s.band {
                draw_band(&mut img, &lay, &s.points, band, series_color(s, i));
            }
        }
    }

    // Frame, tick marks and tick labels.
    let frame = [40, 40, 40];
    fill_rect(
        &mut img,
        lay.left,
        lay.top,
        lay.right + 1,
        lay.top + 1,
        frame,
    );
    fill_rect(
        &mut img,
        lay.left,
        lay.bottom,
        lay.right + 1,
        lay.bottom + 1,
        frame,
    );
    fill_rect(
        &mut img,
        lay.left,
        lay.top,
        lay.left + 1,
        lay.bottom + 1,
        frame,
    );
    fill_rect(
        &mut img,
        lay.right,
        lay.top,
        lay.right + 1,
        lay.bottom + 1,
        frame,
    );
    for (t, label) in lay.x_ticks.iter().zip(&lay.x_labels) {
        let x = lay.px(*t);
        fill_rect(
            &mut img,
            x,
            lay.bottom + 1,
            x + 1,
            lay.bottom + 1 + TICK,
            frame,
        );
        let w = text_width(label, 1);
        draw_text(&mut img, x - w / 2, lay.bottom + TICK + 5, label, 1, TEXT);
    }
    for (t, label) in lay.y_ticks.iter().zip(&lay.y_labels) {
        let y = lay.py(*t);
        fill_rect(&mut img, lay.left - TICK, y, lay.left, y + 1, frame);
        let w = text_width(label, 1);
        draw_text(&mut img, lay.left - TICK - 4 - w, y - 3, label, 1, TEXT);
    }

    // Reference lines, under the data.
    for r in chart.ref_lines.iter().filter(|r| r.y.is_finite()) {
        let y = lay.py(r.y);
        draw_dashed(
            &mut img,
            lay.left + 1,
            lay.right - 1,
            y,
            r.color.unwrap_or(REF_COLOR),
        );
    }

    // The data: lines, then error bars, then the points on top.
    for (i, s) in chart.series.iter().enumerate() {
        let color = series_color(s, i);
        let finite_points = s.points.iter().filter(|p| finite(**p)).count();
        if chart.style == Style::Lines {
            draw_polyline(&mut img, &lay, &s.points, color, s.marker.is_none());
        }
        let bars = chart.style == Style::Points || s.marker.is_some() || finite_points == 1;
        if let (Some(band), true) = (&s.band, bars) {
            let bar_color = match chart.style {
                Style::Lines => color,
                Style::Points => blend(WHITE, color, 0.6),
            };
            for (&(x, y), &b) in s.points.iter().zip(band) {
                if finite((x, y)) && b.is_finite() && b != 0.0 {
                    draw_error_bar(&mut img, &lay, x, y, b.abs(), bar_color);
                }
            }
        }
        for &(x, y) in s.points.iter().filter(|p| finite(**p)) {
            let (cx, cy) = (lay.px(x), lay.py(y));
            match (s.marker, chart.style) {
                (Some(m), _) => draw_marker(&mut img, cx, cy, m, color),
                (None, Style::Points) => draw_dot(&mut img, cx, cy, color),
                (None, Style::Lines) => {}
            }
        }
    }

    // Markers: a black cross, its text beside it, kept inside the plot area where it fits.
    for (x, y, text) in chart.markers.iter().filter(|m| finite((m.0, m.1))) {
        let (cx, cy) = (lay.px(*x), lay.py(*y));
        for d in -5..=5 {
            fill_rect(&mut img, cx + d, cy + d, cx + d + 2, cy + d + 1, [0, 0, 0]);
            fill_rect(&mut img, cx + d, cy - d, cx + d + 2, cy - d + 1, [0, 0, 0]);
        }
        let w = text_width(text, 1);
        let tx = if cx + 9 + w <= lay.right - 2 {
            cx + 9
        } else {
            cx - 8 - w
        };
        let ty = if cy - 15 >= lay.top + 2 {
            cy - 15
        } else {
            cy + 8
        };
        fill_rect(&mut img, tx - 1, ty - 1, tx + w + 1, ty + 9, WHITE);
        draw_text(&mut img, tx, ty, text, 1, [0, 0, 0]);
    }

    // Title, axis labels, legend.
    let (title_scale, title) = if text_width(&chart.title, 2) <= WIDTH as i32 - 20 {
        (2, chart.title.clone())
    } else {
        (1, fit_text(&chart.title, WIDTH as i32 - 20))
    };
    let tw = text_width(&title, title_scale);
    draw_text(
        &mut img,
        (WIDTH as i32 - tw) / 2,
        10,
        &title,
        title_scale,
        TEXT,
    );
    let x_label = fit_text(&chart.x_label, lay.right - lay.left);
    let xw = text_width(&x_label, 1);
    let x_label_y = lay.bottom + TICK + 5 + 8 + 10;
    draw_text(
        &mut img,
        (lay.left + lay.right - xw) / 2,
        x_label_y,
        &x_label,
        1,
        TEXT,
    );
    let y_label = fit_text(&chart.y_label, lay.right - 10);
    draw_text(&mut img, 10, lay.top - 16, &y_label, 1, TEXT);
    draw_legend(&mut img, &lay, chart);
    Ok(img)
}

fn draw_legend(img: &mut RgbImage, lay: &Layout, chart: &Chart) {
    if lay.legend.is_empty() {
        return;
    }
    let row = 14;
    let w = lay
        .legend
        .iter()
        .map(|(_, l)| text_width(l, 1))
        .max()
        .unwrap()
        + 34;
    let (x0, y0) = (lay.right + 12, lay.top);
    let h = (lay.legend.len() as i32 * row + 8).min(lay.bottom - lay.top);
    fill_rect(img, x0, y0, x0 + w, y0 + h, [200, 200, 200]);
    fill_rect(img, x0 + 1, y0 + 1, x0 + w - 1, y0 + h - 1, WHITE);
    for (n, (key, label)) in lay.legend.iter().enumerate() {
        let y = y0 + 5 + n as i32 * row;
        if y + row > y0 + h {
            break;
        }
        match *key {
            LegendKey::Series(i) => {
                let s = &chart.series[i];
                let color = series_color(s, i);
                match chart.style {
                    Style::Lines => {
                        if s.band.is_some() {
                            fill_rect(img, x0 + 6, y - 1, x0 + 24, y + 9, band_fill(color));
                        }
                        // A one-point series draws no line, so its key shows none either.
                        if s.points.iter().filter(|p| finite(**p)).count() != 1
                            || s.marker.is_none()
                        {
                            fill_rect(img, x0 + 6, y + 3, x0 + 24, y + 5, color);
                        }
                    }
                    Style::Points => {}
                }
                match (s.marker, chart.style) {
                    (Some(m), _) => draw_marker(img, x0 + 15, y + 4, m, color),
                    (None, Style::Points) => draw_dot(img, x0 + 15, y + 4, color),
                    (None, Style::Lines) => {}
                }
            }
            LegendKey::Ref(i) => {
                let color = chart.ref_lines[i].color.unwrap_or(REF_COLOR);
                draw_dashed(img, x0 + 6, x0 + 23, y + 3, color);
            }
        }
        draw_text(img, x0 + 28, y, label, 1, TEXT);
    }
}

#[cfg(test)]
mod tests {
    use super::spec::DASH;
    use super::*;

    pub(super) fn tmp_png(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("hrf-plot-{name}-{}.png", std::process::id()))
    }

    pub(super) fn diagonal(style: Style) -> Chart {
        Chart {
            title: "Reward".into(),
            x_label: "epoch".into(),
            y_label: "mean reward".into(),
            series: vec![Series {
                label: "ddpo".into(),
                points: vec![(0.0, 0.0), (f64::NAN, 3.0), (1.0, 1.0)],
                color: Some([10, 200, 30]),
                ..Series::default()
            }],
            style,
            ..Chart::default()
        }
    }

    pub(super) fn has_color_near(img: &RgbImage, x: i32, y: i32, color: [u8; 3]) -> bool {
        (-2..=2).any(|dy| {
            (-2..=2).any(|dx| {
                let (px, py) = ((x + dx) as u32, (y + dy) as u32);
                img.get_pixel(px, py).0 == color
            })
        })
    }

    pub(super) fn chart_of(series: Vec<Series>) -> Chart {
        Chart {
            title: "t".into(),
            series,
            ..Chart::default()
        }
    }

    #[test]
    fn chart_is_written_as_a_png_of_the_expected_size_with_the_series_colour() {
        let path = tmp_png("size");
        let mut chart = diagonal(Style::Lines);
        chart.series[0].band = Some(vec![0.1, 0.1, 0.2]);
        chart.series.push(Series::new("other", vec![(0.5, 0.25)]));
        chart.markers.push((0.2, 0.8, "base model".into()));
        save_chart(&chart, &path).unwrap();
        assert!(!path.with_extension("png.tmp").exists());
        let back = image::open(&path).unwrap().into_rgb8();
        assert_eq!(back.dimensions(), (WIDTH, HEIGHT));
        let count = |c: [u8; 3]| back.pixels().filter(|p| p.0 == c).count();
        assert!(count([10, 200, 30]) > 100, "series colour drawn");
        assert!(count(PALETTE[1]) > 5, "the second series takes the palette");
        assert!(count([0, 0, 0]) > 20, "the marker's cross");
        assert_eq!(back.get_pixel(0, 0).0, WHITE);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn degenerate_inputs_draw_or_error() {
        let mut chart = diagonal(Style::Lines);
        chart.series[0].points = vec![(3.0, 7.0)];
        let img = render_chart(&chart).unwrap();
        assert!(
            img.pixels().any(|p| p.0 == [10, 200, 30]),
            "a single point shows"
        );
        chart.series[0].points = vec![(0.0, 2.0), (1.0, 2.0), (2.0, 2.0)];
        render_chart(&chart).unwrap();

        chart.series[0].points = vec![(f64::NAN, 1.0), (0.0, f64::INFINITY)];
        let e = render_chart(&chart).unwrap_err();
        assert!(e.contains("no series has a point with finite"), "{e}");
        chart.series.clear();
        let path = tmp_png("empty");
        assert!(save_chart(&chart, &path).is_err());
        assert!(!path.exists());
        chart.series.push(Series {
            band: Some(vec![1.0]),
            ..Series::new("x", vec![(0.0, 1.0), (1.0, 2.0)])
        });
        assert!(render_chart(&chart).unwrap_err().contains("band"));
    }

    #[test]
    fn a_reference_line_spans_the_plot_is_on_the_axis_and_in_the_legend() {
        let mut chart = diagonal(Style::Lines);
        chart.ref_lines.push(RefLine::new("base model", 5.0));
        let lay = layout(&chart).unwrap();
        assert!(
            lay.y_range.1 > 5.0 && lay.y_range.0 < 0.0,
            "{:?}",
            lay.y_range
        );
        let img = render_chart(&chart).unwrap();
        let y = lay.py(5.0) as u32;
        let row: Vec<i32> = (0..WIDTH as i32)
            .filter(|&x| img.get_pixel(x as u32, y).0 == REF_COLOR)
            .collect();
        let inside: Vec<i32> = row
            .iter()
            .copied()
            .filter(|&x| x > lay.left && x < lay.right)
            .collect();
        let width = lay.right - lay.left - 1;
        assert!(
            inside.len() as i32 * 10 >= width * 55 / 10,
            "dashed, mostly drawn: {}",
            inside.len()
        );
        assert!(
            inside[0] <= lay.left + 1 + DASH.0,
            "starts at the left edge"
        );
        assert!(
            *inside.last().unwrap() >= lay.right - 1 - DASH.0 - DASH.1,
            "reaches the right edge"
        );
        assert!(
            !row.iter().any(|&x| x < lay.left),
            "nothing left of the plot"
        );
        assert_eq!(
            img.get_pixel(inside[0] as u32, y + 1).0,
            REF_COLOR,
            "2 pixels thick"
        );
        // Its legend entry: a dashed key right of the plot.
        let legend_ref = img
            .enumerate_pixels()
            .filter(|(x, _, p)| *x as i32 > lay.right + 12 && p.0 == REF_COLOR)
            .count();
        assert!(legend_ref >= 20, "{legend_ref}");
        // Without it, the axis keeps to the data.
        chart.ref_lines.clear();
        assert!(layout(&chart).unwrap().y_range.1 < 1.5);
    }
}
