//! diffusers' `UNet2DConditionModel`, the denoiser of Stable Diffusion folders (`unet/`): the
//! pixel UNet's resnets and time embedding, with `Transformer2DModel`s (group norm, a conv or
//! linear projection in, a `BasicTransformerBlock` of self-attention, cross-attention to the text
//! encoder's states and a GEGLU feed-forward, the projection out, a residual) in its
//! `CrossAttnDownBlock2D`s, `UNetMidBlock2DCrossAttn` and `CrossAttnUpBlock2D`s. Parameter names
//! are diffusers' safetensors keys. `attention_head_dim` is diffusers' legacy name for the number
//! of heads where `num_attention_heads` is not given (SD 1.x: 8; SD 2.x: a list). A test checks
//! the outputs against diffusers.

use std::path::Path;

use serde::Deserialize;
use tch::{nn, Device, Tensor};

use crate::autocast::Autocast;
use crate::diffusers_model::{load_part, WEIGHTS_FILE};
use crate::lora::{self, AdapterSwitch, DropoutKeys, Linear, LoraSite, LoraSpec};
use crate::unet::{conv3, group_norm, multi_head, timestep_embedding, upsample2x, ResnetBlock};
use crate::DiffusionError;

/// One number for every block, or one per block.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    All(i64),
    Each(Vec<i64>),
}

impl PerBlock {
    fn get(&self, i: usize) -> i64 {
        match self {
            PerBlock::All(v) => *v,
            PerBlock::Each(v) => v[i],
        }
    }
}

/// The fields of a `UNet2DConditionModel` config that are built (others are ignored).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UNetCondConfig {
    /// The latents' height and width (diffusers: `sample_size`).
    #[serde(default)]
    pub sample_size: Option<i64>,
    pub in_channels: i64,
    pub out_channels: i64,
    pub block_out_channels: Vec<i64>,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub layers_per_block: i64,
    pub cross_attention_dim: i64,
    #[serde(default = "eight")]
    pub attention_head_dim: PerBlock,
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default = "thirty_two")]
    pub norm_num_groups: i64,
    #[serde(default = "norm_eps")]
    pub norm_eps: f64,
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default = "one")]
    pub transformer_layers_per_block: PerBlock,
    #[serde(default)]
    pub only_cross_attention: bool,
}

fn eight() -> PerBlock {
    PerBlock::All(8)
}
fn thirty_two() -> i64 {
    32
}
fn norm_eps() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}
fn one() -> PerBlock {
    PerBlock::All(1)
}

impl UNetCondConfig {
    /// Heads per level (diffusers: `num_attention_heads`, else `attention_head_dim`).
    fn heads(&self, i: usize) -> i64 {
        self.num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim)
            .get(i)
    }

    fn validate(&self) -> Result<(), String> {
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(format!(
                "block_out_channels, down_block_types and up_block_types need one entry per level ({n}, {}, {})",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        for (name, list) in [
            ("attention_head_dim", Some(&self.attention_head_dim)),
            ("num_attention_heads", self.num_attention_heads.as_ref()),
            (
                "transformer_layers_per_block",
                Some(&self.transformer_layers_per_block),
            ),
        ] {
            if let Some(PerBlock::Each(v)) = list {
                if v.len() != n {
                    return Err(format!("{name} has {} entries for {n} levels", v.len()));
                }
            }
        }
        if (0..n).any(|i| self.transformer_layers_per_block.get(i) != 1) {
            return Err("transformer_layers_per_block other than 1 is not built".into());
        }
        if self.only_cross_attention {
            return Err("only_cross_attention is not built".into());
        }
        for t in &self.down_block_types {
            if !matches!(t.as_str(), "CrossAttnDownBlock2D" | "DownBlock2D") {
                return Err(format!("down block {t:?} is not built"));
            }
        }
        for t in &self.up_block_types {
            if !matches!(t.as_str(), "CrossAttnUpBlock2D" | "UpBlock2D") {
                return Err(format!("up block {t:?} is not built"));
            }
        }
        let g = self.norm_num_groups;
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            let h = self.heads(i);
            if c < 1 || g < 1 || c % g != 0 || h < 1 || c % h != 0 {
                return Err(format!(
                    "level {i}: {c} channels, {g} groups, {h} heads do not divide"
                ));
            }
        }
        Ok(())
    }
}

struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: i64,
}

impl Attention {
    fn new(p: nn::Path, dim: i64, context: i64, heads: i64, lora: Option<&LoraSite>) -> Self {
        let no_bias = nn::LinearConfig {
            bias: false,
            ..Default::default()
        };
        Self {
            to_q: lora::linear(&p / "to_q", dim, dim, no_bias, lora),
            to_k: lora::linear(&p / "to_k", context, dim, no_bias, lora),
            to_v: lora::linear(&p / "to_v", context, dim, no_bias, lora),
            to_out: lora::linear(&p / "to_out" / 0, dim, dim, Default::default(), lora),
            heads,
        }
    }

    /// x [B, N, dim] attending to context [B, M, context].
    fn forward(&self, x: &Tensor, context: &Tensor) -> Tensor {
        multi_head(
            &x.apply(&self.to_q),
            &context.apply(&self.to_k),
            &context.apply(&self.to_v),
            self.heads,
            false,
        )
        .apply(&self.to_out)
    }
}

/// `Transformer2DModel` with one `BasicTransformerBlock`.
struct Transformer2D {
    norm: nn::GroupNorm,
    proj_in: Projection,
    norm1: nn::LayerNorm,
    attn1: Attention,
    norm2: nn::LayerNorm,
    attn2: Attention,
    norm3: nn::LayerNorm,
    ff_in: Linear,
    ff_out: Linear,
    proj_out: Projection,
}

/// A 1×1 conv (SD 1.x) or a linear layer (SD 2.x, `use_linear_projection`).
enum Projection {
    Conv(nn::Conv2D),
    Linear(Linear),
}

impl Transformer2D {
    fn new(p: nn::Path, c: i64, heads: i64, cfg: &UNetCondConfig, lora: Option<&LoraSite>) -> Self {
        let proj = |p: nn::Path| {
            if cfg.use_linear_projection {
                Projection::Linear(lora::linear(p, c, c, Default::default(), lora))
            } else {
                Projection::Conv(nn::conv2d(p, c, c, 1, Default::default()))
            }
        };
        let ln = |p: nn::Path| nn::layer_norm(p, vec![c], Default::default());
        let b = &p / "transformer_blocks" / 0;
        Self {
            norm: group_norm(&p / "norm", cfg.norm_num_groups, c, 1e-6),
            proj_in: proj(&p / "proj_in"),
            norm1: ln(&b / "norm1"),
            attn1: Attention::new(&b / "attn1", c, c, heads, lora),
            norm2: ln(&b / "norm2"),
            attn2: Attention::new(&b / "attn2", c, cfg.cross_attention_dim, heads, lora),
            norm3: ln(&b / "norm3"),
            ff_in: lora::linear(
                &b / "ff" / "net" / 0 / "proj",
                c,
                8 * c,
                Default::default(),
                lora,
            ),
            ff_out: lora::linear(&b / "ff" / "net" / 2, 4 * c, c, Default::default(), lora),
            proj_out: proj(&p / "proj_out"),
        }
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> Tensor {
        let (b, c, h, w) = x.size4().expect("[B, C, H, W]");
        let to_tokens = |t: Tensor| t.permute([0, 2, 3, 1]).reshape([b, h * w, c]);
        let to_image = |t: Tensor| t.reshape([b, h, w, c]).permute([0, 3, 1, 2]);
        let normed = x.apply(&self.norm);
        let mut t = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(normed.apply(conv)),
            Projection::Linear(lin) => to_tokens(normed).apply(lin),
        };
        let n1 = t.apply(&self.norm1);
        t = &t + self.attn1.forward(&n1, &n1);
        t = &t + self.attn2.forward(&t.apply(&self.norm2), context);
        let parts = t.apply(&self.norm3).apply(&self.ff_in).chunk(2, -1);
        t = &t + (&parts[0] * parts[1].gelu("none")).apply(&self.ff_out);
        let out = match &self.proj_out {
            Projection::Conv(conv) => to_image(t).contiguous().apply(conv),
            Projection::Linear(lin) => to_image(t.apply(lin)),
        };
        out + x
    }
}

struct Level {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<Transformer2D>,
    /// Down: a stride-2 conv; up: nearest ×2 then a conv.
    sampler: Option<nn::Conv2D>,
}

pub struct UNet2DConditionModel {
    pub config: UNetCondConfig,
    pub vs: nn::VarStore,
    /// The LoRA adapters (`lora::LoraSpec`) in a VarStore of their own, when built with one.
    pub lora: Option<(LoraSpec, nn::VarStore)>,
    /// Turns the adapters off (the base model) and on.
    pub adapters: AdapterSwitch,
    /// The row keys the adapters' dropout masks are drawn from (none set: no dropout).
    pub dropout_keys: DropoutKeys,
    conv_in: nn::Conv2D,
    time_linear_1: nn::Linear,
    time_linear_2: nn::Linear,
    down: Vec<Level>,
    mid_resnets: [ResnetBlock; 2],
    mid_attention: Transformer2D,
    up: Vec<Level>,
    conv_norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

impl UNet2DConditionModel {
    pub fn new(config: UNetCondConfig, device: Device) -> Result<Self, String> {
        Self::with_lora(config, device, None)
    }

    /// The model with LoRA adapters on the layers `lora` targets (fresh: B = 0, A drawn keyed by
    /// `seed` in `lora::init_keyed`), or without adapters.
    pub fn with_lora(
        config: UNetCondConfig,
        device: Device,
        lora: Option<(&LoraSpec, u64)>,
    ) -> Result<Self, String> {
        config.validate()?;
        if let Some((spec, _)) = lora {
            spec.validate()?;
            if !config.use_linear_projection {
                if let Some(t) = spec.targets.iter().find(|t| t.starts_with("proj_")) {
                    return Err(format!(
                        "LoRA target {t:?} is a 1×1 conv in this UNet (use_linear_projection is false); LoRA on convs is not built"
                    ));
                }
            }
        }
        let vs = nn::VarStore::new(device);
        let adapters = lora.map(|(spec, _)| (spec.clone(), nn::VarStore::new(device)));
        let switch = AdapterSwitch::default();
        let keys = DropoutKeys::default();
        let site = adapters.as_ref().map(|(spec, avs)| LoraSite {
            root: avs.root(),
            spec,
            switch: &switch,
            keys: &keys,
        });
        let site = site.as_ref();
        let root = vs.root();
        let c = &config;
        let ch = &c.block_out_channels;
        let n = ch.len();
        let (g, eps) = (c.norm_num_groups, c.norm_eps);
        let temb = 4 * ch[0];
        let resnet = |p: nn::Path, i, o| ResnetBlock::new(p, i, o, Some(temb), g, eps, 1.0);
        let conv_in = conv3(&root / "conv_in", c.in_channels, ch[0], 1, 1);
        let time_linear_1 = nn::linear(
            &root / "time_embedding" / "linear_1",
            ch[0],
            temb,
            Default::default(),
        );
        let time_linear_2 = nn::linear(
            &root / "time_embedding" / "linear_2",
            temb,
            temb,
            Default::default(),
        );
        let mut down = Vec::new();
        let mut prev = ch[0];
        for (i, t) in c.down_block_types.iter().enumerate() {
            let bp = &root / "down_blocks" / i;
            let out = ch[i];
            let cross = t == "CrossAttnDownBlock2D";
            let resnets = (0..c.layers_per_block)
                .map(|j| resnet(&bp / "resnets" / j, if j == 0 { prev } else { out }, out))
                .collect();
            let attentions = if cross {
                (0..c.layers_per_block)
                    .map(|j| Transformer2D::new(&bp / "attentions" / j, out, c.heads(i), c, site))
                    .collect()
            } else {
                Vec::new()
            };
            let sampler =
                (i + 1 < n).then(|| conv3(&bp / "downsamplers" / 0 / "conv", out, out, 2, 1));
            down.push(Level {
                resnets,
                attentions,
                sampler,
            });
            prev = out;
        }
        let top = ch[n - 1];
        let mp = &root / "mid_block";
        let mid_resnets = [
            resnet(&mp / "resnets" / 0, top, top),
            resnet(&mp / "resnets" / 1, top, top),
        ];
        let mid_attention =
            Transformer2D::new(&mp / "attentions" / 0, top, c.heads(n - 1), c, site);
        let rev: Vec<i64> = ch.iter().rev().copied().collect();
        let mut up = Vec::new();
        let mut out = rev[0];
        for (i, t) in c.up_block_types.iter().enumerate() {
            let bp = &root / "up_blocks" / i;
            let prev_out = out;
            out = rev[i];
            let input = rev[(i + 1).min(n - 1)];
            let layers = c.layers_per_block + 1;
            let resnets = (0..layers)
                .map(|j| {
                    let skip = if j == layers - 1 { input } else { out };
                    let res_in = if j == 0 { prev_out } else { out };
                    resnet(&bp / "resnets" / j, res_in + skip, out)
                })
                .collect();
            let heads = c.heads(n - 1 - i);
            let attentions = if t == "CrossAttnUpBlock2D" {
                (0..layers)
                    .map(|j| Transformer2D::new(&bp / "attentions" / j, out, heads, c, site))
                    .collect()
            } else {
                Vec::new()
            };
            let sampler =
                (i + 1 < n).then(|| conv3(&bp / "upsamplers" / 0 / "conv", out, out, 1, 1));
            up.push(Level {
                resnets,
                attentions,
                sampler,
            });
        }
        let conv_norm_out = group_norm(&root / "conv_norm_out", g, ch[0], eps);
        let conv_out = conv3(&root / "conv_out", ch[0], c.out_channels, 1, 1);
        if let (Some((_, avs)), Some((_, seed))) = (&adapters, lora) {
            lora::init_keyed(avs, seed);
        }
        Ok(Self {
            config,
            vs,
            lora: adapters,
            adapters: switch,
            dropout_keys: keys,
            conv_in,
            time_linear_1,
            time_linear_2,
            down,
            mid_resnets,
            mid_attention,
            up,
            conv_norm_out,
            conv_out,
        })
    }

    /// The precision of the frozen weights (what `vs.half()` / `vs.double()` made them).
    pub fn kind(&self) -> tch::Kind {
        self.conv_in.ws.kind()
    }

    /// Reads a `unet/` folder: `config.json` and `diffusion_pytorch_model.safetensors`.
    pub fn load(dir: &Path, device: Device) -> Result<Self, DiffusionError> {
        Self::load_with_lora(dir, device, None)
    }

    /// `load`, with fresh LoRA adapters (see `with_lora`).
    pub fn load_with_lora(
        dir: &Path,
        device: Device,
        lora: Option<(&LoraSpec, u64)>,
    ) -> Result<Self, DiffusionError> {
        load_part(
            dir,
            WEIGHTS_FILE,
            UNetCondConfig::validate,
            |config| Self::with_lora(config, device, lora),
            |m| &m.vs,
            |k| Some(k.to_string()),
        )
    }

    /// The predicted noise [B, out, H, W] of latents x [B, in, H, W] at timesteps t [B], given
    /// the text encoder's states [B, L, cross_attention_dim].
    pub fn forward(&self, x: &Tensor, t: &Tensor, context: &Tensor) -> Tensor {
        let emb = self.time_embedding(t, x.kind());
        // Skips: conv_in's output, then every down resnet's (attention's) and downsampler's; the
        // last of them is what the next down level, then the mid block, takes.
        let mut skips = vec![x.apply(&self.conv_in)];
        for i in 0..self.down.len() {
            let h = skips.last().expect("conv_in's output").shallow_clone();
            let made = self.down_level(i, &h, &emb, context);
            skips.extend(made);
        }
        let mut h = self.mid(skips.last().expect("a skip"), &emb, context);
        for j in 0..self.up.len() {
            let taken = self.skips_of(j, &mut skips);
            h = self.up_level(j, &h, &taken, &emb, context);
        }
        self.head(&h)
    }

    /// The time embedding [B, time_embed_dim] of timesteps t, in `kind`.
    fn time_embedding(&self, t: &Tensor, kind: tch::Kind) -> Tensor {
        let c = &self.config;
        timestep_embedding(t, c.block_out_channels[0], c.flip_sin_to_cos, c.freq_shift)
            .to_kind(kind)
            .apply(&self.time_linear_1)
            .silu()
            .apply(&self.time_linear_2)
    }

    /// Down level i from its input h: the skips it makes, its output last.
    fn down_level(&self, i: usize, h: &Tensor, emb: &Tensor, context: &Tensor) -> Vec<Tensor> {
        let level = &self.down[i];
        let mut h = h.shallow_clone();
        let mut made = Vec::new();
        for (j, r) in level.resnets.iter().enumerate() {
            h = r.forward(&h, Some(emb));
            if let Some(a) = level.attentions.get(j) {
                h = a.forward(&h, context);
            }
            made.push(h.shallow_clone());
        }
        if let Some(conv) = &level.sampler {
            made.push(h.apply(conv));
        }
        made
    }

    fn mid(&self, h: &Tensor, emb: &Tensor, context: &Tensor) -> Tensor {
        let h = self.mid_resnets[0].forward(h, Some(emb));
        let h = self.mid_attention.forward(&h, context);
        self.mid_resnets[1].forward(&h, Some(emb))
    }

    /// The skips up level j takes, popped from the end (one per resnet), in the order it uses them.
    fn skips_of<T>(&self, j: usize, skips: &mut Vec<T>) -> Vec<T> {
        (0..self.up[j].resnets.len())
            .map(|_| skips.pop().expect("one skip per up resnet"))
            .collect()
    }

    /// Up level j from its input h and the skips it takes.
    fn up_level(
        &self,
        j: usize,
        h: &Tensor,
        taken: &[Tensor],
        emb: &Tensor,
        context: &Tensor,
    ) -> Tensor {
        let level = &self.up[j];
        let mut h = h.shallow_clone();
        for (k, (r, skip)) in level.resnets.iter().zip(taken).enumerate() {
            h = r.forward(&Tensor::cat(&[&h, skip], 1), Some(emb));
            if let Some(a) = level.attentions.get(k) {
                h = a.forward(&h, context);
            }
        }
        if let Some(conv) = &level.sampler {
            h = upsample2x(&h, conv);
        }
        h
    }

    fn head(&self, h: &Tensor) -> Tensor {
        h.apply(&self.conv_norm_out).silu().apply(&self.conv_out)
    }

    /// The noise prediction with gradient checkpointing (diffusers'
    /// `enable_gradient_checkpointing`, here per UNet level): the levels run without keeping
    /// their activations, only each level's inputs are kept, and [`Self::backward_checkpointed`]
    /// recomputes one level at a time to backpropagate. Returns the prediction as a leaf that
    /// requires grad (build the loss on it, run the loss's backward, then hand the leaf's
    /// gradient to `backward_checkpointed`) and the record of the pass.
    pub fn forward_checkpointed(
        &self,
        x: &Tensor,
        t: &Tensor,
        context: &Tensor,
    ) -> (Tensor, Checkpoint) {
        // The time embedding keeps its graph (it is small); the levels see a leaf of it whose
        // gradient the recomputations accumulate.
        let emb = self.time_embedding(t, x.kind());
        let emb_leaf = emb.detach().set_requires_grad(emb.requires_grad());
        let context = context.detach();
        let (skips, down_ends, levels, eps) = tch::no_grad(|| {
            let mut skips = vec![x.apply(&self.conv_in)];
            let mut down_ends = Vec::with_capacity(self.down.len());
            for i in 0..self.down.len() {
                let h = skips.last().expect("conv_in's output").shallow_clone();
                let made = self.down_level(i, &h, &emb_leaf, &context);
                skips.extend(made);
                down_ends.push(skips.len());
            }
            let mut pending: Vec<usize> = (0..skips.len()).collect();
            let mut h = self.mid(skips.last().expect("a skip"), &emb_leaf, &context);
            let mut up_inputs = Vec::with_capacity(self.up.len());
            for j in 0..self.up.len() {
                let idx = self.skips_of(j, &mut pending);
                let taken: Vec<Tensor> = idx.iter().map(|&k| skips[k].shallow_clone()).collect();
                up_inputs.push((h.shallow_clone(), idx));
                h = self.up_level(j, &h, &taken, &emb_leaf, &context);
            }
            up_inputs.push((h.shallow_clone(), Vec::new()));
            let eps = self.head(&h);
            (skips, down_ends, up_inputs, eps)
        });
        let eps = eps.set_requires_grad(true);
        (
            eps.shallow_clone(),
            Checkpoint {
                autocast: crate::autocast::current(x.device()),
                dropout_keys: self.dropout_keys.current(),
                x: x.shallow_clone(),
                emb,
                emb_leaf,
                context,
                skips,
                down_ends,
                levels,
                eps,
            },
        )
    }

    /// Backpropagates a [`Self::forward_checkpointed`] pass given the gradient of its output:
    /// each level is recomputed from its kept inputs and its vector-Jacobian product taken, so
    /// the trained weights (LoRA adapters) accumulate the gradients the plain forward's
    /// backward would give them.
    pub fn backward_checkpointed(&self, ck: Checkpoint, grad: &Tensor) {
        let Checkpoint {
            autocast,
            dropout_keys,
            x,
            emb,
            emb_leaf,
            context,
            skips,
            down_ends,
            mut levels,
            eps: _,
        } = ck;
        // The recomputations run under the forward's autocast and draw its dropout masks.
        let ctx = Recompute {
            autocast,
            keys: dropout_keys,
            dropout: &self.dropout_keys,
        };
        let mut g_skips: Vec<Option<Tensor>> = (0..skips.len()).map(|_| None).collect();
        let add = |slot: &mut Option<Tensor>, g: Option<Tensor>| {
            if let Some(g) = g {
                *slot = Some(match slot.take() {
                    Some(s) => s + g,
                    None => g,
                });
            }
        };
        // The head, then the up levels in reverse.
        let (head_in, _) = levels.pop().expect("the head's input");
        let mut g_h = vjp(&ctx, &[&head_in], &[Some(grad.shallow_clone())], |v| {
            vec![self.head(&v[0])]
        })
        .remove(0);
        for j in (0..self.up.len()).rev() {
            let (h_in, idx) = levels.pop().expect("one input per up level");
            let mut inputs = vec![&h_in];
            inputs.extend(idx.iter().map(|&k| &skips[k]));
            let mut grads = vjp(&ctx, &inputs, &[g_h.take()], |v| {
                vec![self.up_level(j, &v[0], &v[1..], &emb_leaf, &context)]
            });
            for (&k, g) in idx.iter().zip(grads.drain(1..)) {
                add(&mut g_skips[k], g);
            }
            g_h = grads.remove(0);
        }
        // The mid block's input is the last skip.
        let last = skips.len() - 1;
        let g_mid = vjp(&ctx, &[&skips[last]], &[g_h.take()], |v| {
            vec![self.mid(&v[0], &emb_leaf, &context)]
        })
        .remove(0);
        add(&mut g_skips[last], g_mid);
        // The down levels in reverse: level i made skips[start..end], from input skips[start − 1].
        for i in (0..self.down.len()).rev() {
            let end = down_ends[i];
            let start = if i == 0 { 1 } else { down_ends[i - 1] };
            let outs: Vec<Option<Tensor>> = (start..end).map(|k| g_skips[k].take()).collect();
            let g_in = vjp(&ctx, &[&skips[start - 1]], &outs, |v| {
                self.down_level(i, &v[0], &emb_leaf, &context)
            })
            .remove(0);
            add(&mut g_skips[start - 1], g_in);
        }
        // conv_in, when its weights train (never with LoRA adapters alone).
        if self.conv_in.ws.requires_grad() {
            vjp(&ctx, &[&x], &[g_skips[0].take()], |v| {
                vec![v[0].apply(&self.conv_in)]
            });
        }
        // Finally the time embedding's own graph, with what every level gave its leaf.
        let g_emb = emb_leaf.grad();
        if emb.requires_grad() && g_emb.defined() {
            (&emb * g_emb.detach()).sum(emb.kind()).backward();
        }
    }
}

/// What [`UNet2DConditionModel::forward_checkpointed`] keeps: the inputs of every level (no
/// activations inside them) and the output leaf.
pub struct Checkpoint {
    /// The autocast the forward ran under (as `torch.utils.checkpoint` keeps it): the
    /// recomputations run under it too, so they recompute what the forward computed.
    autocast: Option<Autocast>,
    /// The adapters' dropout keys the forward ran with, for the same reason.
    dropout_keys: Option<Tensor>,
    x: Tensor,
    /// The time embedding with its graph, and the leaf the levels saw.
    emb: Tensor,
    emb_leaf: Tensor,
    context: Tensor,
    /// conv_in's output, then every down level's skips.
    skips: Vec<Tensor>,
    /// skips.len() after each down level.
    down_ends: Vec<usize>,
    /// Each up level's input h with the indices of the skips it takes, then the head's input.
    levels: Vec<(Tensor, Vec<usize>)>,
    /// The output leaf (its gradient is what the loss gives).
    pub eps: Tensor,
}

/// What a checkpointed level is recomputed under: the autocast and the adapters' dropout keys
/// its forward ran with.
struct Recompute<'a> {
    autocast: Option<Autocast>,
    keys: Option<Tensor>,
    dropout: &'a DropoutKeys,
}

impl Recompute<'_> {
    fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        self.dropout
            .with_keys(self.keys.as_ref(), || match self.autocast {
                Some(a) => a.run(f),
                None => f(),
            })
    }
}

/// The vector-Jacobian product of `f` at `inputs` with the output gradients `grads` (None: the
/// output gets none): f is recomputed with autograd from leaves of the inputs, Σ⟨out, grad⟩ is
/// backpropagated (the weights f uses accumulate their gradients), and each input's gradient
/// is returned (None where it has none). `f` runs under `ctx` (the forward's autocast and
/// dropout keys); the backward pass outside it, as autograd's recorded precisions say.
fn vjp(
    ctx: &Recompute,
    inputs: &[&Tensor],
    grads: &[Option<Tensor>],
    f: impl FnOnce(&[Tensor]) -> Vec<Tensor>,
) -> Vec<Option<Tensor>> {
    let leaves: Vec<Tensor> = inputs
        .iter()
        .map(|t| t.detach().set_requires_grad(true))
        .collect();
    let outs = tch::with_grad(|| ctx.run(|| f(&leaves)));
    let terms: Vec<Tensor> = outs
        .iter()
        .zip(grads)
        .filter_map(|(o, g)| {
            let g = g.as_ref()?;
            o.requires_grad()
                .then(|| (o * g.to_kind(o.kind())).sum(tch::Kind::Float))
        })
        .collect();
    if terms.is_empty() {
        return inputs.iter().map(|_| None).collect();
    }
    Tensor::stack(&terms, 0).sum(tch::Kind::Float).backward();
    leaves
        .iter()
        .map(|l| {
            let g = l.grad();
            g.defined().then(|| g.detach())
        })
        .collect()
}
