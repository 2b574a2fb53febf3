//! The decoder of diffusers' `AutoencoderKL` (a Stable Diffusion folder's `vae/`: `config.json`,
//! `diffusion_pytorch_model.safetensors`): `post_quant_conv`, then `conv_in`, the mid block
//! (resnet, single-head attention, resnet), the `UpDecoderBlock2D`s (layers_per_block + 1
//! resnets each, nearest ×2 and a conv between levels), group norm, SiLU, `conv_out`.
//! `decode_latents` does what StableDiffusionPipeline does with the last latents: divide by
//! `scaling_factor`, decode, map [−1, 1] to [0, 1]. The encoder's weights in the same file are
//! read past (image-to-latent is not built yet). A test checks the decodings against diffusers.

use std::path::Path;

use serde::Deserialize;
use tch::{nn, Device, Tensor};

use crate::diffusers_model::{load_part, modern_key, WEIGHTS_FILE};
use crate::unet::{conv3, group_norm, upsample2x, ResnetBlock, SpatialAttention};
use crate::DiffusionError;

/// The fields of an `AutoencoderKL` config the decoder needs (others are ignored).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VaeConfig {
    pub out_channels: i64,
    pub latent_channels: i64,
    pub block_out_channels: Vec<i64>,
    pub layers_per_block: i64,
    pub norm_num_groups: i64,
    #[serde(default = "default_up_blocks")]
    pub up_block_types: Vec<String>,
    #[serde(default = "default_scaling_factor")]
    pub scaling_factor: f64,
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
    #[serde(default = "silu")]
    pub act_fn: String,
}

fn default_up_blocks() -> Vec<String> {
    vec!["UpDecoderBlock2D".into()]
}

fn default_scaling_factor() -> f64 {
    0.18215
}

fn yes() -> bool {
    true
}

fn silu() -> String {
    "silu".into()
}

impl VaeConfig {
    fn validate(&self) -> Result<(), String> {
        let n = self.block_out_channels.len();
        if n == 0 || self.block_out_channels.iter().any(|&c| c < 1) {
            return Err("block_out_channels: give at least one positive width".into());
        }
        if self.up_block_types.len() != n {
            return Err(format!(
                "up_block_types has {} entries for {n} levels",
                self.up_block_types.len()
            ));
        }
        if let Some(t) = self
            .up_block_types
            .iter()
            .find(|t| *t != "UpDecoderBlock2D")
        {
            return Err(format!("up block {t:?}: only UpDecoderBlock2D is built"));
        }
        if self.act_fn != "silu" {
            return Err(format!("act_fn {:?}: only silu is built", self.act_fn));
        }
        let g = self.norm_num_groups;
        if g < 1 || self.block_out_channels.iter().any(|c| c % g != 0) {
            return Err(format!(
                "norm_num_groups {g} does not divide block_out_channels {:?}",
                self.block_out_channels
            ));
        }
        for (name, v) in [
            ("out_channels", self.out_channels),
            ("latent_channels", self.latent_channels),
            ("layers_per_block", self.layers_per_block),
        ] {
            if v < 1 {
                return Err(format!("{name} must be ≥ 1, got {v}"));
            }
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0) {
            return Err(format!(
                "scaling_factor must be > 0, got {}",
                self.scaling_factor
            ));
        }
        Ok(())
    }
}

struct UpDecoderBlock {
    resnets: Vec<ResnetBlock>,
    upsampler: Option<nn::Conv2D>,
}

pub struct VaeDecoder {
    pub config: VaeConfig,
    pub vs: nn::VarStore,
    post_quant_conv: Option<nn::Conv2D>,
    conv_in: nn::Conv2D,
    mid_resnets: [ResnetBlock; 2],
    mid_attention: Option<SpatialAttention>,
    up_blocks: Vec<UpDecoderBlock>,
    conv_norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

/// diffusers' VAE resnets and norms use ε = 1e-6.
const EPS: f64 = 1e-6;

impl VaeDecoder {
    pub fn new(config: VaeConfig, device: Device) -> Result<Self, String> {
        config.validate()?;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let c = &config;
        let g = c.norm_num_groups;
        let top = *c.block_out_channels.last().expect("validated");
        let dec = &root / "decoder";
        let post_quant_conv = c.use_post_quant_conv.then(|| {
            nn::conv2d(
                &root / "post_quant_conv",
                c.latent_channels,
                c.latent_channels,
                1,
                Default::default(),
            )
        });
        let conv_in = conv3(&dec / "conv_in", c.latent_channels, top, 1, 1);
        let mid = &dec / "mid_block";
        let resnet = |p: nn::Path, i, o| ResnetBlock::new(p, i, o, None, g, EPS, 1.0);
        let mid_resnets = [
            resnet(&mid / "resnets" / 0, top, top),
            resnet(&mid / "resnets" / 1, top, top),
        ];
        let mid_attention = c
            .mid_block_add_attention
            .then(|| SpatialAttention::new(&mid / "attentions" / 0, top, top, g, EPS, 1.0));
        let reversed: Vec<i64> = c.block_out_channels.iter().rev().copied().collect();
        let mut prev = reversed[0];
        let up_blocks = reversed
            .iter()
            .enumerate()
            .map(|(i, &out)| {
                let bp = &dec / "up_blocks" / i;
                let resnets = (0..=c.layers_per_block)
                    .map(|j| {
                        let cin = if j == 0 { prev } else { out };
                        resnet(&bp / "resnets" / j, cin, out)
                    })
                    .collect();
                prev = out;
                let last = i + 1 == reversed.len();
                UpDecoderBlock {
                    resnets,
                    upsampler: (!last)
                        .then(|| conv3(&bp / "upsamplers" / 0 / "conv", out, out, 1, 1)),
                }
            })
            .collect();
        let bottom = c.block_out_channels[0];
        let conv_norm_out = group_norm(&dec / "conv_norm_out", g, bottom, EPS);
        let conv_out = conv3(&dec / "conv_out", bottom, c.out_channels, 1, 1);
        Ok(Self {
            config,
            vs,
            post_quant_conv,
            conv_in,
            mid_resnets,
            mid_attention,
            up_blocks,
            conv_norm_out,
            conv_out,
        })
    }

    /// Reads a `vae/` folder: `config.json` and `diffusion_pytorch_model.safetensors` (the
    /// encoder's tensors are read past; older checkpoints' attention names are mapped).
    pub fn load(dir: &Path, device: Device) -> Result<Self, DiffusionError> {
        load_part(
            dir,
            WEIGHTS_FILE,
            VaeConfig::validate,
            |config| Self::new(config, device),
            |m| &m.vs,
            |k| {
                (!(k.starts_with("encoder.") || k.starts_with("quant_conv.")))
                    .then(|| modern_key(k))
            },
        )
    }

    /// The decoder's output [B, out_channels, 2^(levels−1)·h, 2^(levels−1)·w] (about [−1, 1]) of
    /// latents z [B, latent_channels, h, w].
    pub fn decode(&self, z: &Tensor) -> Tensor {
        let mut h = match &self.post_quant_conv {
            Some(c) => z.apply(c),
            None => z.shallow_clone(),
        };
        h = h.apply(&self.conv_in);
        h = self.mid_resnets[0].forward(&h, None);
        if let Some(a) = &self.mid_attention {
            h = a.forward(&h);
        }
        h = self.mid_resnets[1].forward(&h, None);
        for block in &self.up_blocks {
            for r in &block.resnets {
                h = r.forward(&h, None);
            }
            if let Some(conv) = &block.upsampler {
                h = upsample2x(&h, conv);
            }
        }
        h.apply(&self.conv_norm_out).silu().apply(&self.conv_out)
    }

    /// The precision of the weights (what `vs.half()` / `vs.double()` made them).
    pub fn kind(&self) -> tch::Kind {
        self.conv_in.ws.kind()
    }

    /// What StableDiffusionPipeline makes of its last latents: images in [0, 1].
    pub fn decode_latents(&self, latents: &Tensor) -> Tensor {
        let x = self.decode(&(latents / self.config.scaling_factor));
        (x / 2.0 + 0.5).clamp(0.0, 1.0)
    }
}
