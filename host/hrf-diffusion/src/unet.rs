//! A UNet2DModel that computes what diffusers' `UNet2DModel` computes, with the same parameter
//! names (`down_blocks.0.resnets.1.conv1.weight`), so diffusers safetensors load by construction.
//! Shape errors inside the model are bugs and panic; inputs are checked at `forward`.

use tch::nn;
use tch::{Kind, Tensor};

use crate::config::{BlockType, UNetConfig};

pub(crate) fn conv3(p: nn::Path, c_in: i64, c_out: i64, stride: i64, padding: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding,
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, 3, cfg)
}

pub(crate) fn group_norm(p: nn::Path, groups: i64, channels: i64, eps: f64) -> nn::GroupNorm {
    let cfg = nn::GroupNormConfig {
        eps,
        ..Default::default()
    };
    nn::group_norm(p, groups, channels, cfg)
}

/// diffusers' `Upsample2D` with a conv: nearest ×2, then `conv`.
pub(crate) fn upsample2x(h: &Tensor, conv: &nn::Conv2D) -> Tensor {
    let (_, _, hh, ww) = h.size4().expect("[B, C, H, W]");
    h.upsample_nearest2d([hh * 2, ww * 2], None, None)
        .apply(conv)
}

/// diffusers' `get_timestep_embedding`: sinusoidal features of one timestep per sample.
pub fn timestep_embedding(
    timesteps: &Tensor,
    dim: i64,
    flip_sin_to_cos: bool,
    freq_shift: f64,
) -> Tensor {
    let half = dim / 2;
    let device = timesteps.device();
    let exponent = Tensor::arange(half, (Kind::Float, device)) * (-(10000f64).ln())
        / (half as f64 - freq_shift);
    let freqs = exponent.exp();
    let args = timesteps.to_kind(Kind::Float).unsqueeze(1) * freqs.unsqueeze(0);
    let (sin, cos) = (args.sin(), args.cos());
    let emb = if flip_sin_to_cos {
        Tensor::cat(&[cos, sin], -1)
    } else {
        Tensor::cat(&[sin, cos], -1)
    };
    if dim % 2 == 1 {
        emb.constant_pad_nd([0, 1, 0, 0])
    } else {
        emb
    }
}

/// diffusers' `ResnetBlock2D`; without a time embedding (`temb: None`) for the VAE's.
#[derive(Debug)]
pub(crate) struct ResnetBlock {
    norm1: nn::GroupNorm,
    conv1: nn::Conv2D,
    time_emb_proj: Option<nn::Linear>,
    norm2: nn::GroupNorm,
    conv2: nn::Conv2D,
    conv_shortcut: Option<nn::Conv2D>,
    output_scale_factor: f64,
}

impl ResnetBlock {
    pub(crate) fn new(
        p: nn::Path,
        c_in: i64,
        c_out: i64,
        temb: Option<i64>,
        groups: i64,
        eps: f64,
        scale: f64,
    ) -> Self {
        let conv_shortcut = (c_in != c_out)
            .then(|| nn::conv2d(&p / "conv_shortcut", c_in, c_out, 1, Default::default()));
        Self {
            norm1: group_norm(&p / "norm1", groups, c_in, eps),
            conv1: conv3(&p / "conv1", c_in, c_out, 1, 1),
            time_emb_proj: temb
                .map(|t| nn::linear(&p / "time_emb_proj", t, c_out, Default::default())),
            norm2: group_norm(&p / "norm2", groups, c_out, eps),
            conv2: conv3(&p / "conv2", c_out, c_out, 1, 1),
            conv_shortcut,
            output_scale_factor: scale,
        }
    }

    pub(crate) fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> Tensor {
        let mut h = x.apply(&self.norm1).silu().apply(&self.conv1);
        if let (Some(proj), Some(temb)) = (&self.time_emb_proj, temb) {
            h = &h + temb.silu().apply(proj).unsqueeze(-1).unsqueeze(-1);
        }
        let h = h.apply(&self.norm2).silu().apply(&self.conv2);
        let shortcut = match &self.conv_shortcut {
            Some(c) => x.apply(c),
            None => x.shallow_clone(),
        };
        let out = shortcut + h;
        if self.output_scale_factor == 1.0 {
            out
        } else {
            out / self.output_scale_factor
        }
    }
}

/// softmax(QKᵀ/√d)·V over [B, heads, tokens, d], through libtorch's fused
/// `scaled_dot_product_attention` (flash or memory-efficient kernels where the device has them;
/// a test checks it against the explicit product on CPU); `causal`: token i sees tokens ≤ i.
fn attend(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool) -> Tensor {
    Tensor::scaled_dot_product_attention(q, k, v, None::<&Tensor>, 0.0, causal, None, false)
}

/// Multi-head attention of projected queries [B, N, dim] over keys and values [B, M, dim]:
/// split into `heads`, [`attend`], merged back to [B, N, dim]. Every attention of the models
/// (the UNets', the VAE's, CLIP's) goes through it.
pub(crate) fn multi_head(q: &Tensor, k: &Tensor, v: &Tensor, heads: i64, causal: bool) -> Tensor {
    let (b, n, dim) = q.size3().expect("queries are [B, N, dim]");
    let split = |t: &Tensor| t.view([b, -1, heads, dim / heads]).transpose(1, 2);
    attend(&split(q), &split(k), &split(v), causal)
        .transpose(1, 2)
        .reshape([b, n, dim])
}

/// diffusers' spatial self-attention (`Attention` with group norm and residual connection).
#[derive(Debug)]
pub(crate) struct SpatialAttention {
    group_norm: nn::GroupNorm,
    to_q: nn::Linear,
    to_k: nn::Linear,
    to_v: nn::Linear,
    to_out: nn::Linear,
    heads: i64,
    rescale_output_factor: f64,
}

impl SpatialAttention {
    pub(crate) fn new(
        p: nn::Path,
        channels: i64,
        head_dim: i64,
        groups: i64,
        eps: f64,
        rescale: f64,
    ) -> Self {
        let heads = channels / head_dim;
        let inner = heads * head_dim;
        Self {
            group_norm: group_norm(&p / "group_norm", groups, channels, eps),
            to_q: nn::linear(&p / "to_q", channels, inner, Default::default()),
            to_k: nn::linear(&p / "to_k", channels, inner, Default::default()),
            to_v: nn::linear(&p / "to_v", channels, inner, Default::default()),
            to_out: nn::linear(&p / "to_out" / 0, inner, channels, Default::default()),
            heads,
            rescale_output_factor: rescale,
        }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        let (b, c, h, w) = x.size4().expect("attention input is [B, C, H, W]");
        let tokens = x
            .apply(&self.group_norm)
            .view([b, c, h * w])
            .transpose(1, 2);
        let out = multi_head(
            &tokens.apply(&self.to_q),
            &tokens.apply(&self.to_k),
            &tokens.apply(&self.to_v),
            self.heads,
            false,
        )
        .apply(&self.to_out)
        .transpose(1, 2)
        .reshape([b, c, h, w]);
        let out = out + x;
        if self.rescale_output_factor == 1.0 {
            out
        } else {
            out / self.rescale_output_factor
        }
    }
}

#[derive(Debug)]
struct DownBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<SpatialAttention>,
    downsampler: Option<(nn::Conv2D, i64)>,
}

impl DownBlock {
    /// Returns the block's output and the skip connections it adds, in order.
    fn forward(&self, x: &Tensor, temb: &Tensor, skips: &mut Vec<Tensor>) -> Tensor {
        let mut h = x.shallow_clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            h = resnet.forward(&h, Some(temb));
            if let Some(attn) = self.attentions.get(i) {
                h = attn.forward(&h);
            }
            skips.push(h.shallow_clone());
        }
        if let Some((conv, padding)) = &self.downsampler {
            if *padding == 0 {
                // diffusers pads right/bottom by one so the stride-2 conv halves the size exactly.
                h = h.constant_pad_nd([0, 1, 0, 1]);
            }
            h = h.apply(conv);
            skips.push(h.shallow_clone());
        }
        h
    }
}

#[derive(Debug)]
struct UpBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<SpatialAttention>,
    upsampler: Option<nn::Conv2D>,
}

impl UpBlock {
    fn forward(&self, x: &Tensor, temb: &Tensor, skips: &mut Vec<Tensor>) -> Tensor {
        let mut h = x.shallow_clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            let skip = skips.pop().expect("one skip connection per up resnet");
            h = resnet.forward(&Tensor::cat(&[h, skip], 1), Some(temb));
            if let Some(attn) = self.attentions.get(i) {
                h = attn.forward(&h);
            }
        }
        if let Some(conv) = &self.upsampler {
            h = upsample2x(&h, conv);
        }
        h
    }
}

#[derive(Debug)]
struct MidBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<SpatialAttention>,
}

/// diffusers `UNet2DModel`, positional time embedding, optional class embedding.
#[derive(Debug)]
pub struct UNet2DModel {
    config: UNetConfig,
    conv_in: nn::Conv2D,
    time_linear_1: nn::Linear,
    time_linear_2: nn::Linear,
    class_embedding: Option<nn::Embedding>,
    down_blocks: Vec<DownBlock>,
    mid_block: Option<MidBlock>,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

impl UNet2DModel {
    /// Builds the model's variables under `p`. The config must have passed `validate`.
    pub fn new(p: &nn::Path, config: &UNetConfig) -> Self {
        let cfg = config;
        cfg.validate()
            .expect("UNetConfig::validate before building the model");
        let ch = &cfg.block_out_channels;
        let n = ch.len();
        let groups = cfg.norm_num_groups.expect("validated");
        let eps = cfg.norm_eps;
        let temb = cfg.time_embed_dim();
        let head_dim = |c: i64| cfg.attention_head_dim.unwrap_or(c);

        let conv_in = conv3(p / "conv_in", cfg.in_channels, ch[0], 1, 1);
        let time_linear_1 = nn::linear(
            p / "time_embedding" / "linear_1",
            ch[0],
            temb,
            Default::default(),
        );
        let time_linear_2 = nn::linear(
            p / "time_embedding" / "linear_2",
            temb,
            temb,
            Default::default(),
        );
        let class_embedding = cfg
            .num_class_embeds
            .map(|k| nn::embedding(p / "class_embedding", k, temb, Default::default()));

        let mut down_blocks = Vec::with_capacity(n);
        let mut c_out = ch[0];
        for (i, kind) in cfg.down_block_types.iter().enumerate() {
            let c_in = c_out;
            c_out = ch[i];
            let bp = p / "down_blocks" / i;
            let resnets = (0..cfg.layers_per_block)
                .map(|j| {
                    let cin = if j == 0 { c_in } else { c_out };
                    ResnetBlock::new(
                        &bp / "resnets" / j,
                        cin,
                        c_out,
                        Some(temb),
                        groups,
                        eps,
                        1.0,
                    )
                })
                .collect();
            let attentions = if kind.has_attention() {
                (0..cfg.layers_per_block)
                    .map(|j| {
                        SpatialAttention::new(
                            &bp / "attentions" / j,
                            c_out,
                            head_dim(c_out),
                            groups,
                            eps,
                            1.0,
                        )
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let downsampler = (i + 1 < n).then(|| {
                let conv = conv3(
                    &bp / "downsamplers" / 0 / "conv",
                    c_out,
                    c_out,
                    2,
                    cfg.downsample_padding,
                );
                (conv, cfg.downsample_padding)
            });
            down_blocks.push(DownBlock {
                resnets,
                attentions,
                downsampler,
            });
        }

        let mid_block = cfg.mid_block_type.map(|_| {
            let c = ch[n - 1];
            let mp = p / "mid_block";
            let scale = cfg.mid_block_scale_factor;
            let attn_groups = cfg.attn_norm_num_groups.unwrap_or(groups);
            let resnets = (0..2)
                .map(|j| {
                    ResnetBlock::new(&mp / "resnets" / j, c, c, Some(temb), groups, eps, scale)
                })
                .collect();
            let attentions = if cfg.add_attention {
                vec![SpatialAttention::new(
                    &mp / "attentions" / 0,
                    c,
                    head_dim(c),
                    attn_groups,
                    eps,
                    scale,
                )]
            } else {
                Vec::new()
            };
            MidBlock {
                resnets,
                attentions,
            }
        });

        let rev: Vec<i64> = ch.iter().rev().copied().collect();
        let mut up_blocks = Vec::with_capacity(n);
        let mut c_out = rev[0];
        for (i, kind) in cfg.up_block_types.iter().enumerate() {
            let prev_out = c_out;
            c_out = rev[i];
            let c_in = rev[(i + 1).min(n - 1)];
            let bp = p / "up_blocks" / i;
            let layers = cfg.layers_per_block + 1;
            let resnets = (0..layers)
                .map(|j| {
                    let skip = if j == layers - 1 { c_in } else { c_out };
                    let res_in = if j == 0 { prev_out } else { c_out };
                    ResnetBlock::new(
                        &bp / "resnets" / j,
                        res_in + skip,
                        c_out,
                        Some(temb),
                        groups,
                        eps,
                        1.0,
                    )
                })
                .collect();
            let attentions = if kind.has_attention() {
                (0..layers)
                    .map(|j| {
                        SpatialAttention::new(
                            &bp / "attentions" / j,
                            c_out,
                            head_dim(c_out),
                            groups,
                            eps,
                            1.0,
                        )
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let upsampler =
                (i + 1 < n).then(|| conv3(&bp / "upsamplers" / 0 / "conv", c_out, c_out, 1, 1));
            up_blocks.push(UpBlock {
                resnets,
                attentions,
                upsampler,
            });
        }

        Self {
            config: cfg.clone(),
            conv_in,
            time_linear_1,
            time_linear_2,
            class_embedding,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: group_norm(p / "conv_norm_out", groups, ch[0], eps),
            conv_out: conv3(p / "conv_out", ch[0], cfg.out_channels, 1, 1),
        }
    }

    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// ε (or v, or x₀, as the scheduler's `prediction_type` says) for a batch.
    ///
    /// * `sample`: `[B, C, H, W]`
    /// * `timesteps`: `[B]` integer tensor, one training timestep per sample
    /// * `class_labels`: `[B]` integer tensor, required exactly when the model is class-conditional
    pub fn forward(
        &self,
        sample: &Tensor,
        timesteps: &Tensor,
        class_labels: Option<&Tensor>,
    ) -> Tensor {
        let batch = sample.size()[0];
        assert_eq!(timesteps.size(), [batch], "one timestep per sample");
        let sample = if self.config.center_input_sample {
            sample * 2.0 - 1.0
        } else {
            sample.shallow_clone()
        };
        let t = timestep_embedding(
            timesteps,
            self.config.block_out_channels[0],
            self.config.flip_sin_to_cos,
            self.config.freq_shift,
        )
        .to_kind(sample.kind());
        let mut emb = t
            .apply(&self.time_linear_1)
            .silu()
            .apply(&self.time_linear_2);
        match (&self.class_embedding, class_labels) {
            (Some(e), Some(labels)) => {
                assert_eq!(labels.size(), [batch], "one class label per sample");
                emb += labels.apply(e);
            }
            (None, None) => {}
            (Some(_), None) => panic!("class-conditional UNet called without class labels"),
            (None, Some(_)) => panic!("class labels given to an unconditional UNet"),
        }

        let mut h = sample.apply(&self.conv_in);
        let mut skips = vec![h.shallow_clone()];
        for block in &self.down_blocks {
            h = block.forward(&h, &emb, &mut skips);
        }
        if let Some(mid) = &self.mid_block {
            h = mid.resnets[0].forward(&h, Some(&emb));
            for (i, resnet) in mid.resnets[1..].iter().enumerate() {
                if let Some(attn) = mid.attentions.get(i) {
                    h = attn.forward(&h);
                }
                h = resnet.forward(&h, Some(&emb));
            }
        }
        for block in &self.up_blocks {
            h = block.forward(&h, &emb, &mut skips);
        }
        debug_assert!(skips.is_empty());
        h.apply(&self.conv_norm_out).silu().apply(&self.conv_out)
    }
}

impl BlockType {
    pub fn name(self) -> &'static str {
        match self {
            Self::DownBlock2D => "DownBlock2D",
            Self::AttnDownBlock2D => "AttnDownBlock2D",
            Self::UpBlock2D => "UpBlock2D",
            Self::AttnUpBlock2D => "AttnUpBlock2D",
            Self::UNetMidBlock2D => "UNetMidBlock2D",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn::VarStore, Device};

    #[test]
    fn testbed_forward_keeps_shape() {
        let vs = VarStore::new(Device::Cpu);
        let cfg = UNetConfig::testbed();
        let unet = UNet2DModel::new(&vs.root(), &cfg);
        let x = crate::init::keyed_normal(&[499], &[3, 1, 32, 32]);
        let t = Tensor::from_slice(&[999i64, 500, 0]);
        let y = Tensor::from_slice(&[0i64, 9, 10]);
        let out = tch::no_grad(|| unet.forward(&x, &t, Some(&y)));
        assert_eq!(out.size(), [3, 1, 32, 32]);
    }

    #[test]
    fn fused_attention_equals_the_explicit_product() {
        // [B, heads, tokens, d] as the UNet's attention blocks make them (8×8 tokens, d = 16),
        // and a longer sequence with another head size.
        for (shape, key) in [([2i64, 2, 64, 16], 7u64), ([1, 4, 300, 8], 8)] {
            let q = crate::init::keyed_normal(&[key, 0], &shape);
            let k = crate::init::keyed_normal(&[key, 1], &shape);
            let v = crate::init::keyed_normal(&[key, 2], &shape);
            let fused = tch::no_grad(|| attend(&q, &k, &v, false));
            let d = shape[3] as f64;
            let explicit = tch::no_grad(|| {
                (q.matmul(&k.transpose(-2, -1)) / d.sqrt())
                    .softmax(-1, tch::Kind::Float)
                    .matmul(&v)
            });
            let err = (&fused - &explicit).abs().max().double_value(&[]);
            assert!(err <= 1e-5, "{shape:?}: max abs error {err:e}");
        }
    }

    #[test]
    fn variable_names_follow_diffusers() {
        let vs = VarStore::new(Device::Cpu);
        let _ = UNet2DModel::new(&vs.root(), &UNetConfig::testbed());
        let names = vs.variables();
        for key in [
            "conv_in.weight",
            "time_embedding.linear_1.weight",
            "class_embedding.weight",
            "down_blocks.0.resnets.0.conv1.weight",
            "down_blocks.0.downsamplers.0.conv.weight",
            "down_blocks.1.attentions.0.to_out.0.bias",
            "mid_block.attentions.0.group_norm.weight",
            "up_blocks.1.resnets.1.conv_shortcut.weight",
            "up_blocks.0.upsamplers.0.conv.weight",
            "conv_norm_out.bias",
        ] {
            assert!(names.contains_key(key), "missing {key}");
        }
    }
}
