//! What a run pipeline can run: sizes against fixed caps and against an estimate of the memory
//! the model, the batches and the epoch's trajectories take; the run folder's name and path
//! against the file system's limits. `hrf validate` and `hrf run` refuse what would otherwise
//! abort on an allocation, panic inside libtorch or fail to create the run folder.

use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use crate::model_spec::ModelSource;

/// Most images in one batch (`sampling.batch_size`, `training.batch_size`,
/// `evaluation.batch_size`, a reward's `batch_size`, `training.hrf.copies`).
pub const MAX_BATCH: usize = 65_536;
/// Most batches in one epoch.
pub const MAX_BATCHES_PER_EPOCH: usize = 65_536;
/// Most samples in one epoch (`sampling.batch_size × sampling.batches_per_epoch`).
pub const MAX_SAMPLES_PER_EPOCH: usize = 1 << 20;
/// Most epochs.
pub const MAX_EPOCHS: usize = 1_000_000;
/// Most samples of a whole run (`training.epochs × samples per epoch`).
pub const MAX_RUN_SAMPLES: u128 = 1_000_000_000;
/// Most samples of one evaluation (`evaluation.samples`, `evaluation.final_samples`).
pub const MAX_EVAL_SAMPLES: usize = 1_000_000;
/// Largest width or height of a reward's input (`rewards[i].input.size`).
pub const MAX_IMAGE_SIDE: u32 = 8_192;
/// Most elements of one tensor: 2³¹ − 1, past which many libtorch and cuDNN kernels (32-bit
/// indexing) fail.
pub const MAX_TENSOR_ELEMENTS: u128 = i32::MAX as u128;
/// The memory estimate's cap where the machine's RAM is larger or unknown: 1 TiB.
pub const MEMORY_CAP: u64 = 1 << 40;
/// Longest file name (bytes), as on Linux file systems (NAME_MAX).
pub const NAME_MAX: usize = 255;
/// Longest path (bytes), as on Linux (PATH_MAX).
pub const PATH_MAX: usize = 4096;
/// What hrf appends to `run.name` for the run folder: `-YYYYMMDD-HHMMSS`.
pub const RUN_SUFFIX_LEN: usize = "-YYYYMMDD-HHMMSS".len();
/// Room kept for the paths hrf writes inside a run folder
/// (`checkpoints/.0001.tmp/model/diffusion_pytorch_model.safetensors` and the like).
pub const RUN_FOLDER_RESERVE: usize = 128;

/// The shape of a UNet as far as memory goes, from its config.json (or a named config).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelShape {
    pub channels: u64,
    pub height: u64,
    pub width: u64,
    /// Channels at each resolution, highest first.
    pub block_out_channels: Vec<u64>,
    pub layers_per_block: u64,
    /// Whether each resolution's down block has attention.
    pub attention: Vec<bool>,
    /// Channels per attention head (diffusers' `attention_head_dim`); none: one head.
    pub head_dim: Option<u64>,
    /// The weights' size in bytes (float32).
    pub weight_bytes: u64,
}

impl ModelShape {
    /// The shape of the model a pipeline names; none when its config cannot be read (loading
    /// the model reports that).
    pub fn of(source: &ModelSource) -> Option<Self> {
        match source {
            ModelSource::Named(name) => Self::named(name),
            ModelSource::Folder(dir) => {
                let (config, weights) = [dir.to_path_buf(), dir.join("unet")]
                    .into_iter()
                    .map(|d| (d.join("config.json"), d.join(WEIGHTS_FILE)))
                    .find(|(c, _)| c.is_file())?;
                let config: Value =
                    serde_json::from_str(&std::fs::read_to_string(config).ok()?).ok()?;
                let bytes = std::fs::metadata(weights).ok().map(|m| m.len());
                Self::from_config(&config, bytes)
            }
        }
    }

    /// The named architectures (hrf-diffusion's `UNetConfig::named`); weights as float32.
    pub fn named(name: &str) -> Option<Self> {
        let shape = |c, side, blocks: &[u64], attention: &[bool], head_dim, params: u64| Self {
            channels: c,
            height: side,
            width: side,
            block_out_channels: blocks.to_vec(),
            layers_per_block: if c == 1 { 1 } else { 2 },
            attention: attention.to_vec(),
            head_dim,
            weight_bytes: params * 4,
        };
        match name {
            "testbed" => Some(shape(
                1,
                32,
                &[16, 32, 32],
                &[false, true, false],
                Some(16),
                285_000,
            )),
            "testbed-wide" => Some(shape(
                1,
                32,
                &[32, 64, 64],
                &[false, true, false],
                Some(32),
                1_118_000,
            )),
            "ddpm-celebahq-256" => Some(shape(
                3,
                256,
                &[128, 128, 256, 256, 512, 512],
                &[false, false, false, false, true, false],
                None,
                113_673_000,
            )),
            "ddpm-cifar10-32" => Some(shape(
                3,
                32,
                &[128, 256, 256, 256],
                &[false, true, false, false],
                None,
                35_746_000,
            )),
            _ => None,
        }
    }

    /// From a diffusers UNet2DModel config.json; `weight_bytes` is the weights file's size
    /// (when absent: 4 bytes for each parameter of the convolutions, roughly).
    pub fn from_config(config: &Value, weight_bytes: Option<u64>) -> Option<Self> {
        let u = |key: &str, default: u64| config.get(key).map_or(Some(default), Value::as_u64);
        let (height, width) = match config.get("sample_size") {
            None | Some(Value::Null) => (32, 32),
            Some(Value::Array(hw)) if hw.len() == 2 => (hw[0].as_u64()?, hw[1].as_u64()?),
            Some(v) => (v.as_u64()?, v.as_u64()?),
        };
        let blocks: Vec<u64> = match config.get("block_out_channels") {
            None => vec![224, 448, 672, 896],
            Some(v) => v
                .as_array()?
                .iter()
                .map(Value::as_u64)
                .collect::<Option<_>>()?,
        };
        if blocks.is_empty() {
            return None;
        }
        let attention = match config.get("down_block_types").and_then(Value::as_array) {
            Some(types) => types
                .iter()
                .map(|t| t.as_str().is_some_and(|t| t.contains("Attn")))
                .collect(),
            None => vec![false; blocks.len()],
        };
        let layers_per_block = u("layers_per_block", 2)?;
        let weight_bytes = weight_bytes.unwrap_or_else(|| {
            // Two 3×3 convolutions per resnet, 2L + 1 resnets per resolution.
            blocks
                .iter()
                .map(|&c| 4 * 18 * c * c * (2 * layers_per_block + 1))
                .sum()
        });
        Some(Self {
            channels: u("in_channels", 3)?,
            height,
            width,
            block_out_channels: blocks,
            layers_per_block,
            attention,
            head_dim: config.get("attention_head_dim").and_then(Value::as_u64),
            weight_bytes,
        })
    }

    /// Elements of one image.
    pub fn image_elements(&self) -> u128 {
        self.channels as u128 * self.height as u128 * self.width as u128
    }

    /// (channels, pixels, attention heads) at each resolution (the lowest also has the middle
    /// block's attention).
    fn levels(&self) -> Vec<(u128, u128, Option<u128>)> {
        let last = self.block_out_channels.len() - 1;
        self.block_out_channels
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let h = self.height.div_ceil(1 << i.min(63)).max(1) as u128;
                let w = self.width.div_ceil(1 << i.min(63)).max(1) as u128;
                let attn = i == last || self.attention.get(i).copied().unwrap_or(false);
                let heads = self.head_dim.map_or(1, |d| (c / d.max(1)).max(1)) as u128;
                (c as u128, h * w, attn.then_some(heads))
            })
            .collect()
    }

    /// The largest tensor of one sample's forward pass, in elements, and what it is.
    pub fn largest_tensor(&self) -> (u128, String) {
        let mut best = (self.image_elements(), "the image".to_string());
        for (c, hw, heads) in self.levels() {
            if c * hw > best.0 {
                best = (c * hw, format!("the {c}-channel feature map"));
            }
            if let Some(heads) = heads {
                if heads * hw * hw > best.0 {
                    best = (
                        heads * hw * hw,
                        format!("the attention scores over {hw} pixels"),
                    );
                }
            }
        }
        best
    }

    /// Bytes one sample takes in a forward pass without gradients: the skip connections kept
    /// for the up path, a few working feature maps and the attention scores.
    pub fn inference_bytes(&self) -> u128 {
        let l = self.layers_per_block as u128;
        let levels = self.levels();
        let skips: u128 = levels.iter().map(|(c, hw, _)| c * hw * (l + 1)).sum();
        let work = levels.iter().map(|(c, hw, _)| c * hw).max().unwrap_or(0) * 4;
        let attn = levels
            .iter()
            .filter_map(|(_, hw, h)| h.map(|h| h * hw * hw * 2))
            .max()
            .unwrap_or(0);
        4 * (skips + work + attn)
    }

    /// Bytes one sample takes in a forward and backward pass: every activation kept (about ten
    /// feature maps per resnet, 2L + 1 resnets per resolution) and the attention scores.
    pub fn training_bytes(&self) -> u128 {
        let l = self.layers_per_block as u128;
        let per_level: u128 = self
            .levels()
            .iter()
            .map(|(c, hw, heads)| {
                let resnets = c * hw * 10 * (2 * l + 1);
                let attn = heads.map_or(0, |h| (l + 1) * (h * hw * hw * 3 + c * hw * 6));
                resnets + attn
            })
            .sum();
        4 * per_level
    }
}

const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";

/// The sizes the memory estimate needs, from the pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSizes {
    pub sampling_batch: usize,
    pub batches_per_epoch: usize,
    pub steps: u64,
    /// Rows of one training pass, and the field that sets it.
    pub training_batch: usize,
    pub training_field: &'static str,
    pub evaluation_batch: usize,
    pub final_samples: usize,
    /// Classifier-free guidance doubles the batch (conditional runs, weight ≠ 1).
    pub guided_sampling: bool,
    pub guided_evaluation: bool,
    /// A KL term keeps a frozen copy of the base model.
    pub base_copy: bool,
    /// Images per reward call and their input size (width, height, channels).
    pub reward_inputs: Vec<(usize, u64)>,
}

/// One part of the estimate: what, the field that sizes it, bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub what: String,
    pub field: &'static str,
    pub bytes: u128,
}

/// The memory a run takes, roughly: the parts that are held at once.
pub fn memory_estimate(shape: &ModelShape, s: &RunSizes) -> Vec<Part> {
    let n = |v: usize| v as u128;
    let cfg = |guided: bool| if guided { 2 } else { 1 };
    let weights = shape.weight_bytes as u128;
    let copies = 4 + s.base_copy as u128;
    let samples = n(s.sampling_batch) * n(s.batches_per_epoch);
    let reward = s
        .reward_inputs
        .iter()
        .map(|&(batch, elements)| n(batch) * elements as u128 * 4 * 2)
        .max()
        .unwrap_or(0);
    vec![
        Part {
            what: format!(
                "the model, its gradients and AdamW's two moments{}",
                if s.base_copy {
                    " and the frozen base model"
                } else {
                    ""
                }
            ),
            field: "model",
            bytes: weights * copies,
        },
        Part {
            what: format!("a sampling batch of {}", s.sampling_batch),
            field: "sampling.batch_size",
            bytes: n(s.sampling_batch) * cfg(s.guided_sampling) * shape.inference_bytes(),
        },
        Part {
            what: format!("a training pass of {} with gradients", s.training_batch),
            field: s.training_field,
            bytes: n(s.training_batch) * cfg(s.guided_sampling) * shape.training_bytes(),
        },
        Part {
            what: format!("an evaluation batch of {}", s.evaluation_batch),
            field: "evaluation.batch_size",
            bytes: n(s.evaluation_batch) * cfg(s.guided_evaluation) * shape.inference_bytes(),
        },
        Part {
            what: format!(
                "the epoch's {samples} trajectories of {} latents",
                s.steps as u128 + 1
            ),
            field: "sampling.batches_per_epoch",
            bytes: samples * (s.steps as u128 + 1) * (shape.image_elements() + 1) * 4,
        },
        Part {
            what: format!("the final evaluation's {} images", s.final_samples),
            field: "evaluation.final_samples",
            bytes: n(s.final_samples) * shape.image_elements() * 4 * 2,
        },
        Part {
            what: "a reward batch".into(),
            field: "rewards",
            bytes: reward,
        },
    ]
}

/// The memory the estimate may take: the machine's RAM (/proc/meminfo's MemTotal), at most
/// `MEMORY_CAP`; and what that limit is, in words.
pub fn memory_limit() -> (u64, String) {
    let ram = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        let line = t.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb.saturating_mul(1024))
    });
    match ram {
        Some(ram) if ram < MEMORY_CAP => (ram, "this machine's RAM (/proc/meminfo)".into()),
        Some(_) => (MEMORY_CAP, "hrf's cap".into()),
        None => (
            MEMORY_CAP,
            "hrf's cap (the machine's RAM is unknown)".into(),
        ),
    }
}

/// Bytes in GiB, for messages.
pub fn gib(bytes: u128) -> String {
    let g = bytes as f64 / (1u64 << 30) as f64;
    if g >= 100.0 {
        format!("{g:.0} GiB")
    } else if g >= 0.1 {
        format!("{g:.1} GiB")
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

/// The problem with an estimate larger than `limit`: the field of its largest part and the
/// message.
pub fn memory_problem(
    parts: &[Part],
    limit: u64,
    limit_is: &str,
) -> Option<(&'static str, String)> {
    let total: u128 = parts.iter().map(|p| p.bytes).sum();
    if total <= limit as u128 {
        return None;
    }
    let mut by_size: Vec<&Part> = parts.iter().filter(|p| p.bytes > 0).collect();
    by_size.sort_by_key(|p| std::cmp::Reverse(p.bytes));
    let largest = by_size[0];
    let listed: Vec<String> = by_size
        .iter()
        .take(3)
        .map(|p| format!("{} {}", p.what, gib(p.bytes)))
        .collect();
    Some((
        largest.field,
        format!(
            "the run needs an estimated {} of memory ({}), more than the limit of {} ({limit_is}): \
             make the batches or the epoch smaller",
            gib(total),
            listed.join(", "),
            gib(limit as u128)
        ),
    ))
}

/// What is wrong with `name` as the start of a run folder's name (`<name>-YYYYMMDD-HHMMSS`).
pub fn run_name_problem(name: &str) -> Option<String> {
    if let Some(c) = name.chars().find(|&c| c == '/' || c == '\0') {
        return Some(format!(
            "{name:?}: {} cannot be in a file name; use letters, digits, '.', '_' and '-'",
            if c == '/' { "'/'" } else { "NUL" }
        ));
    }
    let folder = name.len() + RUN_SUFFIX_LEN;
    (folder > NAME_MAX).then(|| {
        format!(
            "{} bytes long: with the `-YYYYMMDD-HHMMSS` hrf appends, the run folder's name would be \
             {folder} bytes, over the file-system limit of {NAME_MAX} (NAME_MAX); use at most {}",
            name.len(),
            NAME_MAX - RUN_SUFFIX_LEN
        )
    })
}

/// What is wrong with `output` (absolute) as the folder run folders go in, for a run named
/// `name`.
pub fn output_problem(output: &Path, name: &str) -> Option<String> {
    let bytes = output.as_os_str().as_encoded_bytes();
    if bytes.contains(&0) {
        return Some("contains a NUL byte, which cannot be in a path".into());
    }
    if let Some(long) = output
        .components()
        .map(|c| c.as_os_str())
        .find(|c| c.len() > NAME_MAX)
    {
        return Some(format!(
            "a part of {} is {} bytes long, over the file-system limit of {NAME_MAX} (NAME_MAX)",
            output.display(),
            long.len()
        ));
    }
    let total = bytes.len() + 1 + name.len() + RUN_SUFFIX_LEN + 1 + RUN_FOLDER_RESERVE;
    (total > PATH_MAX).then(|| {
        format!(
            "{} is {} bytes long: with the run folder ({} bytes) and the {RUN_FOLDER_RESERVE} \
             bytes kept for the files inside it, paths would reach {total} bytes, over the limit \
             of {PATH_MAX} (PATH_MAX)",
            output.display(),
            bytes.len(),
            name.len() + RUN_SUFFIX_LEN
        )
    })
}

/// `path` with `.` and `..` taken out without touching the file system (`a/b/../c` → `a/c`).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() && !out.has_root() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// One spelling per file: the real path when it exists (links followed), else `normalize`d.
pub fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| normalize(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(sampling_batch: usize) -> RunSizes {
        RunSizes {
            sampling_batch,
            batches_per_epoch: 2,
            steps: 40,
            training_batch: 16,
            training_field: "training.batch_size",
            evaluation_batch: 64,
            final_samples: 1000,
            guided_sampling: false,
            guided_evaluation: false,
            base_copy: false,
            reward_inputs: vec![(256, 1024)],
        }
    }

    fn testbed_folder() -> ModelShape {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/testbed");
        ModelShape::of(&ModelSource::Folder(dir)).expect("the testbed's config.json")
    }

    #[test]
    fn the_testbed_folder_and_its_named_config_agree() {
        let folder = testbed_folder();
        let named = ModelShape::named("testbed").unwrap();
        assert_eq!(
            ModelShape {
                weight_bytes: named.weight_bytes,
                ..folder.clone()
            },
            named
        );
        // The file holds float32 weights (and a small header).
        let ratio = folder.weight_bytes as f64 / named.weight_bytes as f64;
        assert!((0.95..1.05).contains(&ratio), "{ratio}");
        let wide = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/testbed-wide");
        let wide = ModelShape::of(&ModelSource::Folder(wide)).unwrap();
        let named = ModelShape::named("testbed-wide").unwrap();
        assert_eq!(wide.block_out_channels, named.block_out_channels);
        let ratio = wide.weight_bytes as f64 / named.weight_bytes as f64;
        assert!((0.95..1.05).contains(&ratio), "{ratio}");
    }

    #[test]
    fn shapes_come_from_diffusers_configs() {
        let c = serde_json::json!({
            "sample_size": [64, 48], "in_channels": 3, "block_out_channels": [8, 16],
            "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "layers_per_block": 1
        });
        let s = ModelShape::from_config(&c, Some(100)).unwrap();
        assert_eq!((s.channels, s.height, s.width), (3, 64, 48));
        assert_eq!(s.attention, [false, true]);
        assert_eq!((s.head_dim, s.weight_bytes), (None, 100));
        // 32×24 pixels at the attention level, one head: 768² scores.
        assert_eq!(s.largest_tensor().0, 768 * 768);
        for bad in [
            serde_json::json!({"sample_size": "big"}),
            serde_json::json!({"block_out_channels": []}),
            serde_json::json!({"in_channels": -1}),
        ] {
            assert_eq!(ModelShape::from_config(&bad, None), None, "{bad}");
        }
    }

    #[test]
    fn the_estimate_grows_with_the_batch_and_names_its_largest_part() {
        let shape = testbed_folder();
        let small: u128 = memory_estimate(&shape, &sizes(32))
            .iter()
            .map(|p| p.bytes)
            .sum();
        // The shipped settings need well under a GiB.
        assert!(small < 1 << 30, "{}", gib(small));
        assert_eq!(
            memory_problem(&memory_estimate(&shape, &sizes(32)), 1 << 30, "x"),
            None
        );
        let parts = memory_estimate(&shape, &sizes(60_000));
        let (field, msg) = memory_problem(&parts, 16 << 30, "this machine's RAM").unwrap();
        assert_eq!(field, "sampling.batch_size");
        assert!(
            msg.starts_with("the run needs an estimated ")
                && msg.contains("a sampling batch of 60000"),
            "{msg}"
        );
        assert!(
            msg.contains("more than the limit of 16.0 GiB (this machine's RAM)"),
            "{msg}"
        );
        // The limit is the machine's RAM, never more than the cap.
        let (limit, what) = memory_limit();
        assert!(limit > 0 && limit <= MEMORY_CAP, "{limit} {what}");
    }

    #[test]
    fn the_largest_tensor_of_the_testbed_is_its_attention() {
        let (elements, what) = testbed_folder().largest_tensor();
        // 32 channels in heads of 16 at 16×16: 2 × 256².
        assert_eq!(elements, 2 * 256 * 256);
        assert!(what.contains("attention"), "{what}");
    }

    #[test]
    fn run_names_and_outputs_fit_the_file_system() {
        let cases: &[(&str, Option<&str>)] = &[
            ("quickstart", None),
            (&"a".repeat(239), None),
            (
                &"a".repeat(240),
                Some("run folder's name would be 256 bytes"),
            ),
            (&"a".repeat(300), Some("use at most 239")),
            ("a/b", Some("'/' cannot be in a file name")),
            ("a\0b", Some("NUL cannot be in a file name")),
        ];
        for (name, want) in cases {
            let got = run_name_problem(name);
            match want {
                None => assert_eq!(got, None, "{name}"),
                Some(w) => {
                    let got = got.unwrap_or_else(|| panic!("{name}: accepted"));
                    assert!(got.contains(w), "{name}: {got}");
                }
            }
        }
        let long_part = format!("/tmp/{}/runs", "x".repeat(256));
        let deep = format!("/tmp{}", "/x".repeat(2000));
        let cases: &[(&str, Option<&str>)] = &[
            ("/tmp/runs", None),
            ("/tmp/r\0s", Some("NUL")),
            (
                &long_part,
                Some("256 bytes long, over the file-system limit of 255"),
            ),
            (&deep, Some("over the limit of 4096 (PATH_MAX)")),
        ];
        for (output, want) in cases {
            let got = output_problem(Path::new(output), "quickstart");
            match want {
                None => assert_eq!(got, None, "{output}"),
                Some(w) => {
                    let got = got.unwrap_or_else(|| panic!("{output}: accepted"));
                    assert!(got.contains(w), "{got}");
                }
            }
        }
    }

    #[test]
    fn paths_have_one_spelling() {
        let cases = [
            ("/a/b/../c", "/a/c"),
            ("/a/./b/", "/a/b"),
            ("/a/b/../../..", "/"),
            ("a/../../b", "../b"),
        ];
        for (path, want) in cases {
            assert_eq!(normalize(Path::new(path)), Path::new(want), "{path}");
        }
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        assert_eq!(
            canonical(&repo.join("configs/../models/testbed")),
            canonical(&repo.join("models/testbed"))
        );
        assert!(!canonical(&repo).to_string_lossy().contains(".."));
    }
}
