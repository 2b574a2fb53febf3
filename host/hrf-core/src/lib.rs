//! hrf-core: the types every part of hrf shares: 8-bit images and samples as rewards see them,
//! scores, the `Reward` trait and its errors. No tensors, no plugin runtimes here.

pub mod interrupt;
pub mod rng;
pub mod text;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Channels of an 8-bit image, interleaved row-major.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channels {
    /// Grey, one byte per pixel (the Fashion-MNIST testbed).
    L8,
    /// RGB, three bytes per pixel.
    Rgb8,
}

impl Channels {
    pub fn count(self) -> usize {
        match self {
            Self::L8 => 1,
            Self::Rgb8 => 3,
        }
    }

    pub fn from_count(n: usize) -> Option<Self> {
        match n {
            1 => Some(Self::L8),
            3 => Some(Self::Rgb8),
            _ => None,
        }
    }
}

/// An 8-bit image: the form in which the trainer hands samples to rewards
/// (docs/ARCHITECTURE.md §4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    width: u32,
    height: u32,
    channels: Channels,
    data: Vec<u8>,
}

impl Image {
    /// Fails when `data` does not hold exactly width × height × channels bytes.
    pub fn new(
        width: u32,
        height: u32,
        channels: Channels,
        data: Vec<u8>,
    ) -> Result<Self, ImageError> {
        let want = width as usize * height as usize * channels.count();
        if width == 0 || height == 0 || data.len() != want {
            return Err(ImageError::Size {
                width,
                height,
                channels,
                got: data.len(),
            });
        }
        Ok(Self {
            width,
            height,
            channels,
            data,
        })
    }

    /// Converts a model-space value x ∈ [−1, 1] to a byte: (x+1)/2·255, rounded, clamped.
    pub fn byte_from_unit(x: f32) -> u8 {
        (((x + 1.0) * 0.5 * 255.0).round()).clamp(0.0, 255.0) as u8
    }

    /// Builds an image from model-space values in channel-first (C, H, W) order, as a tensor holds
    /// one sample.
    pub fn from_chw_unit(
        width: u32,
        height: u32,
        channels: Channels,
        chw: &[f32],
    ) -> Result<Self, ImageError> {
        let (w, h, c) = (width as usize, height as usize, channels.count());
        if chw.len() != w * h * c {
            return Err(ImageError::Size {
                width,
                height,
                channels,
                got: chw.len(),
            });
        }
        let mut data = vec![0u8; chw.len()];
        for ch in 0..c {
            for p in 0..w * h {
                data[p * c + ch] = Self::byte_from_unit(chw[ch * w * h + p]);
            }
        }
        Self::new(width, height, channels, data)
    }

    pub fn width(&self) -> u32 {
        self.width
    }
    pub fn height(&self) -> u32 {
        self.height
    }
    pub fn channels(&self) -> Channels {
        self.channels
    }
    /// Interleaved row-major bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("image {width}×{height} {channels:?} needs {} values, got {got}", *width as usize * *height as usize * channels.count())]
    Size {
        width: u32,
        height: u32,
        channels: Channels,
        got: usize,
    },
}

/// What a reward sees of one generated sample: the ddpo/TRL `(images, prompts, metadata)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub image: Image,
    /// The prompt it was generated for; `None` for unconditional sampling.
    pub prompt: Option<String>,
    pub metadata: serde_json::Value,
}

/// The class a prompt names: the longest class name the prompt ends with (case-insensitive),
/// so "a photo of a shirt" is `shirt` and "a photo of a t-shirt" is `t-shirt`.
pub fn class_of_prompt(classes: &[String], prompt: &str) -> Option<usize> {
    let p = prompt.trim().trim_end_matches('.').to_lowercase();
    classes
        .iter()
        .enumerate()
        .filter(|(_, c)| p.ends_with(&c.to_lowercase()))
        .max_by_key(|(_, c)| c.len())
        .map(|(i, _)| i)
}

/// A reward's verdict on one sample: one finite value plus named extras for logging.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Score {
    pub value: f32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extras: BTreeMap<String, f32>,
}

impl Score {
    pub fn new(value: f32) -> Self {
        Self {
            value,
            extras: BTreeMap::new(),
        }
    }
}

/// What a reward says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewardInfo {
    pub name: String,
    pub version: String,
    /// Whether larger values are better; the trainer maximises `value` or `−value` accordingly.
    pub higher_is_better: bool,
    /// The batch size the reward prefers, if any.
    pub batch_hint: Option<u32>,
}

impl RewardInfo {
    /// `name@version`, the way every error names a reward.
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RewardError {
    #[error("reward {reward}: {message}")]
    Failed { reward: String, message: String },
    #[error("reward {reward}: returned {got} scores for {want} samples")]
    WrongCount {
        reward: String,
        want: usize,
        got: usize,
    },
    #[error("reward {reward}: sample {index} scored {value} (not finite)")]
    NotFinite {
        reward: String,
        index: usize,
        value: f32,
    },
    #[error("reward {reward}: {message}")]
    Config { reward: String, message: String },
}

/// A reward function over 8-bit samples.
pub trait Reward: Send {
    fn info(&self) -> RewardInfo;

    /// One score per sample, in order.
    fn score(&mut self, samples: &[Sample]) -> Result<Vec<Score>, RewardError>;

    /// What the calls since the last time this was asked cost, for metrics.jsonl (a network
    /// reward's requests, retries and latency); `None` for rewards that keep no such record.
    fn take_call_stats(&mut self) -> Option<CallStats> {
        None
    }
}

/// What a network reward's requests cost over some calls: logged per epoch
/// (`reward_requests` in metrics.jsonl).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CallStats {
    /// Requests that got an answer or failed for good (retries not counted).
    pub requests: u64,
    /// Attempts after the first, over every request.
    pub retries: u64,
    /// Requests that failed after their retries.
    pub failures: u64,
    /// Wall seconds of every request, retries and back-off included.
    pub latency_s_sum: f64,
    pub latency_s_max: f64,
}

impl CallStats {
    /// What was counted so far, leaving nothing counted; `None` when no request was made.
    pub fn take(&mut self) -> Option<CallStats> {
        let s = std::mem::take(self);
        (s.requests > 0).then_some(s)
    }

    pub fn add(&mut self, other: &CallStats) {
        self.requests += other.requests;
        self.retries += other.retries;
        self.failures += other.failures;
        self.latency_s_sum += other.latency_s_sum;
        self.latency_s_max = self.latency_s_max.max(other.latency_s_max);
    }
}

/// Checks what a reward returned: one finite value per sample. Every reward's output passes here
/// before the trainer uses it (`RewardSet` checks each of its rewards).
pub fn check_scores(
    info: &RewardInfo,
    samples: usize,
    scores: &[Score],
) -> Result<(), RewardError> {
    check_count(info, samples, scores)?;
    if let Some((index, s)) = scores
        .iter()
        .enumerate()
        .find(|(_, s)| !s.value.is_finite())
    {
        return Err(RewardError::NotFinite {
            reward: info.label(),
            index,
            value: s.value,
        });
    }
    Ok(())
}

/// Checks that a reward returned one score per sample. Plugins check this themselves (scores
/// that do not match their samples are useless); whether a NaN fails the batch or skips its
/// sample is the reward set's decision (`on_error`), so they leave values to it.
pub fn check_count(info: &RewardInfo, samples: usize, scores: &[Score]) -> Result<(), RewardError> {
    if scores.len() != samples {
        return Err(RewardError::WrongCount {
            reward: info.label(),
            want: samples,
            got: scores.len(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_from_unit_values() {
        assert_eq!(Image::byte_from_unit(-1.0), 0);
        assert_eq!(Image::byte_from_unit(1.0), 255);
        assert_eq!(Image::byte_from_unit(0.0), 128); // 127.5 rounds away from zero
        assert_eq!(Image::byte_from_unit(-3.0), 0);
        assert_eq!(Image::byte_from_unit(7.0), 255);
    }

    #[test]
    fn chw_becomes_interleaved() {
        // 2×1 RGB: R plane, G plane, B plane.
        let chw = [1.0, -1.0, -1.0, 1.0, 0.0, 0.0];
        let img = Image::from_chw_unit(2, 1, Channels::Rgb8, &chw).unwrap();
        assert_eq!(img.data(), &[255, 0, 128, 0, 255, 128]);
    }

    #[test]
    fn wrong_sizes_are_refused() {
        assert!(Image::new(2, 2, Channels::L8, vec![0; 3]).is_err());
        assert!(Image::new(0, 2, Channels::L8, vec![]).is_err());
        assert!(Image::from_chw_unit(2, 2, Channels::Rgb8, &[0.0; 4]).is_err());
    }

    #[test]
    fn prompts_name_their_class() {
        let classes: Vec<String> = ["t-shirt", "shirt", "bag"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(class_of_prompt(&classes, "a photo of a shirt"), Some(1));
        assert_eq!(class_of_prompt(&classes, "a photo of a T-shirt."), Some(0));
        assert_eq!(class_of_prompt(&classes, "a photo of a dog"), None);
    }

    #[test]
    fn scores_are_checked() {
        let info = RewardInfo {
            name: "r".into(),
            version: "1".into(),
            higher_is_better: true,
            batch_hint: None,
        };
        assert!(check_scores(&info, 2, &[Score::new(1.0), Score::new(2.0)]).is_ok());
        let e = check_scores(&info, 3, &[Score::new(1.0)]).unwrap_err();
        assert!(e.to_string().contains("r@1") && e.to_string().contains("1 scores for 3"));
        let e = check_scores(&info, 2, &[Score::new(1.0), Score::new(f32::NAN)]).unwrap_err();
        assert!(matches!(e, RewardError::NotFinite { index: 1, .. }));
    }
}
