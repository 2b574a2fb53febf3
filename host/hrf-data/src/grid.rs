//! Sample grids as PNG files.

use std::path::Path;

use hrf_core::{Channels, Image};

/// Lays `images` (all one size) out in rows of `cols`, with a 2-pixel grey gutter, each image
/// scaled up by `zoom` (nearest neighbour), and writes a PNG via a temporary file.
pub fn save_grid(images: &[Image], cols: usize, zoom: u32, path: &Path) -> Result<(), String> {
    let first = images.first().ok_or("no images for the grid")?;
    let (w, h) = (first.width() * zoom, first.height() * zoom);
    let cols = cols.clamp(1, images.len());
    let rows = images.len().div_ceil(cols);
    let gap = 2u32;
    let (gw, gh) = (cols as u32 * (w + gap) + gap, rows as u32 * (h + gap) + gap);
    let mut canvas = image::RgbImage::from_pixel(gw, gh, image::Rgb([96, 96, 96]));
    for (n, img) in images.iter().enumerate() {
        if img.width() * zoom != w || img.height() * zoom != h {
            return Err(format!(
                "image {n} is {}×{}, the grid's are {}×{}",
                img.width(),
                img.height(),
                w / zoom,
                h / zoom
            ));
        }
        let (ox, oy) = (
            gap + (n % cols) as u32 * (w + gap),
            gap + (n / cols) as u32 * (h + gap),
        );
        let c = img.channels().count();
        for y in 0..h {
            for x in 0..w {
                let i = (((y / zoom) * img.width() + x / zoom) as usize) * c;
                let px = match img.channels() {
                    Channels::L8 => [img.data()[i]; 3],
                    Channels::Rgb8 => [img.data()[i], img.data()[i + 1], img.data()[i + 2]],
                };
                canvas.put_pixel(ox + x, oy + y, image::Rgb(px));
            }
        }
    }
    write_canvas(&canvas, path)
}

/// Writes an RGB canvas as a PNG via a temporary file in the same folder, then renames it.
/// Best compression with adaptive filters: grids and charts are written rarely and kept (runs,
/// experiments in the repository), and this halves them against the encoder's default.
/// hrf-report writes its charts with it too.
pub fn write_canvas(canvas: &image::RgbImage, path: &Path) -> Result<(), String> {
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    use image::ImageEncoder;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let tmp = path.with_extension("png.tmp");
    let write = || -> Result<(), String> {
        let file = std::fs::File::create(&tmp).map_err(|e| e.to_string())?;
        let mut out = std::io::BufWriter::new(file);
        PngEncoder::new_with_quality(&mut out, CompressionType::Best, FilterType::Adaptive)
            .write_image(
                canvas.as_raw(),
                canvas.width(),
                canvas.height(),
                image::ExtendedColorType::Rgb8,
            )
            .map_err(|e| e.to_string())?;
        std::io::Write::flush(&mut out).map_err(|e| e.to_string())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("{}: {e}", tmp.display())
    })?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes one image as a PNG.
pub fn save_png(img: &Image, path: &Path) -> Result<(), String> {
    save_grid(std::slice::from_ref(img), 1, 1, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_has_the_expected_size_and_pixels() {
        let white = Image::new(4, 4, Channels::L8, vec![255; 16]).unwrap();
        let black = Image::new(4, 4, Channels::L8, vec![0; 16]).unwrap();
        let path = std::env::temp_dir().join(format!("hrf-grid-{}.png", std::process::id()));
        save_grid(&[white, black.clone(), black], 2, 2, &path).unwrap();
        let back = image::open(&path).unwrap().into_rgb8();
        assert_eq!(back.dimensions(), (2 * 10 + 2, 2 * 10 + 2));
        assert_eq!(back.get_pixel(2, 2).0, [255, 255, 255]);
        assert_eq!(back.get_pixel(12, 2).0, [0, 0, 0]);
        assert_eq!(back.get_pixel(0, 0).0, [96, 96, 96]);
        std::fs::remove_file(path).unwrap();
    }
}
