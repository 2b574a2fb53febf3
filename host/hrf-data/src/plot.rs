//! Line and scatter charts as PNG files (training curves against epoch, reward–diversity
//! scatters), drawn pixel by pixel: "nice" axis ticks, shaded ± bands with error bars, point
//! markers, dashed horizontal reference lines (e.g. the base model), labelled special points, a
//! legend, and text in a 5×7 bitmap font embedded here (ASCII 32–126 and the few symbols and
//! Greek letters in `EXTRA`, such as ±, ×, ÷, ≥, –, ·, ² and σ; any other character draws as a
//! box, see `has_glyph`).

use std::path::Path;

use image::{Rgb, RgbImage};

/// Size of every chart, in pixels.
pub const WIDTH: u32 = 800;
pub const HEIGHT: u32 = 500;

/// Series colours by index when a series names none (wraps around).
pub const PALETTE: [[u8; 3]; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

/// Colour of a reference line that names none.
pub const REF_COLOR: [u8; 3] = [70, 70, 70];

/// Opacity of a band's fill over white (`Style::Lines`): the fill is
/// `WHITE * (1 - BAND_ALPHA) + colour * BAND_ALPHA`.
pub const BAND_ALPHA: f64 = 0.28;

/// The shape drawn at each point of a series (filled, in the series colour, ringed in white so
/// that it stands out on its line), 9 pixels across with the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    Dot,
    Square,
    Diamond,
}

/// One named set of (x, y) points. Points with a NaN or infinite coordinate are skipped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    /// `None`: `PALETTE[index % 10]`.
    pub color: Option<[u8; 3]>,
    /// Optional ± half-width per point (e.g. a standard error). `Style::Lines`: a shaded band
    /// with lighter edges between consecutive points, plus an error bar with caps at each point
    /// when the series has a marker (or has a single point); `Style::Points`: error bars. Must
    /// have one value per point; a non-finite value draws none there.
    pub band: Option<Vec<f64>>,
    /// `Some`: the shape drawn at every point (`Style::Lines`: on top of the line; `Style::Points`:
    /// instead of the small dot).
    pub marker: Option<Marker>,
}

impl Series {
    /// A series with the palette's colour, no band and no marker.
    pub fn new(label: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series {
            label: label.into(),
            points,
            ..Series::default()
        }
    }

    /// The same series with a ± band (one half-width per point).
    pub fn with_band(mut self, band: Vec<f64>) -> Series {
        self.band = Some(band);
        self
    }

    /// The same series with `marker` at every point.
    pub fn with_marker(mut self, marker: Marker) -> Series {
        self.marker = Some(marker);
        self
    }
}

/// A horizontal line across the whole plot at `y` (e.g. the base model's value), drawn dashed,
/// listed in the legend after the series, and always inside the y axis.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RefLine {
    pub label: String,
    pub y: f64,
    /// `None`: `REF_COLOR`.
    pub color: Option<[u8; 3]>,
}

impl RefLine {
    pub fn new(label: impl Into<String>, y: f64) -> RefLine {
        RefLine {
            label: label.into(),
            y,
            color: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Style {
    /// Consecutive points joined by 2-pixel lines (broken at skipped points).
    #[default]
    Lines,
    /// Each point a filled 5-pixel circle (or the series' marker).
    Points,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    /// Drawn horizontally above the y axis.
    pub y_label: String,
    pub series: Vec<Series>,
    pub style: Style,
    /// Labelled special points (e.g. the base model), drawn as a black cross with the text beside it.
    pub markers: Vec<(f64, f64, String)>,
    /// Dashed horizontal reference lines.
    pub ref_lines: Vec<RefLine>,
    /// The y axis spans at least this much (widened about the data's middle): for a quantity
    /// whose changes matter relative to its size (a diversity score), so that a spread of a few
    /// per cent is drawn as one rather than filling the plot. 0 or non-finite: no minimum.
    pub y_min_span: f64,
}

/// Renders `chart` and writes it as a PNG via a temporary file in the same folder, then renames it.
pub fn save_chart(chart: &Chart, path: &Path) -> Result<(), String> {
    let canvas = render_chart(chart)?;
    crate::grid::write_canvas(&canvas, path)
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

/// Ticks at a "nice" step (1, 2 or 5 × 10^k) that cover `lo..=hi`: the first is ≤ `lo`, the last
/// ≥ `hi`, 4 to 7 of them. An empty or tiny range is widened around its value first.
pub fn nice_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let (lo, hi) = widened(lo, hi);
    let k0 = ((hi - lo) / 7.0).log10().floor() as i32 - 1;
    for k in k0..k0 + 5 {
        for m in [1.0, 2.0, 5.0] {
            let step = scaled(m, k);
            let (a, b) = (snap(lo / step, f64::floor), snap(hi / step, f64::ceil));
            if b - a <= 6.0 {
                return (a as i64..=b as i64)
                    .map(|i| scaled(i as f64 * m, k))
                    .collect();
            }
        }
    }
    vec![lo, hi]
}

/// Ticks at the finest "nice" step (1, 2 or 5 × 10^k) that puts at most 7 of them inside
/// `lo..=hi` (at least 2): for an axis whose ends are not ticks.
pub fn ticks_within(lo: f64, hi: f64) -> Vec<f64> {
    let (lo, hi) = widened(lo, hi);
    let k0 = ((hi - lo) / 7.0).log10().floor() as i32 - 1;
    for k in k0..k0 + 5 {
        for m in [1.0, 2.0, 5.0] {
            let step = scaled(m, k);
            let (a, b) = (snap(lo / step, f64::ceil), snap(hi / step, f64::floor));
            if b - a <= 6.0 {
                return (a as i64..=b as i64)
                    .map(|i| scaled(i as f64 * m, k))
                    .collect();
            }
        }
    }
    vec![lo, hi]
}

/// `lo..hi` ordered, made finite, and widened around its value when empty or tiny.
fn widened(lo: f64, hi: f64) -> (f64, f64) {
    let (mut lo, mut hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
    if !lo.is_finite() || !hi.is_finite() || !(hi - lo).is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    let mag = lo.abs().max(hi.abs());
    if hi - lo <= mag * 1e-9 || hi - lo < f64::MIN_POSITIVE * 1e6 {
        let pad = if mag > 1e-300 { mag * 0.05 } else { 1.0 };
        (lo, hi) = (lo - pad, hi + pad);
    }
    (lo, hi)
}

/// Labels for ticks from `nice_ticks`: fixed-point with as many decimals as the step needs, or
/// compact scientific ("3e-4", "1.5e6", trailing zeros dropped) where that is shorter.
pub fn tick_labels(ticks: &[f64]) -> Vec<String> {
    let step = match ticks {
        [a, b, ..] => (b - a).abs(),
        [a] => a.abs().max(1.0),
        [] => return Vec::new(),
    };
    let k = (step.log10() + 1e-9).floor() as i32;
    let zero = |t: f64| t.abs() < step * 1e-6;
    let fixed: Vec<String> = ticks
        .iter()
        .map(|&t| {
            let t = if zero(t) { 0.0 } else { t };
            format!("{t:.*}", (-k).max(0) as usize)
        })
        .collect();
    let sci: Vec<String> = ticks
        .iter()
        .map(|&t| {
            if zero(t) {
                return "0".to_string();
            }
            let mut e = (t.abs().log10() + 1e-9).floor() as i32;
            let mut mant = t / 10f64.powi(e);
            if mant.abs() >= 9.999_999 {
                e += 1;
                mant /= 10.0;
            }
            let mant = format!("{mant:.*}", (e - k).max(0) as usize);
            let mant = match mant.contains('.') {
                true => mant.trim_end_matches('0').trim_end_matches('.'),
                false => &mant,
            };
            format!("{mant}e{e}")
        })
        .collect();
    let longest = |v: &[String]| v.iter().map(|s| s.len()).max().unwrap_or(0);
    if longest(&fixed) <= longest(&sci) {
        fixed
    } else {
        sci
    }
}

/// m × 10^k, exact for the small integers m that ticks use (dividing by 10^-k rounds correctly).
fn scaled(m: f64, k: i32) -> f64 {
    if k >= 0 {
        m * 10f64.powi(k)
    } else {
        m / 10f64.powi(-k)
    }
}

/// Rounds `q` to the nearest integer when float error puts it a hair away from one, else `f(q)`.
fn snap(q: f64, f: fn(f64) -> f64) -> f64 {
    if (q - q.round()).abs() < 1e-9 * q.abs().max(1.0) {
        q.round()
    } else {
        f(q)
    }
}

const WHITE: [u8; 3] = [255, 255, 255];
const TEXT: [u8; 3] = [20, 20, 20];
const GRID: [u8; 3] = [228, 228, 228];
const TICK: i32 = 5;
/// Width of one character cell at scale 1 (5 pixels of glyph, 1 of spacing).
const CELL: i32 = 6;
/// Fractions of the data's x and y ranges left empty on each side, so that markers, error bars
/// and the extreme points stay off the frame.
const X_PAD: f64 = 0.03;
const Y_PAD: f64 = 0.06;
/// Dashes of reference lines: pixels drawn, then pixels left out.
const DASH: (i32, i32) = (8, 5);

fn finite(p: (f64, f64)) -> bool {
    p.0.is_finite() && p.1.is_finite()
}

fn series_color(s: &Series, i: usize) -> [u8; 3] {
    s.color.unwrap_or(PALETTE[i % PALETTE.len()])
}

/// One row of the legend.
enum LegendKey {
    Series(usize),
    Ref(usize),
}

/// Where the data area lies (pixel columns `left..=right`, rows `top..=bottom`) and its axes.
struct Layout {
    left: i32,
    right: i32,
    top: i32,
    bottom: i32,
    x_range: (f64, f64),
    y_range: (f64, f64),
    x_ticks: Vec<f64>,
    y_ticks: Vec<f64>,
    x_labels: Vec<String>,
    y_labels: Vec<String>,
    legend: Vec<(LegendKey, String)>,
}

impl Layout {
    fn px(&self, x: f64) -> i32 {
        let (a, b) = self.x_range;
        let f = ((x - a) / (b - a)).clamp(-1.0, 2.0);
        self.left + (f * (self.right - self.left) as f64).round() as i32
    }

    fn py(&self, y: f64) -> i32 {
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

fn layout(chart: &Chart) -> Result<Layout, String> {
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

fn band_fill(color: [u8; 3]) -> [u8; 3] {
    blend(WHITE, color, BAND_ALPHA)
}

/// Shades ±band between consecutive finite points (`Style::Lines`), with 1-pixel edges along
/// both bounds in a stronger tint; a lone point gets only its error bar (drawn with the data).
/// A non-finite band value counts as 0. Each pixel is blended once, so overlaps do not darken.
fn draw_band(
    img: &mut RgbImage,
    lay: &Layout,
    points: &[(f64, f64)],
    band: &[f64],
    color: [u8; 3],
) {
    let (w, h) = (WIDTH as i32, HEIGHT as i32);
    // 0: untouched, 1: fill, 2: edge.
    let mut mask = vec![0u8; (w * h) as usize];
    let mut span = |x: i32, y0: i32, y1: i32| {
        if (0..w).contains(&x) {
            let (a, b) = (y0.min(y1).max(0), y0.max(y1).min(h - 1));
            for y in a..=b {
                let m = &mut mask[(y * w + x) as usize];
                *m = (*m).max(1);
            }
            for y in [a, b] {
                if (0..h).contains(&y) {
                    mask[(y * w + x) as usize] = 2;
                }
            }
        }
    };
    // (pixel x, upper pixel y, lower pixel y) of each finite point.
    let ends: Vec<(i32, i32, i32)> = points
        .iter()
        .zip(band)
        .filter(|(p, _)| finite(**p))
        .map(|(&(x, y), &b)| {
            let b = if b.is_finite() { b.abs() } else { 0.0 };
            (lay.px(x), lay.py(y + b), lay.py(y - b))
        })
        .collect();
    for pair in ends.windows(2) {
        let [(x, hi, lo), (x2, hi2, lo2)] = [pair[0], pair[1]];
        for px in x.min(x2)..=x.max(x2) {
            let t = if x2 == x {
                0.0
            } else {
                (px - x) as f64 / (x2 - x) as f64
            };
            let lerp = |a: i32, b: i32| (a as f64 + t * (b - a) as f64).round() as i32;
            span(px, lerp(hi, hi2), lerp(lo, lo2));
        }
    }
    let edge = blend(WHITE, color, 0.55);
    for (i, m) in mask.iter().enumerate().filter(|(_, m)| **m > 0) {
        let (x, y) = ((i as i32 % w) as u32, (i as i32 / w) as u32);
        let p = img.get_pixel_mut(x, y);
        p.0 = match m {
            2 => edge,
            _ => blend(p.0, color, BAND_ALPHA),
        };
    }
}

/// A vertical 2-pixel bar from y - b to y + b with 9-pixel caps at both ends.
fn draw_error_bar(img: &mut RgbImage, lay: &Layout, x: f64, y: f64, b: f64, color: [u8; 3]) {
    let (cx, hi, lo) = (lay.px(x), lay.py(y + b), lay.py(y - b));
    fill_rect(img, cx, hi, cx + 2, lo + 1, color);
    for end in [hi, lo] {
        fill_rect(img, cx - 4, end, cx + 6, end + 1, color);
    }
}

/// `marker` centred on (cx, cy): filled in `color`, ringed in white.
fn draw_marker(img: &mut RgbImage, cx: i32, cy: i32, marker: Marker, color: [u8; 3]) {
    let inside = |dx: i32, dy: i32, grow: i32| match marker {
        Marker::Dot => dx * dx + dy * dy <= (3 + grow) * (3 + grow) + 1,
        Marker::Square => dx.abs().max(dy.abs()) <= 3 + grow,
        Marker::Diamond => dx.abs() + dy.abs() <= 4 + grow,
    };
    for dy in -5..=5i32 {
        for dx in -5..=5i32 {
            if inside(dx, dy, 0) {
                put(img, cx + dx, cy + dy, color);
            } else if inside(dx, dy, 1) {
                put(img, cx + dx, cy + dy, WHITE);
            }
        }
    }
}

/// A dashed horizontal line 2 pixels thick (rows `y` and `y + 1`) over columns `x0..=x1`,
/// starting with a dash at `x0`.
fn draw_dashed(img: &mut RgbImage, x0: i32, x1: i32, y: i32, color: [u8; 3]) {
    let mut x = x0;
    while x <= x1 {
        let end = (x + DASH.0).min(x1 + 1);
        fill_rect(img, x, y, end, y + 2, color);
        x += DASH.0 + DASH.1;
    }
}

fn blend(under: [u8; 3], over: [u8; 3], a: f64) -> [u8; 3] {
    let mix = |u: u8, o: u8| (u as f64 * (1.0 - a) + o as f64 * a).round() as u8;
    [
        mix(under[0], over[0]),
        mix(under[1], over[1]),
        mix(under[2], over[2]),
    ]
}

/// 2-pixel lines joining the finite points in order (skipped points are left out); a series
/// with one finite point gets a dot when `lone_dot` (else its marker shows it).
fn draw_polyline(
    img: &mut RgbImage,
    lay: &Layout,
    points: &[(f64, f64)],
    color: [u8; 3],
    lone_dot: bool,
) {
    let pts: Vec<(i32, i32)> = points
        .iter()
        .filter(|p| finite(**p))
        .map(|p| (lay.px(p.0), lay.py(p.1)))
        .collect();
    match pts[..] {
        [] => {}
        [(x, y)] => {
            if lone_dot {
                draw_dot(img, x, y, color)
            }
        }
        _ => {
            for pair in pts.windows(2) {
                draw_line(img, pair[0], pair[1], color);
            }
        }
    }
}

/// Bresenham, stamping a 2×2 square at each step.
fn draw_line(img: &mut RgbImage, (x0, y0): (i32, i32), (x1, y1): (i32, i32), color: [u8; 3]) {
    let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
    let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
    let (mut x, mut y, mut err) = (x0, y0, dx + dy);
    loop {
        fill_rect(img, x, y, x + 2, y + 2, color);
        if x == x1 && y == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

/// A filled circle 5 pixels across centred on (cx, cy).
fn draw_dot(img: &mut RgbImage, cx: i32, cy: i32, color: [u8; 3]) {
    for dy in -2..=2i32 {
        for dx in -2..=2i32 {
            if dx * dx + dy * dy <= 5 {
                put(img, cx + dx, cy + dy, color);
            }
        }
    }
}

fn put(img: &mut RgbImage, x: i32, y: i32, color: [u8; 3]) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, Rgb(color));
    }
}

/// Fills columns `x0..x1`, rows `y0..y1` (clipped to the image).
fn fill_rect(img: &mut RgbImage, x0: i32, y0: i32, x1: i32, y1: i32, color: [u8; 3]) {
    let (w, h) = (img.width() as i32, img.height() as i32);
    for y in y0.max(0)..y1.min(h) {
        for x in x0.max(0)..x1.min(w) {
            img.put_pixel(x as u32, y as u32, Rgb(color));
        }
    }
}

/// Lays PNG images out side by side, each under its label (scaled down to fit), on white, and
/// writes the result as a PNG: the sample grids of several runs for comparison.
pub fn save_panels(panels: &[(String, &Path)], path: &Path) -> Result<(), String> {
    let images: Vec<(String, RgbImage)> = panels
        .iter()
        .map(|(label, p)| {
            image::open(p)
                .map(|i| (label.clone(), i.to_rgb8()))
                .map_err(|e| format!("{}: {e}", p.display()))
        })
        .collect::<Result<_, _>>()?;
    if images.is_empty() {
        return Err("no images to lay out".into());
    }
    let (gap, label_h, scale) = (12u32, 28u32, 2);
    let width = images.iter().map(|(_, i)| i.width() + gap).sum::<u32>() + gap;
    let height = images.iter().map(|(_, i)| i.height()).max().unwrap_or(0) + label_h + 2 * gap;
    let mut canvas = RgbImage::from_pixel(width, height, Rgb(WHITE));
    let mut x = gap;
    for (label, img) in &images {
        let max_w = img.width() as i32 / scale;
        draw_text(
            &mut canvas,
            x as i32,
            gap as i32,
            &fit_text(label, max_w),
            scale,
            [0, 0, 0],
        );
        image::imageops::overlay(&mut canvas, img, x as i64, (gap + label_h) as i64);
        x += img.width() + gap;
    }
    crate::grid::write_canvas(&canvas, path)
}

fn text_width(text: &str, scale: i32) -> i32 {
    let n = text.chars().count() as i32;
    if n == 0 {
        0
    } else {
        (n * CELL - 1) * scale
    }
}

/// `text` cut to at most `max_w` pixels at scale 1, ending in ".." when cut.
fn fit_text(text: &str, max_w: i32) -> String {
    if text_width(text, 1) <= max_w {
        return text.to_string();
    }
    let keep = ((max_w + 1) / CELL - 2).max(0) as usize;
    text.chars().take(keep).chain("..".chars()).collect()
}

/// Draws `text` with its top-left corner at (x, y), each font pixel a `scale`×`scale` square.
fn draw_text(img: &mut RgbImage, x: i32, y: i32, text: &str, scale: i32, color: [u8; 3]) {
    for (n, c) in text.chars().enumerate() {
        let glyph = glyph(c);
        let gx = x + n as i32 * CELL * scale;
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..5 {
                if bits & (0b10000 >> col) != 0 {
                    let (px, py) = (gx + col * scale, y + row as i32 * scale);
                    fill_rect(img, px, py, px + scale, py + scale, color);
                }
            }
        }
    }
}

fn glyph(c: char) -> &'static [u8; 8] {
    match c as u32 {
        n @ 32..=126 => &FONT[(n - 32) as usize],
        _ => EXTRA
            .iter()
            .find(|(e, _)| *e == c)
            .map_or(&MISSING, |(_, g)| g),
    }
}

/// Whether `c` has a glyph of its own (else it draws as the missing-glyph box).
pub fn has_glyph(c: char) -> bool {
    (32..=126).contains(&(c as u32)) || EXTRA.iter().any(|(e, _)| *e == c)
}

/// Glyphs beyond ASCII, in the layout of `FONT`: the symbols and Greek letters that chart text
/// uses (or may: units, ratios, thresholds).
#[rustfmt::skip]
const EXTRA: [(char, [u8; 8]); 41] = [
    ('\u{a0}', [0, 0, 0, 0, 0, 0, 0, 0]), // no-break space
    ('±', [0b00100, 0b00100, 0b11111, 0b00100, 0b00100, 0b00000, 0b11111, 0]),
    ('×', [0, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0, 0]),
    ('÷', [0, 0b00100, 0, 0b11111, 0, 0b00100, 0, 0]),
    ('≥', [0b10000, 0b01100, 0b00011, 0b01100, 0b10000, 0, 0b11111, 0]),
    ('≤', [0b00001, 0b00110, 0b11000, 0b00110, 0b00001, 0, 0b11111, 0]),
    ('≈', [0, 0, 0b01000, 0b10101, 0b00010, 0b01000, 0b10101, 0b00010]),
    ('≠', [0, 0b00010, 0b11111, 0b00100, 0b11111, 0b01000, 0, 0]),
    ('−', [0, 0, 0, 0b11111, 0, 0, 0, 0]), // minus sign
    ('–', [0, 0, 0, 0b11111, 0, 0, 0, 0]), // en dash
    ('—', [0, 0, 0, 0b11111, 0, 0, 0, 0]), // em dash
    ('·', [0, 0, 0, 0b01100, 0b01100, 0, 0, 0]),
    ('…', [0, 0, 0, 0, 0, 0, 0b10101, 0]),
    ('‘', [0b00100, 0b01000, 0b01000, 0, 0, 0, 0, 0]),
    ('’', [0b00100, 0b00100, 0b01000, 0, 0, 0, 0, 0]),
    ('“', [0b01010, 0b10100, 0b10100, 0, 0, 0, 0, 0]),
    ('”', [0b01010, 0b01010, 0b10100, 0, 0, 0, 0, 0]),
    ('→', [0, 0b00100, 0b00010, 0b11111, 0b00010, 0b00100, 0, 0]),
    ('←', [0, 0b00100, 0b01000, 0b11111, 0b01000, 0b00100, 0, 0]),
    ('∞', [0, 0, 0b01010, 0b10101, 0b10101, 0b01010, 0, 0]),
    ('√', [0b00011, 0b00010, 0b00010, 0b00100, 0b10100, 0b01100, 0b00100, 0]),
    ('°', [0b01100, 0b10010, 0b10010, 0b01100, 0, 0, 0, 0]),
    ('²', [0b01100, 0b10010, 0b00100, 0b01000, 0b11110, 0, 0, 0]),
    ('³', [0b11100, 0b00010, 0b01100, 0b00010, 0b11100, 0, 0, 0]),
    ('α', [0, 0, 0b01001, 0b10101, 0b10010, 0b10010, 0b01101, 0]),
    ('β', [0b01100, 0b10010, 0b10010, 0b11100, 0b10010, 0b10010, 0b11100, 0b10000]),
    ('γ', [0, 0, 0b10001, 0b10001, 0b01010, 0b00100, 0b00100, 0b00100]),
    ('δ', [0b01110, 0b01000, 0b00100, 0b01110, 0b10001, 0b10001, 0b01110, 0]),
    ('ε', [0, 0, 0b01111, 0b10000, 0b01110, 0b10000, 0b01111, 0]),
    ('η', [0, 0, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001, 0b00001]),
    ('θ', [0b01110, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b01110, 0]),
    ('λ', [0b01000, 0b00100, 0b00100, 0b01010, 0b01010, 0b10001, 0b10001, 0]),
    ('μ', [0, 0, 0b10010, 0b10010, 0b10010, 0b11101, 0b10000, 0b10000]),
    ('µ', [0, 0, 0b10010, 0b10010, 0b10010, 0b11101, 0b10000, 0b10000]), // micro sign
    ('π', [0, 0, 0b11111, 0b01010, 0b01010, 0b01010, 0b01001, 0]),
    ('ρ', [0, 0, 0b01110, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000]),
    ('σ', [0, 0, 0b01111, 0b10010, 0b10001, 0b10001, 0b01110, 0]),
    ('τ', [0, 0, 0b11111, 0b00100, 0b00100, 0b00101, 0b00010, 0]),
    ('ω', [0, 0, 0b01010, 0b10001, 0b10101, 0b10101, 0b01010, 0]),
    ('Δ', [0b00100, 0b00100, 0b01010, 0b01010, 0b10001, 0b10001, 0b11111, 0]),
    ('Σ', [0b11111, 0b10000, 0b01000, 0b00100, 0b01000, 0b10000, 0b11111, 0]),
];

/// Drawn for characters outside `FONT`.
const MISSING: [u8; 8] = [
    0b11111, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b11111, 0,
];

/// 5×7 glyphs for ASCII 32..=126, one byte a row (bit 4 the leftmost column); capitals and
/// digits use rows 0–6, row 7 holds descenders (g, j, p, q, y, comma).
#[rustfmt::skip]
const FONT: [[u8; 8]; 95] = [
    [0, 0, 0, 0, 0, 0, 0, 0], // ' '
    [0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00000, 0b00100, 0], // !
    [0b01010, 0b01010, 0b01010, 0, 0, 0, 0, 0], // "
    [0b01010, 0b01010, 0b11111, 0b01010, 0b11111, 0b01010, 0b01010, 0], // #
    [0b00100, 0b01111, 0b10100, 0b01110, 0b00101, 0b11110, 0b00100, 0], // $
    [0b11000, 0b11001, 0b00010, 0b00100, 0b01000, 0b10011, 0b00011, 0], // %
    [0b01100, 0b10010, 0b10100, 0b01000, 0b10101, 0b10010, 0b01101, 0], // &
    [0b00100, 0b00100, 0b01000, 0, 0, 0, 0, 0], // '
    [0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0b00100, 0b00010, 0], // (
    [0b01000, 0b00100, 0b00010, 0b00010, 0b00010, 0b00100, 0b01000, 0], // )
    [0b00000, 0b00100, 0b10101, 0b01110, 0b10101, 0b00100, 0b00000, 0], // *
    [0b00000, 0b00100, 0b00100, 0b11111, 0b00100, 0b00100, 0b00000, 0], // +
    [0, 0, 0, 0, 0, 0b01100, 0b00100, 0b01000], // ,
    [0, 0, 0, 0b11111, 0, 0, 0, 0], // -
    [0, 0, 0, 0, 0, 0b01100, 0b01100, 0], // .
    [0b00000, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b00000, 0], // /
    [0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110, 0], // 0
    [0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110, 0], // 1
    [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111, 0], // 2
    [0b11111, 0b00010, 0b00100, 0b00010, 0b00001, 0b10001, 0b01110, 0], // 3
    [0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010, 0], // 4
    [0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110, 0], // 5
    [0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110, 0], // 6
    [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0], // 7
    [0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110, 0], // 8
    [0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100, 0], // 9
    [0, 0b01100, 0b01100, 0, 0b01100, 0b01100, 0, 0], // :
    [0, 0b01100, 0b01100, 0, 0b01100, 0b00100, 0b01000, 0], // ;
    [0b00010, 0b00100, 0b01000, 0b10000, 0b01000, 0b00100, 0b00010, 0], // <
    [0, 0, 0b11111, 0, 0b11111, 0, 0, 0], // =
    [0b01000, 0b00100, 0b00010, 0b00001, 0b00010, 0b00100, 0b01000, 0], // >
    [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b00000, 0b00100, 0], // ?
    [0b01110, 0b10001, 0b00001, 0b01101, 0b10101, 0b10101, 0b01110, 0], // @
    [0b01110, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001, 0], // A
    [0b11110, 0b10001, 0b10001, 0b11110, 0b10001, 0b10001, 0b11110, 0], // B
    [0b01110, 0b10001, 0b10000, 0b10000, 0b10000, 0b10001, 0b01110, 0], // C
    [0b11100, 0b10010, 0b10001, 0b10001, 0b10001, 0b10010, 0b11100, 0], // D
    [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b11111, 0], // E
    [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b10000, 0], // F
    [0b01110, 0b10001, 0b10000, 0b10111, 0b10001, 0b10001, 0b01111, 0], // G
    [0b10001, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001, 0], // H
    [0b01110, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110, 0], // I
    [0b00111, 0b00010, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100, 0], // J
    [0b10001, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0b10001, 0], // K
    [0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b11111, 0], // L
    [0b10001, 0b11011, 0b10101, 0b10101, 0b10001, 0b10001, 0b10001, 0], // M
    [0b10001, 0b10001, 0b11001, 0b10101, 0b10011, 0b10001, 0b10001, 0], // N
    [0b01110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110, 0], // O
    [0b11110, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000, 0b10000, 0], // P
    [0b01110, 0b10001, 0b10001, 0b10001, 0b10101, 0b10010, 0b01101, 0], // Q
    [0b11110, 0b10001, 0b10001, 0b11110, 0b10100, 0b10010, 0b10001, 0], // R
    [0b01111, 0b10000, 0b10000, 0b01110, 0b00001, 0b00001, 0b11110, 0], // S
    [0b11111, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0], // T
    [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110, 0], // U
    [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0], // V
    [0b10001, 0b10001, 0b10001, 0b10101, 0b10101, 0b10101, 0b01010, 0], // W
    [0b10001, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b10001, 0], // X
    [0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0b00100, 0b00100, 0], // Y
    [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b11111, 0], // Z
    [0b01110, 0b01000, 0b01000, 0b01000, 0b01000, 0b01000, 0b01110, 0], // [
    [0b00000, 0b10000, 0b01000, 0b00100, 0b00010, 0b00001, 0b00000, 0], // backslash
    [0b01110, 0b00010, 0b00010, 0b00010, 0b00010, 0b00010, 0b01110, 0], // ]
    [0b00100, 0b01010, 0b10001, 0, 0, 0, 0, 0], // ^
    [0, 0, 0, 0, 0, 0, 0, 0b11111], // _
    [0b01000, 0b00100, 0b00010, 0, 0, 0, 0, 0], // `
    [0, 0, 0b01110, 0b00001, 0b01111, 0b10001, 0b01111, 0], // a
    [0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b11110, 0], // b
    [0, 0, 0b01110, 0b10000, 0b10000, 0b10001, 0b01110, 0], // c
    [0b00001, 0b00001, 0b01101, 0b10011, 0b10001, 0b10001, 0b01111, 0], // d
    [0, 0, 0b01110, 0b10001, 0b11111, 0b10000, 0b01110, 0], // e
    [0b00110, 0b01001, 0b01000, 0b11100, 0b01000, 0b01000, 0b01000, 0], // f
    [0, 0, 0b01111, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110], // g
    [0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001, 0], // h
    [0b00100, 0, 0b01100, 0b00100, 0b00100, 0b00100, 0b01110, 0], // i
    [0b00010, 0, 0b00110, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100], // j
    [0b10000, 0b10000, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0], // k
    [0b01000, 0b01000, 0b01000, 0b01000, 0b01000, 0b01001, 0b00110, 0], // l
    [0, 0, 0b11010, 0b10101, 0b10101, 0b10001, 0b10001, 0], // m
    [0, 0, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001, 0], // n
    [0, 0, 0b01110, 0b10001, 0b10001, 0b10001, 0b01110, 0], // o
    [0, 0, 0b11110, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000], // p
    [0, 0, 0b01111, 0b10001, 0b10001, 0b01111, 0b00001, 0b00001], // q
    [0, 0, 0b10110, 0b11001, 0b10000, 0b10000, 0b10000, 0], // r
    [0, 0, 0b01111, 0b10000, 0b01110, 0b00001, 0b11110, 0], // s
    [0b01000, 0b01000, 0b11100, 0b01000, 0b01000, 0b01001, 0b00110, 0], // t
    [0, 0, 0b10001, 0b10001, 0b10001, 0b10011, 0b01101, 0], // u
    [0, 0, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0], // v
    [0, 0, 0b10001, 0b10001, 0b10101, 0b10101, 0b01010, 0], // w
    [0, 0, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0], // x
    [0, 0, 0b10001, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110], // y
    [0, 0, 0b11111, 0b00010, 0b00100, 0b01000, 0b11111, 0], // z
    [0b00110, 0b00100, 0b00100, 0b01000, 0b00100, 0b00100, 0b00110, 0], // {
    [0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0], // |
    [0b01100, 0b00100, 0b00100, 0b00010, 0b00100, 0b00100, 0b01100, 0], // }
    [0, 0, 0b01000, 0b10101, 0b00010, 0, 0, 0], // ~
];

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_png(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("hrf-plot-{name}-{}.png", std::process::id()))
    }

    fn diagonal(style: Style) -> Chart {
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

    fn has_color_near(img: &RgbImage, x: i32, y: i32, color: [u8; 3]) -> bool {
        (-2..=2).any(|dy| {
            (-2..=2).any(|dx| {
                let (px, py) = ((x + dx) as u32, (y + dy) as u32);
                img.get_pixel(px, py).0 == color
            })
        })
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
    fn ticks_are_nice_and_cover_the_range() {
        let mut ranges = vec![
            (0.0, 1.0),
            (0.13, 0.87),
            (-3.2, 7.9),
            (3e-4, 3.1e-4),
            (0.0, 12000.0),
            (12000.0, 12001.0),
            (5.0, 5.0),
            (0.0, 0.0),
            (-1e-7, 2e-7),
            (1e6, 5e7),
            (-250.0, -249.0),
            (1.0, 1.0 + 1e-12),
            (0.6, 1.4),
        ];
        let mut s = 12345u64;
        let mut rnd = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        for _ in 0..2000 {
            let scale = 10f64.powf(rnd() * 16.0 - 8.0);
            let (a, b) = ((rnd() - 0.5) * scale, (rnd() - 0.5) * scale);
            ranges.push((a, b));
        }
        for (lo, hi) in ranges {
            let t = nice_ticks(lo, hi);
            assert!((4..=7).contains(&t.len()), "{lo}..{hi}: {t:?}");
            assert!(
                t[0] <= lo.min(hi) && *t.last().unwrap() >= hi.max(lo),
                "{lo}..{hi}: {t:?}"
            );
            let step = t[1] - t[0];
            let k = step.log10().floor();
            let m = step / 10f64.powf(k);
            assert!(
                [1.0, 2.0, 5.0, 10.0].iter().any(|n| (m - n).abs() < 1e-6),
                "{lo}..{hi}: step {step}"
            );
            for w in t.windows(2) {
                assert!(((w[1] - w[0]) / step - 1.0).abs() < 1e-6, "{t:?}");
            }
            for &x in &t {
                assert!(((x / step) - (x / step).round()).abs() < 1e-6, "{t:?}");
            }
            let labels = tick_labels(&t);
            assert!(
                labels.iter().all(|l| l.len() <= 12),
                "{lo}..{hi}: {labels:?}"
            );
            let mut dedup = labels.clone();
            dedup.dedup();
            assert_eq!(dedup.len(), labels.len(), "distinct labels {labels:?}");
        }
        assert_eq!(nice_ticks(0.0, 1.0), [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(tick_labels(&nice_ticks(0.0, 1.0))[1], "0.2");
        assert!(tick_labels(&nice_ticks(0.0, 12000.0)).contains(&"12000".to_string()));
        let small = tick_labels(&nice_ticks(0.0, 3e-4));
        assert!(small.contains(&"3e-4".to_string()), "{small:?}");
        let neg = tick_labels(&nice_ticks(-1.0, 1.0));
        assert!(neg.contains(&"-0.5".to_string()) && !neg.iter().any(|l| l.starts_with("-0.0")));
        assert!(tick_labels(&nice_ticks(0.0, 5e7)).contains(&"5e7".to_string()));
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
    fn panels_sit_side_by_side_under_their_labels() {
        let (a, b) = (tmp_png("panel-a"), tmp_png("panel-b"));
        RgbImage::from_pixel(40, 30, Rgb([255, 0, 0]))
            .save(&a)
            .unwrap();
        RgbImage::from_pixel(50, 20, Rgb([0, 0, 255]))
            .save(&b)
            .unwrap();
        let out = tmp_png("panels");
        save_panels(
            &[("a".into(), a.as_path()), ("b".into(), b.as_path())],
            &out,
        )
        .unwrap();
        let img = image::open(&out).unwrap().to_rgb8();
        assert_eq!(
            (img.width(), img.height()),
            (12 + 40 + 12 + 50 + 12, 30 + 28 + 24)
        );
        assert_eq!(img.get_pixel(12, 40).0, [255, 0, 0]);
        assert_eq!(img.get_pixel(12 + 40 + 12, 40).0, [0, 0, 255]);
        let missing = std::path::Path::new("/nonexistent/x.png");
        let e = save_panels(&[("m".into(), missing)], &out).unwrap_err();
        assert!(e.contains("/nonexistent/x.png"), "{e}");
    }

    /// The pixels that `text` sets, drawn alone at (0, 0) at scale 1.
    fn ink(text: &str) -> Vec<(u32, u32)> {
        let mut img = RgbImage::from_pixel(40, 10, Rgb(WHITE));
        draw_text(&mut img, 0, 0, text, 1, [0, 0, 0]);
        img.enumerate_pixels()
            .filter(|(_, _, p)| p.0 == [0, 0, 0])
            .map(|(x, y, _)| (x, y))
            .collect()
    }

    #[test]
    fn plus_minus_and_the_other_symbols_are_drawn_not_boxed() {
        let missing = ink("\u{2603}");
        assert_eq!(missing.len(), 20, "the fallback box: {missing:?}");
        for c in "±×÷≥≤–—·²σμΔ".chars() {
            assert!(has_glyph(c), "{c}");
            let drawn = ink(&c.to_string());
            assert!(
                !drawn.is_empty() && drawn != missing,
                "{c} draws as the box"
            );
        }
        assert!(!has_glyph('\u{2603}') && has_glyph('a') && has_glyph('~'));
        // ±: a plus over a bar, with a gap between them.
        let pm = ink("±");
        assert!((0..5).all(|x| pm.contains(&(x, 2)) && pm.contains(&(x, 6))));
        assert!(pm.contains(&(2, 0)) && pm.contains(&(2, 4)) && !pm.iter().any(|p| p.1 == 5));
        // Every extra glyph is distinct from the others, but for the dashes and the two mus.
        let same = ["−–—", "μµ"];
        for (i, (a, ga)) in EXTRA.iter().enumerate() {
            assert_ne!(ga, &MISSING, "{a}");
            for (b, gb) in &EXTRA[i + 1..] {
                assert_ne!(a, b, "listed twice");
                let alike = same.iter().any(|s| s.contains(*a) && s.contains(*b));
                assert_eq!(ga == gb, alike, "{a} {b}");
            }
        }
        assert_eq!(glyph('-'), glyph('−'));
    }

    fn chart_of(series: Vec<Series>) -> Chart {
        Chart {
            title: "t".into(),
            series,
            ..Chart::default()
        }
    }

    #[test]
    fn markers_and_error_bars_sit_at_their_points() {
        let red = [200, 20, 20];
        let pts = vec![(0.0, 0.0), (1.0, 1.0), (2.0, 0.5)];
        let plain = Series {
            color: Some(red),
            ..Series::new("s", pts.clone())
        };
        for marker in [Marker::Square, Marker::Dot, Marker::Diamond] {
            let chart = chart_of(vec![plain.clone().with_marker(marker)]);
            let (lay, img) = (layout(&chart).unwrap(), render_chart(&chart).unwrap());
            let at = |x: i32, y: i32| img.get_pixel(x as u32, y as u32).0;
            for &(x, y) in &pts {
                let (cx, cy) = (lay.px(x), lay.py(y));
                assert_eq!(at(cx, cy), red, "{marker:?} at {x},{y}");
                // Inside the shape, and its white ring just outside it (drawn over the line).
                assert_eq!(at(cx - 2, cy - 2), red, "{marker:?} at {x},{y}");
                let ring = if marker == Marker::Diamond { 5 } else { 4 };
                assert_eq!(at(cx, cy - ring), WHITE, "{marker:?}: its ring at {x},{y}");
            }
            let (cx, cy) = (lay.px(1.0), lay.py(1.0));
            assert_ne!(
                render_chart(&chart_of(vec![plain.clone()]))
                    .unwrap()
                    .get_pixel(cx as u32 - 2, cy as u32 - 2)
                    .0,
                red,
                "without a marker that pixel is left white"
            );
        }
        // Error bars: a bar through the point and caps at y ± b.
        let chart = chart_of(vec![plain
            .clone()
            .with_marker(Marker::Dot)
            .with_band(vec![0.25, 0.25, 0.25])]);
        let (lay, img) = (layout(&chart).unwrap(), render_chart(&chart).unwrap());
        let (cx, top, bottom) = (lay.px(1.0), lay.py(1.25), lay.py(0.75));
        for x in cx - 4..=cx + 5 {
            assert_eq!(img.get_pixel(x as u32, top as u32).0, red, "upper cap");
            assert_eq!(img.get_pixel(x as u32, bottom as u32).0, red, "lower cap");
        }
        let cy = lay.py(1.0);
        // (The marker's white ring interrupts the bar just above and below the point.)
        for y in (top..=bottom).filter(|y| (y - cy).abs() != 4) {
            assert_eq!(
                img.get_pixel(cx as u32, y as u32).0,
                red,
                "the bar at row {y}"
            );
        }
        assert_ne!(
            img.get_pixel(cx as u32, top as u32 - 3).0,
            red,
            "nothing above the cap"
        );
    }

    #[test]
    fn a_band_is_filled_between_its_bounds_with_visible_edges() {
        let blue = [20, 60, 220];
        let s = Series {
            color: Some(blue),
            band: Some(vec![1.0, 1.0]),
            ..Series::new("s", vec![(0.0, 0.0), (2.0, 0.0)])
        };
        let chart = chart_of(vec![s]);
        let (lay, img) = (layout(&chart).unwrap(), render_chart(&chart).unwrap());
        assert!(
            lay.y_range.0 < -1.0 && lay.y_range.1 > 1.0,
            "the axis holds the band"
        );
        let x = lay.px(0.7) as u32;
        let grid_rows: Vec<i32> = lay.y_ticks.iter().map(|&t| lay.py(t)).collect();
        let fill = band_fill(blue);
        assert_ne!(fill, WHITE);
        let rows: Vec<i32> = (lay.py(0.9)..=lay.py(0.1))
            .chain(lay.py(-0.1)..=lay.py(-0.9))
            .filter(|y| !grid_rows.contains(y))
            .collect();
        assert!(rows.len() > 50);
        for &y in &rows {
            assert_eq!(img.get_pixel(x, y as u32).0, fill, "row {y}");
        }
        let edge = blend(WHITE, blue, 0.55);
        assert_eq!(img.get_pixel(x, lay.py(1.0) as u32).0, edge);
        assert_eq!(img.get_pixel(x, lay.py(-1.0) as u32).0, edge);
        for y in [lay.py(1.0) - 3, lay.py(-1.0) + 3] {
            assert_eq!(img.get_pixel(x, y as u32).0, WHITE, "outside the band");
        }
        assert_eq!(
            img.get_pixel(x, lay.py(0.0) as u32).0,
            blue,
            "the line on top"
        );
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

    #[test]
    fn ticks_within_a_range_are_nice_and_inside_it() {
        let mut s = 99u64;
        let mut rnd = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut ranges = vec![(-0.06, 1.06), (2.1, 2.35), (0.0, 0.0), (5.0, 5.0)];
        for _ in 0..2000 {
            let scale = 10f64.powf(rnd() * 16.0 - 8.0);
            ranges.push(((rnd() - 0.5) * scale, (rnd() - 0.5) * scale));
        }
        for (lo, hi) in ranges {
            let t = ticks_within(lo, hi);
            let (a, b) = widened(lo, hi);
            assert!((2..=7).contains(&t.len()), "{lo}..{hi}: {t:?}");
            assert!(
                t[0] >= a - 1e-12 * a.abs() && *t.last().unwrap() <= b + 1e-12 * b.abs(),
                "{lo}..{hi}: {t:?}"
            );
            let step = t[1] - t[0];
            let m = step / 10f64.powf(step.log10().floor());
            assert!(
                [1.0, 2.0, 5.0, 10.0].iter().any(|n| (m - n).abs() < 1e-6),
                "{lo}..{hi}: step {step}"
            );
            let labels = tick_labels(&t);
            let mut dedup = labels.clone();
            dedup.dedup();
            assert_eq!(dedup.len(), labels.len(), "distinct labels {labels:?}");
        }
        assert_eq!(ticks_within(-0.06, 1.06), [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
    }
}
