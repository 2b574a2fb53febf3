//! Low-rank adapters (LoRA, Hu et al. 2021) beside frozen linear layers, as peft builds them:
//! y = W·x + b + (alpha / rank)·B·(A·x), with A `[rank, in]` drawn Kaiming-uniform (a = √5, so
//! U(±1/√in), peft's default) and B `[out, rank]` zero, so a fresh adapter leaves the model
//! exactly as it was. The adapters live in a VarStore of their own whose variable names are the
//! adapted layer's name + `.lora_A.weight` / `.lora_B.weight`: with a `unet.` prefix, the keys
//! diffusers' `load_lora_weights` reads (peft format).
//!
//! A layer is adapted when its name (e.g. `down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`)
//! equals a target or ends with `.` + target, as peft matches `target_modules`.
//!
//! Dropout (peft's `lora_dropout` p) zeroes elements of an adapter's input and scales the rest by
//! 1 / (1 − p): y = W·x + b + (alpha / rank)·B·(A·(m ⊙ x) / (1 − p)). It acts only while a
//! caller names the rows of the batch with keys ([`DropoutKeys::with_keys`]); the mask m of row r
//! is a function of (its key, the layer's name, the element's place in the row) alone
//! ([`keep_mask`]), so a row gets the same mask whatever batch or device it is computed in, and
//! a step trained later is computed with exactly the mask it was sampled with. Without keys
//! (evaluation, HRF's anchors and HRF-D's candidates, `hrf sample`, the KL term's base passes,
//! exports) there is no dropout.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

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
    /// peft's `lora_dropout`: the probability of zeroing an element of an adapter's input while
    /// rows are keyed (module docs); 0: none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropout: f64,
}

fn is_zero(p: &f64) -> bool {
    *p == 0.0
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
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout must be in [0, 1), got {}", self.dropout));
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
            // 0 whatever `dropout` trained with: diffusers 0.35 + peft build the adapters'
            // Dropout modules in training mode inside the eval-mode UNet, so any other value
            // would drop inputs at inference (measured: an image 0.61 off hrf's with 0.1).
            // The trained value is kept in hrf_adapter.json.
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

/// Where adapters are created while a model is built: the adapters' VarStore root, the spec,
/// the switch they all obey and the row keys their dropout masks are drawn from.
pub struct LoraSite<'a> {
    pub root: nn::Path<'a>,
    pub spec: &'a LoraSpec,
    pub switch: &'a AdapterSwitch,
    pub keys: &'a DropoutKeys,
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

/// The keys that name the rows of the batch a model's adapters see, model-wide: while set, an
/// adapter with dropout masks row r's input by [`keep_mask`] of (keys[r], its layer); while
/// unset, no adapter drops anything. Like [`AdapterSwitch`], one per model, not per thread: two
/// threads running one model at once would see each other's keys (hrf runs a model on one
/// thread).
#[derive(Debug, Clone, Default)]
pub struct DropoutKeys(Arc<Mutex<Option<Tensor>>>);

impl DropoutKeys {
    /// `f` run with the batch's rows keyed by `keys` (`[B]` int64 holding 32-bit values, on the
    /// model's device; None: no dropout). A batch of m·B rows is m copies of the B keyed rows in
    /// order (classifier-free guidance's [unconditional; conditional]): copy j of row r gets row
    /// r's mask. The previous keys are back afterwards, also when `f` panics.
    pub fn with_keys<T>(&self, keys: Option<&Tensor>, f: impl FnOnce() -> T) -> T {
        struct Restore<'a>(&'a Mutex<Option<Tensor>>, Option<Tensor>);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                *self.0.lock().unwrap_or_else(|e| e.into_inner()) = self.1.take();
            }
        }
        let previous = std::mem::replace(
            &mut *self.0.lock().unwrap_or_else(|e| e.into_inner()),
            keys.map(Tensor::shallow_clone),
        );
        let _restore = Restore(&self.0, previous);
        f()
    }

    /// The keys set now (None: no dropout).
    pub fn current(&self) -> Option<Tensor> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(Tensor::shallow_clone)
    }
}

const LOW32: i64 = 0xffff_ffff;
/// Multiplier of the hash rounds (Thomas Mueller's 32-bit integer hash). Below 2^27, so the
/// product with a 32-bit value stays below 2^59 in int64 arithmetic.
const HASH_MUL: i64 = 0x045d_9f3b;
/// Odd multiplier spreading an element's index before it meets the row's seed (below 2^31).
const INDEX_MUL: i64 = 0x27d4_eb2f;

/// Mueller's 32-bit integer hash on an int64 tensor of 32-bit values: x ← ((x ≫ 16) ⊕ x)·c
/// mod 2^32 twice, then x ≫ 16 ⊕ x ([`hash32`] on one value).
fn hash32_tensor(x: &Tensor) -> Tensor {
    let round = |x: &Tensor| {
        (x.bitwise_right_shift_tensor_scalar(16)
            .bitwise_xor_tensor(x)
            * HASH_MUL)
            .bitwise_and(LOW32)
    };
    let x = round(&round(x));
    x.bitwise_right_shift_tensor_scalar(16)
        .bitwise_xor_tensor(&x)
}

/// Mueller's 32-bit integer hash of one value: the host reference of the masks.
pub fn hash32(x: u32) -> u32 {
    let x = ((x >> 16) ^ x).wrapping_mul(HASH_MUL as u32);
    let x = ((x >> 16) ^ x).wrapping_mul(HASH_MUL as u32);
    (x >> 16) ^ x
}

/// A layer's salt: FNV-1a (32-bit) of its name, so each adapted layer draws its own masks.
pub fn layer_salt(name: &str) -> u32 {
    name.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Whether element e (row-major over the non-batch dimensions) of row r is kept:
/// h = hash32((e·INDEX_MUL + hash32(keys[r] ⊕ salt)) mod 2^32), kept when h ≥ ⌊p·2^32⌋, so
/// with probability 1 − p. Returns `[B, per_row]` of 0/1 in `kind`, scaled by 1 / (1 − p).
pub fn keep_mask(keys: &Tensor, salt: u32, per_row: i64, p: f64, kind: Kind) -> Tensor {
    let b = keys.size()[0];
    let row_seed = hash32_tensor(&keys.bitwise_xor(i64::from(salt)).bitwise_and(LOW32));
    let index = Tensor::arange(per_row, (Kind::Int64, keys.device())) * INDEX_MUL;
    let h = hash32_tensor(&(index.view([1, per_row]) + row_seed.view([b, 1])).bitwise_and(LOW32));
    let threshold = (p * 4_294_967_296.0).floor() as i64;
    h.ge(threshold).to_kind(kind) * (1.0 / (1.0 - p))
}

#[derive(Debug)]
struct Adapter {
    a: Tensor,
    b: Tensor,
    scale: f64,
    off: AdapterSwitch,
    dropout: f64,
    salt: u32,
    keys: DropoutKeys,
}

impl Adapter {
    /// x with this adapter's dropout mask applied, when it has dropout and rows are keyed.
    fn dropped(&self, x: Tensor) -> Tensor {
        if self.dropout == 0.0 {
            return x;
        }
        let Some(keys) = self.keys.current() else {
            return x;
        };
        let size = x.size();
        let (rows, b) = (size[0], keys.size()[0]);
        assert!(
            b > 0 && rows % b == 0,
            "{rows} rows are not copies of the {b} keyed rows"
        );
        let per_row: i64 = size[1..].iter().product();
        let mask = keep_mask(&keys, self.salt, per_row, self.dropout, x.kind());
        // [m, B, per_row] against [1, B, per_row]: the copies share one mask (broadcast, so the
        // graph keeps one mask, not m).
        (x.reshape([rows / b, b, per_row]) * mask.unsqueeze(0)).view(size.as_slice())
    }
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
            dropout: l.spec.dropout,
            salt: layer_salt(&name),
            keys: l.keys.clone(),
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
                let x = ad.dropped(x.to_kind(ad.a.kind()));
                let low = x.matmul(&ad.a.tr()).matmul(&ad.b.tr()) * ad.scale;
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
            dropout: 0.0,
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
        let mut dropped = spec(&["to_q"]);
        dropped.dropout = 1.0;
        assert!(dropped.validate().unwrap_err().contains("dropout"));
        // The LoRA file says no dropout whatever was trained with (diffusers would drop at
        // inference otherwise).
        dropped.dropout = 0.3;
        assert!(dropped.validate().is_ok());
        assert_eq!(
            dropped.diffusers_metadata()["unet.lora_dropout"],
            serde_json::json!(0.0)
        );
    }

    #[test]
    fn a_fresh_adapter_is_the_base_layer_and_merging_equals_the_adapted_layer() {
        let base = nn::VarStore::new(Device::Cpu);
        let adapters = nn::VarStore::new(Device::Cpu);
        let s = spec(&["to_q"]);
        let switch = AdapterSwitch::default();
        let keys = DropoutKeys::default();
        let site = LoraSite {
            root: adapters.root(),
            spec: &s,
            switch: &switch,
            keys: &keys,
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

    /// The masks the tensor code draws are the host hash's, element by element; about 1 − p of
    /// the elements are kept, each scaled by 1 / (1 − p).
    #[test]
    fn dropout_masks_are_the_host_hash_and_keep_one_minus_p() {
        // Known values of Mueller's hash (x ↦ x ≫ 16 ⊕ x, ·0x45d9f3b, twice, then ≫ 16 ⊕).
        // Values from a Python rendering of the same arithmetic; FNV-1a's published vector.
        assert_eq!(hash32(0), 0);
        assert_eq!(hash32(1), 0x3125_1ba7);
        assert_eq!(hash32(0xdead_beef), 0x5353_e2e9);
        assert_eq!(layer_salt("a"), 0xe40c_292c);
        let keys_host = [0u32, 1, 0xdead_beef, u32::MAX];
        let keys = Tensor::from_slice(&keys_host.map(i64::from));
        let (per_row, p, salt) = (50_000i64, 0.25, layer_salt("attn1.to_q"));
        let mask = keep_mask(&keys, salt, per_row, p, Kind::Float);
        assert_eq!(mask.size(), [4, per_row]);
        let got = Vec::<f32>::try_from(mask.flatten(0, -1)).unwrap();
        let threshold = (p * 4_294_967_296.0) as u64;
        for (r, &k) in keys_host.iter().enumerate() {
            let seed = hash32(k ^ salt);
            for e in 0..per_row as u32 {
                let h = hash32(e.wrapping_mul(INDEX_MUL as u32).wrapping_add(seed));
                let want = if u64::from(h) >= threshold {
                    1.0 / 0.75
                } else {
                    0.0
                };
                assert_eq!(
                    got[r * per_row as usize + e as usize],
                    want,
                    "row {r} element {e}"
                );
            }
        }
        let kept = got.iter().filter(|&&v| v > 0.0).count() as f64 / got.len() as f64;
        assert!((kept - 0.75).abs() < 0.005, "kept {kept}");
        // Rows with other keys, and other layers, draw other masks.
        let rows = mask.chunk(4, 0);
        assert!(!rows[0].equal(&rows[1]));
        let other = keep_mask(&keys, layer_salt("attn1.to_k"), per_row, p, Kind::Float);
        assert!(!other.equal(&mask));
        assert_ne!(layer_salt("attn1.to_q"), layer_salt("attn1.to_k"));
    }

    /// Dropout acts only while rows are keyed, each row by its own key whatever batch it is in,
    /// guidance's copies of a row alike; without keys (or with p = 0) the layer is the plain
    /// adapted layer bit for bit.
    #[test]
    fn dropout_acts_only_on_keyed_rows_and_each_row_by_its_key() {
        let base = nn::VarStore::new(Device::Cpu);
        let adapters = nn::VarStore::new(Device::Cpu);
        let (switch, keys) = (AdapterSwitch::default(), DropoutKeys::default());
        let with = LoraSpec {
            dropout: 0.5,
            ..spec(&["to_q"])
        };
        let without = spec(&["to_k"]);
        let site = |spec| LoraSite {
            root: adapters.root(),
            spec,
            switch: &switch,
            keys: &keys,
        };
        let layer = linear(
            base.root() / "to_q",
            6,
            5,
            Default::default(),
            Some(&site(&with)),
        );
        let plain = linear(
            base.root() / "to_k",
            6,
            5,
            Default::default(),
            Some(&site(&without)),
        );
        init_keyed(&adapters, 3);
        tch::no_grad(|| {
            for (i, (name, var)) in adapters.variables().into_iter().enumerate() {
                if name.ends_with("lora_B.weight") {
                    var.shallow_clone()
                        .copy_(&crate::init::keyed_normal(&[40 + i as u64], &[5, 2]));
                }
            }
        });
        let x = crate::init::keyed_normal(&[11], &[3, 4, 6]);
        let k = Tensor::from_slice(&[7i64, 8, 9]);
        let unkeyed = layer.forward(&x);
        // By hand: W·x + b + scale·B·A·(m ⊙ x), m the layer's mask of each row's key.
        let by_hand = |x: &Tensor, m: &Tensor| {
            let v = base.variables();
            let a = adapters.variables();
            let low = (x * m)
                .matmul(&a["to_q.lora_A.weight"].tr())
                .matmul(&a["to_q.lora_B.weight"].tr());
            x.matmul(&v["to_q.weight"].tr()) + &v["to_q.bias"] + low * with.scale()
        };
        assert!(
            (&unkeyed - by_hand(&x, &x.ones_like()))
                .abs()
                .max()
                .double_value(&[])
                < 1e-6
        );
        let keyed = keys.with_keys(Some(&k), || layer.forward(&x));
        let m = keep_mask(&k, layer_salt("to_q"), 24, 0.5, Kind::Float).view([3, 4, 6]);
        assert!((&keyed - by_hand(&x, &m)).abs().max().double_value(&[]) < 1e-6);
        assert!((&keyed - &unkeyed).abs().max().double_value(&[]) > 1e-3);
        assert!(
            keys.current().is_none(),
            "the keys are unset after the region"
        );
        // Row 1 alone with its key gives the row of the batch.
        let alone = keys.with_keys(Some(&k.narrow(0, 1, 1)), || {
            layer.forward(&x.narrow(0, 1, 1))
        });
        assert!(
            (alone - keyed.narrow(0, 1, 1))
                .abs()
                .max()
                .double_value(&[])
                < 1e-6
        );
        // Guidance's [unconditional; conditional] copies: each copy gets its row's mask.
        let both = keys.with_keys(Some(&k), || layer.forward(&Tensor::cat(&[&x, &x], 0)));
        let halves = both.chunk(2, 0);
        assert!(halves[0].equal(&keyed) && halves[1].equal(&keyed));
        // p = 0: keys change nothing; with the adapters off there is nothing to drop.
        let plain_unkeyed = plain.forward(&x);
        assert!(keys
            .with_keys(Some(&k), || plain.forward(&x))
            .equal(&plain_unkeyed));
        let off = keys.with_keys(Some(&k), || switch.without_adapters(|| layer.forward(&x)));
        assert!(off.equal(&x.apply(&layer.base)));
        // The keys are restored after a panic too, and nested regions restore the outer keys.
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            keys.with_keys(Some(&k), || panic!("inside"))
        }));
        assert!(caught.is_err() && keys.current().is_none());
        keys.with_keys(Some(&k), || {
            keys.with_keys(None, || assert!(layer.forward(&x).equal(&unkeyed)));
            assert!(keys.current().unwrap().equal(&k));
        });
    }
}
