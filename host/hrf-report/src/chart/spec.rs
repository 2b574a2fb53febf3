//! What a chart is: its series, reference lines and style, the canvas size, the palette and
//! the colours and marks every part of the renderer shares.

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

pub(super) const WHITE: [u8; 3] = [255, 255, 255];
pub(super) const TEXT: [u8; 3] = [20, 20, 20];
pub(super) const GRID: [u8; 3] = [228, 228, 228];
pub(super) const TICK: i32 = 5;
/// Dashes of reference lines: pixels drawn, then pixels left out.
pub(super) const DASH: (i32, i32) = (8, 5);

pub(super) fn finite(p: (f64, f64)) -> bool {
    p.0.is_finite() && p.1.is_finite()
}

pub(super) fn series_color(s: &Series, i: usize) -> [u8; 3] {
    s.color.unwrap_or(PALETTE[i % PALETTE.len()])
}
