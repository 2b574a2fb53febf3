//! Low-rank adapters (LoRA, Hu et al. 2021) beside frozen linear layers, as peft builds them:
//! y = W·x + b + (alpha / rank)·B·(A·x), with A `[rank, in]` drawn Kaiming-uniform (a = √5, so
//! U(±1/√in), peft's default) and B `[out, rank]` zero, so a fresh adapter leaves the model
//! exactly as it was. The adapters live in a VarStore of their own whose variable names are the
//! adapted layer's name + `.lora_A.weight` / `.lora_B.weight`: with a `unet.` prefix, the keys
//! diffusers' `load_lora_weights` reads (peft format).
//!
//! A layer is adapted when its name (e.g. `down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`)
//! equals a target or ends with `.` + target, as peft matches `target_modules`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::DiffusionError;

/// The file name diffusers' `save_lora_weights` writes and `load_lora_weights` looks for.
pub const LORA_FILE: &str = "pytorch_lora_weights.safetensors";
/// The safetensors metadata key under which diffusers keeps the adapter's config.
const METADATA_KEY: &str = "lora_adapter_metadata";

/// What to adapt and how (`model.lora` of a pipeline).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSpec {
    pub rank: i64,
    /// Scale alpha / rank on the low-rank update (alpha = rank: scale 1).
    pub alpha: f64,
    /// Layer names or name suffixes, e.g. `to_q`, `to_out.0`, `ff.net.2`.
    pub targets: Vec<String>,
}

/// The layer names a UNet2DConditionModel's attention blocks have, for `targets`.
pub const UNET_TARGETS: [&str; 8] = [
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "ff.net.0.proj",
    "ff.net.2",
    "proj_in",
    "proj_out",
];

impl LoraSpec {
    pub fn validate(&self) -> Result<(), String> {
        if self.rank < 1 {
            return Err(format!("rank must be at least 1, got {}", self.rank));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(format!("alpha must be positive, got {}", self.alpha));
        }
        if self.targets.is_empty() {
            return Err(
                "targets is empty: name the layers to adapt (e.g. [to_q, to_k, to_v, to_out.0])"
                    .into(),
            );
        }
        for t in &self.targets {
            if !UNET_TARGETS
                .iter()
                .any(|known| known == t || known.ends_with(&format!(".{t}")))
            {
                return Err(format!(
                    "target {t:?} names no adaptable layer (the UNet's are {})",
                    UNET_TARGETS.join(", ")
                ));
            }
        }
        Ok(())
    }

    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    fn matches(&self, name: &str) -> bool {
        self.targets
            .iter()
            .any(|t| name == t || name.ends_with(&format!(".{t}")))
    }

    /// The adapter config diffusers keeps in the LoRA file's metadata (`lora_adapter_metadata`,
    /// keys under `unet.`), so `load_lora_weights` applies alpha / rank rather than assuming 1.
    pub fn diffusers_metadata(&self) -> BTreeMap<String, serde_json::Value> {
        let mut targets = self.targets.clone();
        targets.sort();
        [
            ("r", serde_json::json!(self.rank)),
            ("lora_alpha", serde_json::json!(self.alpha)),
            ("target_modules", serde_json::json!(targets)),
            ("lora_dropout", serde_json::json!(0.0)),
            ("bias", serde_json::json!("none")),
            ("init_lora_weights", serde_json::json!(true)),
            ("use_dora", serde_json::json!(false)),
            // One rank and alpha for every layer (diffusers reads both maps).
            ("rank_pattern", serde_json::json!({})),
            ("alpha_pattern", serde_json::json!({})),
        ]
        .into_iter()
        .map(|(k, v)| (format!("unet.{k}"), v))
        .collect()
    }
}

/// Where adapters are created while a model is built: the adapters' VarStore root, the spec
/// and the switch they all obey.
pub struct LoraSite<'a> {
    pub root: nn::Path<'a>,
    pub spec: &'a LoraSpec,
    pub switch: &'a AdapterSwitch,
}

/// Turns all the adapters of a model off and on together, so the same weights also give the
/// frozen base model's output (the KL term's reference) without a second copy of the model.
/// The switch is model-wide: while it is off, every forward pass of the model skips its
/// adapters.
#[derive(Debug, Clone, Default)]
pub struct AdapterSwitch(Arc<AtomicBool>);

impl AdapterSwitch {
    /// `f` run with the adapters off (as the base model); they are back on afterwards, also
    /// when `f` panics.
    pub fn without_adapters<T>(&self, f: impl FnOnce() -> T) -> T {
        struct Restore<'a>(&'a AtomicBool, bool);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                self.0.store(self.1, Ordering::SeqCst);
            }
        }
        let _restore = Restore(&self.0, self.0.swap(true, Ordering::SeqCst));
        f()
    }

    fn is_off(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Debug)]
struct Adapter {
    a: Tensor,
    b: Tensor,
    scale: f64,
    off: AdapterSwitch,
}

/// A linear layer with an optional adapter.
#[derive(Debug)]
pub struct Linear {
    base: nn::Linear,
    adapter: Option<Adapter>,
}

/// The dotted name of a path, as safetensors keys spell it.
fn name_of(p: &nn::Path) -> String {
    p.components().collect::<Vec<_>>().join(".")
}

/// A linear layer at `p` (as `nn::linear`), adapted when `lora` targets its name.
pub fn linear(
    p: nn::Path,
    in_dim: i64,
    out_dim: i64,
    config: nn::LinearConfig,
    lora: Option<&LoraSite>,
) -> Linear {
    let name = name_of(&p);
    let adapter = lora.filter(|l| l.spec.matches(&name)).map(|l| {
        let mut comps = p.components();
        let first = comps.next().expect("a named layer");
        let at = comps.fold(l.root.sub(first), |q, c| q.sub(c));
        let r = l.spec.rank;
        Adapter {
            // Drawn by lora::init_keyed (A) and zero (B); created as zeros so construction
            // never touches libtorch's global generator.
            a: at
                .sub("lora_A")
                .var("weight", &[r, in_dim], nn::Init::Const(0.0)),
            b: at
                .sub("lora_B")
                .var("weight", &[out_dim, r], nn::Init::Const(0.0)),
            scale: l.spec.scale(),
            off: l.switch.clone(),
        }
    });
    Linear {
        base: nn::linear(p, in_dim, out_dim, config),
        adapter,
    }
}

impl nn::Module for Linear {
    fn forward(&self, x: &Tensor) -> Tensor {
        let y = x.apply(&self.base);
        match &self.adapter {
            None => y,
            Some(ad) if ad.off.is_off() => y,
            Some(ad) => {
                // The adapter computes in its own precision (fp32) whatever the frozen weights'.
                let low = x.to_kind(ad.a.kind()).matmul(&ad.a.tr()).matmul(&ad.b.tr()) * ad.scale;
                let kind = y.kind();
                y + low.to_kind(kind)
            }
        }
    }
}

/// Draws every `lora_A` of `vs` as peft does (U(±1/√in), keyed by (seed, name), never from
/// libtorch's global generator) and sets every `lora_B` to zero.
pub fn init_keyed(vs: &nn::VarStore, seed: u64) {
    crate::init::init_keyed(vs, seed);
    tch::no_grad(|| {
        for (name, var) in vs.variables() {
            if name.ends_with(".lora_B.weight") {
                let _ = var.shallow_clone().zero_();
            }
        }
    });
}

/// The merged weights of a model's variables: each adapted layer's weight with its update
/// folded in, every other variable as it is.
pub fn merged_variables(
    base: &nn::VarStore,
    adapters: &nn::VarStore,
    scale: f64,
) -> BTreeMap<String, Tensor> {
    let mut vars: BTreeMap<String, Tensor> = base
        .variables()
        .into_iter()
        .map(|(k, v)| (k, v.detach().copy()))
        .collect();
    let lora = adapters.variables();
    tch::no_grad(|| {
        for (name, a) in &lora {
            let Some(layer) = name.strip_suffix(".lora_A.weight") else {
                continue;
            };
            let b = &lora[&format!("{layer}.lora_B.weight")];
            let key = format!("{layer}.weight");
            if let Some(w) = vars.get(&key) {
                let delta = (b.matmul(a) * scale).to_device(w.device());
                let merged = (w.to_kind(Kind::Float) + delta).to_kind(w.kind());
                vars.insert(key, merged);
            }
        }
    });
    vars
}

/// Writes the adapters as diffusers' LoRA file: every variable under `unet.` + its name, fp32,
/// with the adapter config in the metadata (`lora_adapter_metadata`, as `save_lora_weights`
/// writes it), so `pipe.load_lora_weights(folder)` reads it with alpha / rank as trained.
pub fn save_diffusers(
    adapters: &nn::VarStore,
    spec: &LoraSpec,
    path: &Path,
) -> Result<(), DiffusionError> {
    let mut named: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, var) in adapters.variables() {
        let cpu = var
            .detach()
            .to_device(tch::Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous();
        let shape: Vec<usize> = cpu.size().iter().map(|&d| d as usize).collect();
        let values =
            Vec::<f32>::try_from(cpu.flatten(0, -1)).map_err(|source| DiffusionError::Torch {
                op: "reading",
                path: path.to_path_buf(),
                source,
            })?;
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        named.push((format!("unet.{name}"), shape, bytes));
    }
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = named
        .iter()
        .map(|(k, shape, bytes)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .expect("shape and bytes agree");
            (k.clone(), view)
        })
        .collect();
    let meta = serde_json::to_string_pretty(&spec.diffusers_metadata()).expect("json");
    // One metadata key: safetensors keeps the metadata in a HashMap, whose order (so the file's
    // bytes) would change from process to process with two.
    let info: HashMap<String, String> = [(METADATA_KEY.to_string(), meta)].into_iter().collect();
    let io = |source| DiffusionError::Io {
        path: path.to_path_buf(),
        source,
    };
    let data = safetensors::serialize(views, &Some(info)).map_err(|e| DiffusionError::Model {
        message: format!("{}: {e}", path.display()),
    })?;
    std::fs::write(path, data).map_err(io)
}

/// Reads a LoRA file (`save_diffusers`'s, or any peft-format file for the same spec) into the
/// adapters: every adapter variable must be there with its shape, and nothing else.
pub fn load_diffusers(adapters: &nn::VarStore, path: &Path) -> Result<(), DiffusionError> {
    crate::diffusers_model::load_strict(adapters, path, |k| {
        Some(k.strip_prefix("unet.").unwrap_or(k).to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::Module;
    use tch::Device;

    fn spec(targets: &[&str]) -> LoraSpec {
        LoraSpec {
            rank: 2,
            alpha: 4.0,
            targets: targets.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn targets_match_names_and_suffixes() {
        let s = spec(&["to_q", "to_out.0"]);
        assert!(s.matches("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"));
        assert!(s.matches("mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0"));
        assert!(!s.matches("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k"));
        assert!(!s.matches("x.not_to_q"));
        assert!(spec(&["to_qq"]).validate().unwrap_err().contains("to_qq"));
        assert!(spec(&["net.2"]).validate().is_ok());
        assert!(spec(&[]).validate().is_err());
        let mut bad = spec(&["to_q"]);
        bad.rank = 0;
        assert!(bad.validate().unwrap_err().contains("rank"));
    }

    #[test]
    fn a_fresh_adapter_is_the_base_layer_and_merging_equals_the_adapted_layer() {
        let base = nn::VarStore::new(Device::Cpu);
        let adapters = nn::VarStore::new(Device::Cpu);
        let s = spec(&["to_q"]);
        let switch = AdapterSwitch::default();
        let site = LoraSite {
            root: adapters.root(),
            spec: &s,
            switch: &switch,
        };
        let p = base.root() / "attn1" / "to_q";
        let layer = linear(p, 6, 5, Default::default(), Some(&site));
        let plain = linear(
            base.root() / "attn1" / "to_k",
            6,
            5,
            Default::default(),
            Some(&site),
        );
        assert!(plain.adapter.is_none());
        init_keyed(&adapters, 3);
        let names: Vec<String> = {
            let mut v: Vec<String> = adapters.variables().into_keys().collect();
            v.sort();
            v
        };
        assert_eq!(
            names,
            ["attn1.to_q.lora_A.weight", "attn1.to_q.lora_B.weight"]
        );
        let x = crate::init::keyed_normal(&[9], &[3, 6]);
        let w = base.variables()["attn1.to_q.weight"].shallow_clone();
        let bias = base.variables()["attn1.to_q.bias"].shallow_clone();
        let reference = x.matmul(&w.tr()) + &bias;
        assert!(layer.forward(&x).equal(&x.apply(&layer.base)));
        let diff = (layer.forward(&x) - &reference)
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff < 1e-6, "{diff}");
        // A trained adapter: B non-zero. The merged weight gives the adapted layer's output.
        tch::no_grad(|| {
            let b = adapters.variables()["attn1.to_q.lora_B.weight"].shallow_clone();
            b.shallow_clone()
                .copy_(&crate::init::keyed_normal(&[10], &[5, 2]));
        });
        let merged = merged_variables(&base, &adapters, s.scale());
        let mw = &merged["attn1.to_q.weight"];
        let via_merge = x.matmul(&mw.tr()) + &bias;
        let adapted = layer.forward(&x);
        let diff = (&adapted - via_merge).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{diff}");
        assert!((&adapted - &reference).abs().max().double_value(&[]) > 1e-2);
        // With the switch off the trained layer is the base layer exactly, and back on after.
        let base_out = switch.without_adapters(|| layer.forward(&x));
        assert!(base_out.equal(&x.apply(&layer.base)));
        assert!(layer.forward(&x).equal(&adapted));
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            switch.without_adapters(|| panic!("inside"))
        }));
        assert!(
            caught.is_err() && layer.forward(&x).equal(&adapted),
            "on after a panic"
        );
        // A's draw: U(±1/√6).
        let a = &adapters.variables()["attn1.to_q.lora_A.weight"];
        assert!(a.abs().max().double_value(&[]) <= 1.0 / 6f64.sqrt());
        assert!(a.abs().max().double_value(&[]) > 0.05);
    }
}
