//! A chart's drawing primitives on an RGB canvas: bands, error bars, markers, dashed and solid
//! lines, dots and rectangles, all clipped to the image.

use image::RgbImage;

use super::layout::Layout;
use super::pixels::{fill_rect, put};
use super::spec::{finite, Marker, BAND_ALPHA, DASH, HEIGHT, WHITE, WIDTH};

pub(super) fn band_fill(color: [u8; 3]) -> [u8; 3] {
    blend(WHITE, color, BAND_ALPHA)
}

/// Shades ±band between consecutive finite points (`Style::Lines`), with 1-pixel edges along
/// both bounds in a stronger tint; a lone point gets only its error bar (drawn with the data).
/// A non-finite band value counts as 0. Each pixel is blended once, so overlaps do not darken.
pub(super) fn draw_band(
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
pub(super) fn draw_error_bar(
    img: &mut RgbImage,
    lay: &Layout,
    x: f64,
    y: f64,
    b: f64,
    color: [u8; 3],
) {
    let (cx, hi, lo) = (lay.px(x), lay.py(y + b), lay.py(y - b));
    fill_rect(img, cx, hi, cx + 2, lo + 1, color);
    for end in [hi, lo] {
        fill_rect(img, cx - 4, end, cx + 6, end + 1, color);
    }
}

/// `marker` centred on (cx, cy): filled in `color`, ringed in white.
pub(super) fn draw_marker(img: &mut RgbImage, cx: i32, cy: i32, marker: Marker, color: [u8; 3]) {
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
pub(super) fn draw_dashed(img: &mut RgbImage, x0: i32, x1: i32, y: i32, color: [u8; 3]) {
    let mut x = x0;
    while x <= x1 {
        let end = (x + DASH.0).min(x1 + 1);
        fill_rect(img, x, y, end, y + 2, color);
        x += DASH.0 + DASH.1;
    }
}

pub(super) fn blend(under: [u8; 3], over: [u8; 3], a: f64) -> [u8; 3] {
    let mix = |u: u8, o: u8| (u as f64 * (1.0 - a) + o as f64 * a).round() as u8;
    [
        mix(under[0], over[0]),
        mix(under[1], over[1]),
        mix(under[2], over[2]),
    ]
}

/// 2-pixel lines joining the finite points in order (skipped points are left out); a series
/// with one finite point gets a dot when `lone_dot` (else its marker shows it).
pub(super) fn draw_polyline(
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
pub(super) fn draw_dot(img: &mut RgbImage, cx: i32, cy: i32, color: [u8; 3]) {
    for dy in -2..=2i32 {
        for dx in -2..=2i32 {
            if dx * dx + dy * dy <= 5 {
                put(img, cx + dx, cy + dy, color);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::chart_of;
    use super::*;
    use crate::chart::layout::layout;
    use crate::chart::{render_chart, Series};

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
}
