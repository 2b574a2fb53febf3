//! Images as servers take them: PNG files, and PNG data URLs for chat messages.

use base64::Engine;
use hrf_core::Image;

/// An image as a PNG file.
pub fn png_bytes(image: &Image) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, image.width(), image.height());
    enc.set_color(match image.channels() {
        hrf_core::Channels::L8 => png::ColorType::Grayscale,
        hrf_core::Channels::Rgb8 => png::ColorType::Rgb,
    });
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().map_err(|e| e.to_string())?;
    w.write_image_data(image.data())
        .map_err(|e| e.to_string())?;
    w.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

/// An image as a `data:image/png;base64,…` URL (an OpenAI-compatible chat message's image).
pub fn png_data_url(image: &Image) -> Result<String, String> {
    let png = png_bytes(image)?;
    Ok(format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    ))
}
