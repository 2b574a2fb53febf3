//! Exponential moving average of a model's weights (the weights a pretrained model ships with).

use tch::nn::VarStore;
use tch::Tensor;

/// Decay warmed up as min(decay, (1 + n) / (10 + n)), so early averages are not dominated by the
/// random initialisation.
pub fn warmed_decay(decay: f64, updates: i64) -> f64 {
    decay.min((1.0 + updates as f64) / (10.0 + updates as f64))
}

/// ema ← d·ema + (1 − d)·model, for one tensor or a whole buffer.
fn blend(ema: &Tensor, model: &Tensor, decay: f64) {
    let mut e = ema.shallow_clone();
    let _ = e.g_mul_scalar_(decay);
    let _ = e.g_add_(&(model * (1.0 - decay)));
}

/// ema ← d·ema + (1 − d)·model, variable by variable (both stores hold the same names).
pub fn update(ema: &VarStore, model: &VarStore, decay: f64) {
    let src = model.variables();
    tch::no_grad(|| {
        for (name, e) in ema.variables() {
            blend(&e, &src[&name], decay);
        }
    });
}

/// The EMA copy's variables named `names` (in that order) moved into one buffer laid out like
/// `model_flat` (see `adamw::flatten`); `None`, with nothing moved, unless `ema` holds them all
/// and they match the buffer's size and kind.
fn flatten_like(ema: &VarStore, names: &[String], model_flat: &Tensor) -> Option<Tensor> {
    let vars = ema.variables();
    let mut tensors = names
        .iter()
        .map(|n| vars.get(n).map(Tensor::shallow_clone))
        .collect::<Option<Vec<Tensor>>>()?;
    let numel: i64 = tensors.iter().map(|t| t.numel() as i64).sum();
    if numel != model_flat.numel() as i64 || tensors.first()?.kind() != model_flat.kind() {
        return None;
    }
    crate::adamw::flatten(&mut tensors)
}

/// The EMA copy of a model trained by an `AdamW`. When the optimiser flattened the model's
/// trainable variables, the copy's variables of the same names go into one buffer of the same
/// layout and an update is three kernels instead of three per variable; otherwise it is `update`.
/// Variables outside the buffer (frozen ones) never change, so their EMA stays their copy.
pub struct ModelEma {
    /// (the EMA's buffer, the model's buffer)
    flat: Option<(Tensor, Tensor)>,
}

impl ModelEma {
    pub fn new(ema: &VarStore, opt: &crate::AdamW) -> Self {
        let names: Vec<String> = opt.names().map(str::to_string).collect();
        let flat = opt.flat_params().and_then(|model_flat| {
            flatten_like(ema, &names, model_flat).map(|e| (e, model_flat.shallow_clone()))
        });
        Self { flat }
    }

    /// Whether updates go through one buffer.
    pub fn is_flat(&self) -> bool {
        self.flat.is_some()
    }

    /// ema ← d·ema + (1 − d)·model.
    pub fn update(&self, ema: &VarStore, model: &VarStore, decay: f64) {
        match &self.flat {
            Some((e, m)) => tch::no_grad(|| blend(e, m, decay)),
            None => update(ema, model, decay),
        }
    }
}

/// Copies every variable of `from` into `to`.
pub fn copy_weights(to: &VarStore, from: &VarStore) {
    let src = from.variables();
    tch::no_grad(|| {
        for (name, mut v) in to.variables() {
            v.copy_(&src[&name]);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn moves_towards_the_model() {
        let a = VarStore::new(Device::Cpu);
        let b = VarStore::new(Device::Cpu);
        let _ = a.root().zeros("w", &[2]);
        let wb = b.root().ones("w", &[2]);
        update(&a, &b, 0.9);
        let w = a.variables()["w"].shallow_clone();
        assert!((w - 0.1).abs().max().double_value(&[]) < 1e-7);
        copy_weights(&a, &b);
        assert!(a.variables()["w"].equal(&wb));
        assert_eq!(warmed_decay(0.999, 0), 0.1);
    }

    /// The flat EMA over an optimiser's buffer computes what `update` does, variable by variable.
    #[test]
    fn flat_ema_matches_the_per_variable_one() {
        // Fixed values: torch's global generator is shared with tests running alongside.
        let stores = |phase: f64| {
            let vs = VarStore::new(Device::Cpu);
            let wave = |n: i64| (Tensor::arange(n, (tch::Kind::Float, Device::Cpu)) + phase).sin();
            let _ = vs.root().var_copy("a", &wave(6).view([3, 2]));
            let _ = vs.root().var_copy("b", &wave(4));
            vs
        };
        let (model, ema_flat, ema_ref) = (stores(0.0), stores(1.0), stores(1.0));
        let mut params: Vec<(String, Tensor)> = model.variables().into_iter().collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let names: Vec<String> = params.iter().map(|(n, _)| n.clone()).collect();
        let opt = crate::AdamW::new(params, Default::default());
        let model_flat = opt.flat_params().unwrap();
        assert!(flatten_like(&ema_flat, &names[..1], model_flat).is_none());
        let flat = ModelEma::new(&ema_flat, &opt);
        assert!(flat.is_flat());
        for d in [0.5, 0.9, 0.99] {
            flat.update(&ema_flat, &model, d);
            update(&ema_ref, &model, d);
        }
        let (a, b) = (ema_flat.variables(), ema_ref.variables());
        for n in &names {
            assert!(a[n].equal(&b[n]), "{n}");
        }
    }
}
