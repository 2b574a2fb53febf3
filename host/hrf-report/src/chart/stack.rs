//! Charts stacked one above the other in one PNG (panels sharing an x axis, e.g. the three
//! measures of `hrf diagnose renoise` against the start index k).

use std::path::Path;

use image::{Rgb, RgbImage};

use super::render_chart;
use super::spec::{HEIGHT, WHITE, WIDTH};
use hrf_data::grid::write_canvas;

/// Renders each chart (`WIDTH`×`HEIGHT`) and writes them as one PNG, top to bottom, in order:
/// `WIDTH` × (`HEIGHT` · number of charts) pixels. An empty list or a chart that cannot be drawn
/// is an error, and nothing is written.
pub fn save_chart_stack(charts: &[super::Chart], path: &Path) -> Result<(), String> {
    if charts.is_empty() {
        return Err("no charts to stack".into());
    }
    let mut canvas = RgbImage::from_pixel(WIDTH, HEIGHT * charts.len() as u32, Rgb(WHITE));
    for (i, chart) in charts.iter().enumerate() {
        let img = render_chart(chart).map_err(|e| format!("chart {:?}: {e}", chart.title))?;
        image::imageops::overlay(&mut canvas, &img, 0, (i as u32 * HEIGHT) as i64);
    }
    write_canvas(&canvas, path)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{chart_of, tmp_png};
    use super::super::Series;
    use super::*;

    #[test]
    fn charts_stack_top_to_bottom_each_as_drawn_alone() {
        let a = chart_of(vec![Series::new("a", vec![(0.0, 0.0), (1.0, 1.0)])]);
        let mut b = chart_of(vec![Series::new("b", vec![(0.0, 1.0), (1.0, 0.0)])]);
        b.series[0].color = Some([200, 10, 10]);
        let out = tmp_png("stack");
        save_chart_stack(&[a.clone(), b.clone()], &out).unwrap();
        let img = image::open(&out).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (WIDTH, 2 * HEIGHT));
        for (i, c) in [a, b].iter().enumerate() {
            let alone = render_chart(c).unwrap();
            let part = image::imageops::crop_imm(&img, 0, i as u32 * HEIGHT, WIDTH, HEIGHT);
            assert!(
                part.to_image() == alone,
                "panel {i} is the chart drawn alone"
            );
        }
        std::fs::remove_file(&out).unwrap();
        assert!(save_chart_stack(&[], &out).is_err());
        let empty = chart_of(vec![]);
        assert!(save_chart_stack(&[empty], &out).is_err());
        assert!(!out.exists());
    }
}
