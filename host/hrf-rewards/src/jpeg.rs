//! JPEG (in)compressibility, as ddpo-pytorch defines it: the size in kB (1 kB = 1000 bytes) of the
//! image saved as a quality-95 baseline JPEG with standard Huffman tables and 4:2:0 chroma
//! subsampling (PIL's defaults); compressibility is its negative.

use hrf_core::{Channels, Reward, RewardError, RewardInfo, Sample, Score};
use jpeg_encoder::{ColorType, Encoder, SamplingFactor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JpegDirection {
    /// Reward = −size: smaller files are better.
    Compressibility,
    /// Reward = +size: larger files are better.
    Incompressibility,
}

#[derive(Debug, Clone)]
pub struct JpegCompressibility {
    pub direction: JpegDirection,
    pub quality: u8,
}

impl JpegCompressibility {
    pub fn new(direction: JpegDirection) -> Self {
        Self {
            direction,
            quality: 95,
        }
    }

    /// The encoded size in bytes.
    pub fn encoded_size(&self, image: &hrf_core::Image) -> Result<usize, String> {
        let (w, h) = (image.width(), image.height());
        if w > u16::MAX as u32 || h > u16::MAX as u32 {
            return Err(format!("{w}×{h} is larger than JPEG allows"));
        }
        let mut buf = Vec::with_capacity(image.data().len() / 4 + 1024);
        let mut enc = Encoder::new(&mut buf, self.quality);
        enc.set_sampling_factor(SamplingFactor::R_4_2_0);
        let color = match image.channels() {
            Channels::L8 => ColorType::Luma,
            Channels::Rgb8 => ColorType::Rgb,
        };
        enc.encode(image.data(), w as u16, h as u16, color)
            .map_err(|e| e.to_string())?;
        Ok(buf.len())
    }
}

impl Reward for JpegCompressibility {
    fn info(&self) -> RewardInfo {
        let name = match self.direction {
            JpegDirection::Compressibility => "jpeg-compressibility",
            JpegDirection::Incompressibility => "jpeg-incompressibility",
        };
        RewardInfo {
            name: name.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            higher_is_better: true,
            batch_hint: None,
        }
    }

    fn score(&mut self, samples: &[Sample]) -> Result<Vec<Score>, RewardError> {
        let sign = match self.direction {
            JpegDirection::Compressibility => -1.0,
            JpegDirection::Incompressibility => 1.0,
        };
        samples
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let bytes = self
                    .encoded_size(&s.image)
                    .map_err(|message| RewardError::Failed {
                        reward: self.info().label(),
                        message: format!("sample {i}: {message}"),
                    })?;
                let kb = bytes as f32 / 1000.0;
                let mut score = Score::new(sign * kb);
                score.extras.insert("jpeg_kb".into(), kb);
                Ok(score)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hrf_core::Image;

    fn sample(image: Image) -> Sample {
        Sample {
            image,
            prompt: None,
            metadata: serde_json::Value::Null,
        }
    }

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn flat_images_compress_better_than_noise() {
        let flat = sample(Image::new(32, 32, Channels::L8, vec![128; 1024]).unwrap());
        let busy = sample(Image::new(32, 32, Channels::L8, noise(1024, 7)).unwrap());
        let mut r = JpegCompressibility::new(JpegDirection::Compressibility);
        let s = r.score(&[flat.clone(), busy.clone()]).unwrap();
        assert!(s[0].value > s[1].value, "{s:?}");
        assert!(s[0].value < 0.0);
        let mut inc = JpegCompressibility::new(JpegDirection::Incompressibility);
        let t = inc.score(&[flat, busy]).unwrap();
        assert_eq!(t[0].value, -s[0].value);
        assert!(t[1].value > t[0].value);
    }

    #[test]
    fn sizes_are_whole_jpeg_files() {
        // A baseline JPEG of an 8×8 flat grey block: SOI, tables, SOF, SOS, one block, EOI.
        let img = Image::new(8, 8, Channels::L8, vec![200; 64]).unwrap();
        let size = JpegCompressibility::new(JpegDirection::Compressibility)
            .encoded_size(&img)
            .unwrap();
        assert!((150..700).contains(&size), "{size} bytes");
        let rgb = Image::new(16, 8, Channels::Rgb8, noise(16 * 8 * 3, 3)).unwrap();
        let size_rgb = JpegCompressibility::new(JpegDirection::Compressibility)
            .encoded_size(&rgb)
            .unwrap();
        assert!(size_rgb > size);
    }
}
