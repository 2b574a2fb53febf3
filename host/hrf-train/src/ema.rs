//! Exponential moving average of a model's weights (the weights a pretrained model ships with).

use tch::nn::VarStore;
use tch::Tensor;

/// Decay warmed up as min(decay, (1 + n) / (10 + n)), so early averages are not dominated by the
/// random initialisation.
pub fn warmed_decay(decay: f64, updates: i64) -> f64 {
    decay.min((1.0 + updates as f64) / (10.0 + updates as f64))
}

/// ema ← d·ema + (1 − d)·model, variable by variable (both stores hold the same names).
pub fn update(ema: &VarStore, model: &VarStore, decay: f64) {
    let src = model.variables();
    tch::no_grad(|| {
        for (name, mut e) in ema.variables() {
            let p: &Tensor = &src[&name];
            let _ = e.g_mul_scalar_(decay);
            let _ = e.g_add_(&(p * (1.0 - decay)));
        }
    });
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
}
