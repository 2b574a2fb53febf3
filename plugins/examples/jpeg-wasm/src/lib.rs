//! Example WASM reward plugin: JPEG (in)compressibility computed inside the sandbox, as
//! ddpo-pytorch defines it — the size in kB (1 kB = 1000 bytes) of the image saved as a
//! baseline JPEG (quality 95 unless `config.quality` says otherwise, 4:2:0 chroma), negated for
//! compressibility (`config.direction: compressibility | incompressibility`).

use hrf_reward_sdk::serde_json::Value;
use hrf_reward_sdk::{export_reward, Info, Reward, RewardError, Sample, Score};
use jpeg_encoder::{ColorType, Encoder, SamplingFactor};

struct Jpeg {
    quality: u8,
    sign: f32,
}

impl Reward for Jpeg {
    fn info() -> Info {
        Info {
            batch_hint: Some(64),
            ..Info::new("jpeg-wasm", env!("CARGO_PKG_VERSION"))
        }
    }

    fn configure(config: &Value) -> Result<Self, RewardError> {
        let quality = match config.get("quality") {
            None => 95,
            Some(q) => q
                .as_u64()
                .filter(|q| (1..=100).contains(q))
                .ok_or_else(|| RewardError::Config(format!("quality: 1..=100, got {q}")))?
                as u8,
        };
        let sign = match config.get("direction").and_then(|d| d.as_str()) {
            None | Some("compressibility") => -1.0,
            Some("incompressibility") => 1.0,
            Some(other) => {
                return Err(RewardError::Config(format!(
                    "direction: compressibility or incompressibility, got {other:?}"
                )))
            }
        };
        if let Some(obj) = config.as_object() {
            if let Some(k) = obj
                .keys()
                .find(|k| !["quality", "direction"].contains(&k.as_str()))
            {
                return Err(RewardError::Config(format!(
                    "unknown key {k:?} (known: quality, direction)"
                )));
            }
        }
        Ok(Jpeg { quality, sign })
    }

    fn score(&mut self, samples: &[Sample]) -> Result<Vec<Score>, RewardError> {
        samples
            .iter()
            .enumerate()
            .map(|(index, s)| {
                let img = &s.image;
                let color = match img.channels {
                    1 => ColorType::Luma,
                    3 => ColorType::Rgb,
                    c => {
                        return Err(RewardError::InvalidSample {
                            index: index as u32,
                            message: format!("{c} channels (1 or 3 expected)"),
                        })
                    }
                };
                let mut buf = Vec::with_capacity(img.data.len() / 4 + 1024);
                let mut enc = Encoder::new(&mut buf, self.quality);
                enc.set_sampling_factor(SamplingFactor::R_4_2_0);
                enc.encode(&img.data, img.width as u16, img.height as u16, color)
                    .map_err(|e| RewardError::InvalidSample {
                        index: index as u32,
                        message: e.to_string(),
                    })?;
                let kb = buf.len() as f32 / 1000.0;
                Ok(Score::new(self.sign * kb).with_extra("bytes", buf.len() as f32))
            })
            .collect()
    }
}

export_reward!(Jpeg);
