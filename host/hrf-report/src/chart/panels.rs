//! PNG images laid out side by side under their labels (`hrf compare`'s samples.png).

use std::path::Path;

use image::{Rgb, RgbImage};

use super::font::{draw_text, fit_text};
use hrf_data::grid::write_canvas;

use super::spec::WHITE;

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
    write_canvas(&canvas, path)
}

#[cfg(test)]
mod tests {
    use super::super::tests::tmp_png;
    use super::*;

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
}
