//! transformers' `CLIPTextModel`, the text encoder of Stable Diffusion folders (`text_encoder/`:
//! `config.json`, `model.safetensors`): token and position embeddings, pre-norm transformer
//! layers with causal self-attention and an MLP (`quick_gelu` for SD 1.x's OpenAI CLIP, `gelu`
//! for SD 2.x's OpenCLIP), a final layer norm; `forward` gives `last_hidden_state`, what the
//! UNet's cross-attention reads. Parameter names are the safetensors keys (with or without the
//! `text_model.` prefix older transformers wrote), so weights load by construction. A test
//! checks the outputs against transformers.

use std::path::Path;

use serde::Deserialize;
use tch::{nn, nn::Module, Device, Kind, Tensor};

use crate::diffusers_model::load_part;
use crate::unet::multi_head;
use crate::DiffusionError;

/// The fields of a `CLIPTextConfig` the model needs; the others are ignored, as transformers does.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ClipTextConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub max_position_embeddings: i64,
    #[serde(default = "quick_gelu")]
    pub hidden_act: String,
    #[serde(default = "layer_norm_eps")]
    pub layer_norm_eps: f64,
}

fn quick_gelu() -> String {
    "quick_gelu".into()
}

fn layer_norm_eps() -> f64 {
    1e-5
}

impl ClipTextConfig {
    fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v < 1 {
                return Err(format!("{name} must be ≥ 1, got {v}"));
            }
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !matches!(self.hidden_act.as_str(), "quick_gelu" | "gelu") {
            return Err(format!(
                "hidden_act {:?}: quick_gelu or gelu",
                self.hidden_act
            ));
        }
        Ok(())
    }
}

#[derive(Debug)]
struct EncoderLayer {
    layer_norm1: nn::LayerNorm,
    q_proj: nn::Linear,
    k_proj: nn::Linear,
    v_proj: nn::Linear,
    out_proj: nn::Linear,
    layer_norm2: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
}

pub struct ClipTextModel {
    pub config: ClipTextConfig,
    pub vs: nn::VarStore,
    token_embedding: nn::Embedding,
    position_embedding: nn::Embedding,
    layers: Vec<EncoderLayer>,
    final_layer_norm: nn::LayerNorm,
}

impl ClipTextModel {
    /// A model with default-initialised weights on `device`.
    pub fn new(config: ClipTextConfig, device: Device) -> Result<Self, String> {
        config.validate()?;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let (h, c) = (config.hidden_size, &config);
        let ln = |p: nn::Path| {
            nn::layer_norm(
                p,
                vec![h],
                nn::LayerNormConfig {
                    eps: c.layer_norm_eps,
                    ..Default::default()
                },
            )
        };
        let lin = |p: nn::Path, i, o| nn::linear(p, i, o, Default::default());
        let emb = &root / "embeddings";
        let token_embedding = nn::embedding(
            &emb / "token_embedding",
            c.vocab_size,
            h,
            Default::default(),
        );
        let position_embedding = nn::embedding(
            &emb / "position_embedding",
            c.max_position_embeddings,
            h,
            Default::default(),
        );
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let p = &root / "encoder" / "layers" / i;
                let a = &p / "self_attn";
                EncoderLayer {
                    layer_norm1: ln(&p / "layer_norm1"),
                    q_proj: lin(&a / "q_proj", h, h),
                    k_proj: lin(&a / "k_proj", h, h),
                    v_proj: lin(&a / "v_proj", h, h),
                    out_proj: lin(&a / "out_proj", h, h),
                    layer_norm2: ln(&p / "layer_norm2"),
                    fc1: lin(&p / "mlp" / "fc1", h, c.intermediate_size),
                    fc2: lin(&p / "mlp" / "fc2", c.intermediate_size, h),
                }
            })
            .collect();
        let final_layer_norm = ln(&root / "final_layer_norm");
        Ok(Self {
            config,
            vs,
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
        })
    }

    /// Reads `dir/config.json` and `dir/model.safetensors` (fp16 or bf16 weights are converted).
    pub fn load(dir: &Path, device: Device) -> Result<Self, DiffusionError> {
        load_part(
            dir,
            "model.safetensors",
            ClipTextConfig::validate,
            |config| Self::new(config, device),
            |m| &m.vs,
            |k| Some(k.strip_prefix("text_model.").unwrap_or(k).to_string()),
        )
    }

    /// `last_hidden_state` [B, L, hidden] of token ids [B, L] (L ≤ max_position_embeddings).
    pub fn forward(&self, ids: &Tensor) -> Tensor {
        let (_, l) = ids.size2().expect("ids are [B, L]");
        let positions = Tensor::arange(l, (Kind::Int64, ids.device()));
        let mut x = ids.apply(&self.token_embedding) + positions.apply(&self.position_embedding);
        let heads = self.config.num_attention_heads;
        let act = |t: Tensor| match self.config.hidden_act.as_str() {
            "gelu" => t.gelu("none"),
            _ => &t * (&t * 1.702).sigmoid(),
        };
        for layer in &self.layers {
            let h = x.apply(&layer.layer_norm1);
            // Causal: token i attends to tokens ≤ i.
            let a = multi_head(
                &h.apply(&layer.q_proj),
                &h.apply(&layer.k_proj),
                &h.apply(&layer.v_proj),
                heads,
                true,
            );
            x = &x + layer.out_proj.forward(&a);
            let h = x.apply(&layer.layer_norm2);
            x = &x + act(h.apply(&layer.fc1)).apply(&layer.fc2);
        }
        x.apply(&self.final_layer_norm)
    }
}
