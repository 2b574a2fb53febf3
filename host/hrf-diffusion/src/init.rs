//! Seeded initialisation that never touches libtorch's process-global generator: every variable
//! is drawn from a `KeyedRng` keyed by (seed, variable name), so a model's initial weights depend
//! on the seed alone, whatever other threads draw meanwhile and in whatever order variables are
//! visited.

use std::collections::HashMap;

use hrf_core::rng::KeyedRng;
use tch::nn::VarStore;
use tch::{Device, Tensor};

/// FNV-1a over the name's bytes: a fixed, documented key for each variable.
fn name_key(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// 1/√fan_in for a weight of this shape (`[out, in, kh, kw]` or `[out, in]`), torch's fan-in.
fn fan_in_bound(shape: &[i64]) -> f64 {
    let fan_in: i64 = shape[1..].iter().product();
    1.0 / (fan_in.max(1) as f64).sqrt()
}

/// What PyTorch's (and diffusers') default initialisation draws for a variable, or `None` for a
/// constant one (GroupNorm's weight 1 and bias 0, which construction already set).
/// - Linear/Conv weight: Kaiming-uniform with a = √5, i.e. U(−1/√fan_in, 1/√fan_in);
/// - their bias: U(−1/√fan_in, 1/√fan_in) with the weight's fan-in;
/// - Embedding weight: N(0, 1).
fn default_draw(name: &str, shape: &[i64], shapes: &HashMap<String, Vec<i64>>) -> Option<Draw> {
    if let Some(stem) = name.strip_suffix(".weight") {
        if shape.len() < 2 {
            return None;
        }
        if stem.ends_with("embedding") {
            return Some(Draw::Normal);
        }
        return Some(Draw::Uniform(fan_in_bound(shape)));
    }
    let stem = name.strip_suffix(".bias")?;
    let weight = shapes.get(&format!("{stem}.weight"))?;
    (weight.len() >= 2).then(|| Draw::Uniform(fan_in_bound(weight)))
}

enum Draw {
    Uniform(f64),
    Normal,
}

/// Re-draws every randomly initialised variable of `vs` from keyed streams (see the module).
pub fn init_keyed(vs: &VarStore, seed: u64) {
    let vars = vs.variables();
    let shapes: HashMap<String, Vec<i64>> =
        vars.iter().map(|(k, v)| (k.clone(), v.size())).collect();
    tch::no_grad(|| {
        for (name, var) in &vars {
            let shape = &shapes[name];
            let Some(draw) = default_draw(name, shape, &shapes) else {
                continue;
            };
            let n: i64 = shape.iter().product();
            let mut rng = KeyedRng::new(&[seed, 0x1417, name_key(name)]);
            let mut values = vec![0f32; n as usize];
            match draw {
                Draw::Normal => rng.fill_normal(&mut values),
                Draw::Uniform(bound) => values
                    .iter_mut()
                    .for_each(|v| *v = ((2.0 * rng.uniform() - 1.0) * bound) as f32),
            }
            let fresh = Tensor::from_slice(&values)
                .view(shape.as_slice())
                .to_kind(var.kind())
                .to_device(var.device());
            var.shallow_clone().copy_(&fresh);
        }
    });
}

/// A CPU tensor of standard normal values keyed by `key` (tests and probes use it instead of
/// libtorch's global generator).
pub fn keyed_normal(key: &[u64], shape: &[i64]) -> Tensor {
    let n: i64 = shape.iter().product();
    let mut values = vec![0f32; n as usize];
    KeyedRng::new(key).fill_normal(&mut values);
    Tensor::from_slice(&values)
        .view(shape)
        .to_device(Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{UNet2DModel, UNetConfig};

    fn testbed_vars(seed: u64) -> HashMap<String, Tensor> {
        let vs = VarStore::new(Device::Cpu);
        let _ = UNet2DModel::new(&vs.root(), &UNetConfig::testbed());
        init_keyed(&vs, seed);
        vs.variables()
    }

    #[test]
    fn same_seed_same_weights_other_seed_other_weights() {
        let (a, b, c) = (testbed_vars(5), testbed_vars(5), testbed_vars(6));
        for (name, t) in &a {
            assert!(t.equal(&b[name]), "{name} differs for one seed");
        }
        let w = "conv_in.weight";
        assert!(!a[w].equal(&c[w]));
    }

    #[test]
    fn draws_follow_torch_defaults() {
        let v = testbed_vars(1);
        let stat = |t: &Tensor| {
            let t = t.flatten(0, -1);
            (
                f64::try_from(t.min()).unwrap(),
                f64::try_from(t.max()).unwrap(),
                f64::try_from(t.mean(tch::Kind::Float)).unwrap(),
                f64::try_from(t.std(true)).unwrap(),
            )
        };
        // A conv weight [out, in, 3, 3]: U(±1/√(in·9)), std bound/√3.
        let w = &v["down_blocks.0.resnets.0.conv1.weight"];
        let bound = fan_in_bound(&w.size());
        let (lo, hi, mean, sd) = stat(w);
        assert!(
            lo >= -bound && hi <= bound && hi > 0.9 * bound,
            "{lo} {hi} {bound}"
        );
        assert!(mean.abs() < 0.05 * bound && (sd / (bound / 3f64.sqrt()) - 1.0).abs() < 0.05);
        // Its bias uses the weight's fan-in.
        let (lo, hi, ..) = stat(&v["down_blocks.0.resnets.0.conv1.bias"]);
        assert!(lo >= -bound && hi <= bound && hi > 0.0);
        // The class embedding is N(0, 1); GroupNorm stays 1 and 0.
        let (.., mean, sd) = stat(&v["class_embedding.weight"]);
        assert!(mean.abs() < 0.1 && (sd - 1.0).abs() < 0.1, "{mean} {sd}");
        let (lo, hi, ..) = stat(&v["conv_norm_out.weight"]);
        assert_eq!((lo, hi), (1.0, 1.0));
        let (lo, hi, ..) = stat(&v["conv_norm_out.bias"]);
        assert_eq!((lo, hi), (0.0, 0.0));
    }

    #[test]
    fn keyed_normal_is_keyed() {
        let a = keyed_normal(&[1, 2], &[2, 3]);
        assert_eq!(a.size(), [2, 3]);
        assert!(a.equal(&keyed_normal(&[1, 2], &[2, 3])));
        assert!(!a.equal(&keyed_normal(&[2, 1], &[2, 3])));
    }
}
