//! AdamW (decoupled weight decay, Loshchilov & Hutter), as torch.optim.AdamW computes it, with
//! state that can be saved and restored exactly (tch's optimiser hides its moments).

use std::collections::BTreeMap;
use std::path::Path;

use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
        }
    }
}

/// The optimiser over a fixed set of named variables.
///
/// When the variables share a device and a floating kind, `new` moves them into one buffer (each
/// variable becomes a view of it, so the model and its VarStore see every update) and keeps the
/// gradients and both moments in buffers laid out alike. An update is then a dozen kernels instead
/// of a dozen per variable: a small UNet has ~180 variables, and on a GPU the launch cost of
/// per-variable updates, not the arithmetic, bounded its training step (torch's `foreach` AdamW
/// exists for the same reason). The arithmetic is element for element the same either way.
///
/// Two consequences of the shared storage: the variables must stay where `new` put them (moving
/// the VarStore to another device or kind afterwards is refused with a panic at the next update),
/// and an update through the buffer does not bump the variables' autograd version counters, so
/// a graph built before `step_with_lr` must not be backpropagated after it (the training loops
/// build a fresh graph per step).
pub struct AdamW {
    pub config: AdamWConfig,
    params: Vec<(String, Tensor)>,
    /// Per variable; views of `flat`'s moment buffers when there is one.
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    flat: Option<Flat>,
    /// Optimiser steps taken so far.
    pub step: i64,
}

/// The one-buffer layout (see `AdamW`).
struct Flat {
    params: Tensor,
    /// Where each variable's data must start for the buffer to still be its storage.
    param_ptrs: Vec<usize>,
    grads: Tensor,
    /// Views of `grads`, one per variable: each variable's `.grad` is pointed at its view once
    /// autograd has created it, and backward then accumulates into the buffer in place.
    grad_views: Vec<Tensor>,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// Views of a 1-D buffer cut into the given shapes, in order.
fn views_of(buffer: &Tensor, shapes: &[Vec<i64>]) -> Vec<Tensor> {
    let mut offset = 0;
    shapes
        .iter()
        .map(|shape| {
            let n: i64 = shape.iter().product();
            let v = buffer.narrow(0, offset, n).view(shape.as_slice());
            offset += n;
            v
        })
        .collect()
}

/// Moves `tensors` into one new 1-D buffer and makes each a view of its part (values unchanged,
/// autograd identity kept: `p.data = view` in Python terms). `None`, with nothing changed, unless
/// all share one device and one floating kind.
pub fn flatten(tensors: &mut [Tensor]) -> Option<Tensor> {
    let first = tensors.first()?;
    let (kind, device) = (first.kind(), first.device());
    if !first.is_floating_point()
        || tensors
            .iter()
            .any(|t| t.kind() != kind || t.device() != device)
    {
        return None;
    }
    let shapes: Vec<Vec<i64>> = tensors.iter().map(|t| t.size()).collect();
    tch::no_grad(|| {
        let parts: Vec<Tensor> = tensors.iter().map(|t| t.detach().reshape([-1])).collect();
        let buffer = Tensor::cat(&parts, 0);
        for (t, v) in tensors.iter_mut().zip(views_of(&buffer, &shapes)) {
            t.set_data(&v);
        }
        Some(buffer)
    })
}

impl AdamW {
    /// `params`: (name, variable) pairs, e.g. a VarStore's trainable variables sorted by name.
    /// Flattens them into one buffer where it can (see the type's documentation).
    pub fn new(params: Vec<(String, Tensor)>, config: AdamWConfig) -> Self {
        let mut opt = Self::per_variable(params, config);
        let mut handles: Vec<Tensor> = opt.params.iter().map(|(_, p)| p.shallow_clone()).collect();
        if let Some(buffer) = flatten(&mut handles) {
            let shapes: Vec<Vec<i64>> = handles.iter().map(|t| t.size()).collect();
            let zeros = || buffer.zeros_like().detach();
            let flat = Flat {
                grads: zeros(),
                exp_avg: zeros(),
                exp_avg_sq: zeros(),
                params: buffer.shallow_clone(),
                param_ptrs: handles.iter().map(|t| t.data_ptr() as usize).collect(),
                grad_views: Vec::new(),
            };
            let flat = Flat {
                grad_views: views_of(&flat.grads, &shapes),
                ..flat
            };
            opt.exp_avg = views_of(&flat.exp_avg, &shapes);
            opt.exp_avg_sq = views_of(&flat.exp_avg_sq, &shapes);
            opt.flat = Some(flat);
        }
        opt
    }

    /// The same optimiser without the one-buffer layout: a variable-by-variable update (the
    /// reference the flat one is tested and benchmarked against).
    pub fn per_variable(params: Vec<(String, Tensor)>, config: AdamWConfig) -> Self {
        let zeros = |p: &Tensor| p.zeros_like().detach();
        Self {
            exp_avg: params.iter().map(|(_, p)| zeros(p)).collect(),
            exp_avg_sq: params.iter().map(|(_, p)| zeros(p)).collect(),
            params,
            config,
            flat: None,
            step: 0,
        }
    }

    pub fn params(&self) -> impl Iterator<Item = &Tensor> {
        self.params.iter().map(|(_, p)| p)
    }

    /// The one buffer every variable is a view of, when the variables were flattened.
    pub fn flat_params(&self) -> Option<&Tensor> {
        self.flat.as_ref().map(|f| &f.params)
    }

    /// The variables' names, in the order of the buffer.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|(n, _)| n.as_str())
    }

    /// The flat buffers when every variable's gradient lives in them (from the second update
    /// on: autograd creates the gradients in the first backward and `zero_grad` adopts them).
    ///
    /// # Panics
    /// When a variable no longer lives in the buffer (its storage was replaced after `new`, by
    /// `set_data`, a VarStore's `set_device`/`set_kind`, or a second optimiser over the same
    /// variables): the buffer would be updated while the model stayed as it was.
    fn live_flat(&self) -> Option<&Flat> {
        let flat = self.flat.as_ref()?;
        for ((name, p), &ptr) in self.params.iter().zip(&flat.param_ptrs) {
            assert_eq!(
                p.data_ptr() as usize,
                ptr,
                "AdamW: variable {name} was moved out of the optimiser's buffer after it was created"
            );
        }
        let live = self.params.iter().zip(&flat.grad_views).all(|((_, p), v)| {
            let g = p.grad();
            g.defined() && g.data_ptr() == v.data_ptr()
        });
        live.then_some(flat)
    }

    /// Whether updates currently go through the flat buffers.
    pub fn updates_flat(&self) -> bool {
        self.live_flat().is_some()
    }

    pub fn zero_grad(&mut self) {
        if let Some(flat) = &self.flat {
            tch::no_grad(|| {
                for ((_, p), view) in self.params.iter().zip(&flat.grad_views) {
                    let mut g = p.grad();
                    if g.defined() && g.data_ptr() != view.data_ptr() {
                        g.set_data(view);
                    }
                }
                let _ = flat.grads.shallow_clone().zero_();
            });
            return;
        }
        for (_, p) in &mut self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// The global L2 norm of the gradients as a 0-d tensor on their device (`None`: no gradients),
    /// from `flat`'s buffer when the update goes through it (`live_flat`).
    fn grad_norm_tensor(&self, flat: Option<&Flat>) -> Option<Tensor> {
        if let Some(flat) = flat {
            return Some(
                flat.grads
                    .to_kind(Kind::Float)
                    .square()
                    .sum(Kind::Float)
                    .sqrt(),
            );
        }
        // Laid end to end as in the flat buffer, so both layouts reduce the same numbers in the
        // same order and agree to the bit (a resumed run's first update is a per-variable one).
        let grads: Vec<Tensor> = self
            .params
            .iter()
            .map(|(_, p)| p.grad())
            .filter(|g| g.defined())
            .map(|g| g.reshape([-1]))
            .collect();
        (!grads.is_empty()).then(|| {
            Tensor::cat(&grads, 0)
                .to_kind(Kind::Float)
                .square()
                .sum(Kind::Float)
                .sqrt()
        })
    }

    /// Scales gradients so their global norm is at most `max_norm`, as
    /// torch.nn.utils.clip_grad_norm_ does: factor max_norm / (norm + 1e-6) clamped at 1, computed
    /// and applied on the gradients' device. Returns the norm before clipping as a 0-d tensor, so
    /// a loop on a GPU need not wait for the device each step to learn it (see `clip_grad_norm`).
    pub fn clip_grad_norm_deferred(&mut self, max_norm: f64) -> Tensor {
        let flat = self.live_flat();
        let Some(norm) = self.grad_norm_tensor(flat) else {
            return Tensor::from(0f32);
        };
        let factor = (norm.full_like(max_norm) / (&norm + 1e-6)).clamp_max(1.0);
        tch::no_grad(|| {
            if let Some(flat) = flat {
                let _ = flat.grads.shallow_clone().g_mul_(&factor);
                return;
            }
            for (_, p) in &self.params {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.g_mul_(&factor);
                }
            }
        });
        norm
    }

    /// `clip_grad_norm_deferred`, returning the norm before clipping as a number.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        f64::try_from(self.clip_grad_norm_deferred(max_norm)).unwrap_or(f64::NAN)
    }

    /// One update with learning rate `lr`.
    pub fn step_with_lr(&mut self, lr: f64) {
        self.step += 1;
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
            ..
        } = self.config;
        let bc1 = 1.0 - beta1.powi(self.step as i32);
        let bc2 = 1.0 - beta2.powi(self.step as i32);
        // ((p, g), (m, v)) → the update of one tensor or of the whole buffer.
        let update = |p: &mut Tensor, g: &Tensor, m: &mut Tensor, v: &mut Tensor| {
            let _ = p.g_mul_scalar_(1.0 - lr * weight_decay);
            let _ = m.g_mul_scalar_(beta1);
            let _ = m.g_add_(&(g * (1.0 - beta1)));
            let _ = v.g_mul_scalar_(beta2);
            let _ = v.g_add_(&(g.square() * (1.0 - beta2)));
            let denom = (v.sqrt() / bc2.sqrt()) + eps;
            let step = &*m / denom * (lr / bc1);
            let _ = p.g_sub_(&step);
        };
        tch::no_grad(|| {
            if let Some(flat) = self.live_flat() {
                update(
                    &mut flat.params.shallow_clone(),
                    &flat.grads,
                    &mut flat.exp_avg.shallow_clone(),
                    &mut flat.exp_avg_sq.shallow_clone(),
                );
                return;
            }
            for (i, (_, p)) in self.params.iter_mut().enumerate() {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                update(p, &g, &mut self.exp_avg[i], &mut self.exp_avg_sq[i]);
            }
        });
    }

    /// Moments and step count, for checkpoints.
    pub fn save(&self, path: &Path) -> Result<(), tch::TchError> {
        let mut named: Vec<(String, Tensor)> = Vec::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            named.push((
                format!("exp_avg.{name}"),
                self.exp_avg[i].to_device(tch::Device::Cpu),
            ));
            named.push((
                format!("exp_avg_sq.{name}"),
                self.exp_avg_sq[i].to_device(tch::Device::Cpu),
            ));
        }
        named.push(("step".into(), Tensor::from(self.step)));
        Tensor::write_safetensors(&named, path)
    }

    pub fn load(&mut self, path: &Path) -> Result<(), String> {
        let map: BTreeMap<String, Tensor> = Tensor::read_safetensors(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .into_iter()
            .collect();
        let get = |k: &str| {
            map.get(k)
                .ok_or_else(|| format!("{}: missing {k}", path.display()))
        };
        tch::no_grad(|| -> Result<(), String> {
            for (i, (name, p)) in self.params.iter().enumerate() {
                self.exp_avg[i].copy_(&get(&format!("exp_avg.{name}"))?.to_device(p.device()));
                self.exp_avg_sq[i]
                    .copy_(&get(&format!("exp_avg_sq.{name}"))?.to_device(p.device()));
            }
            Ok(())
        })?;
        self.step = get("step")?.int64_value(&[]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// torch.optim.AdamW's documented algorithm (lr=0.1, betas=(0.9, 0.999), eps=1e-8,
    /// weight_decay=0.01), written out in plain f64 arithmetic, on loss = sum(p²·[1, 3]).
    #[test]
    fn follows_the_documented_update() {
        let p = Tensor::from_slice(&[1.0f64, -2.0]).set_requires_grad(true);
        let mut opt = AdamW::new(
            vec![("p".into(), p.shallow_clone())],
            AdamWConfig {
                lr: 0.1,
                weight_decay: 0.01,
                ..Default::default()
            },
        );
        // Reference in plain f64 arithmetic.
        let (mut q, mut m, mut v) = ([1.0f64, -2.0], [0.0f64; 2], [0.0f64; 2]);
        for step in 1..=3 {
            opt.zero_grad();
            let loss = (p.square() * Tensor::from_slice(&[1.0f64, 3.0])).sum(Kind::Double);
            loss.backward();
            opt.step_with_lr(0.1);
            for i in 0..2 {
                let g = 2.0 * q[i] * [1.0, 3.0][i];
                q[i] *= 1.0 - 0.1 * 0.01;
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.999 * v[i] + 0.001 * g * g;
                let (bc1, bc2) = (1.0 - 0.9f64.powi(step), 1.0 - 0.999f64.powi(step));
                q[i] -= 0.1 / bc1 * m[i] / ((v[i] / bc2).sqrt() + 1e-8);
            }
        }
        let got = Vec::<f64>::try_from(&p).unwrap();
        for i in 0..2 {
            assert!((got[i] - q[i]).abs() < 1e-12, "{got:?} vs {q:?}");
        }
    }

    #[test]
    fn state_round_trips() {
        // Two variables, so the second's moments sit at an offset in the flat buffers.
        let vars = || {
            vec![
                (
                    "a".to_string(),
                    Tensor::from_slice(&[0.5f32, 1.5]).set_requires_grad(true),
                ),
                (
                    "b".to_string(),
                    Tensor::from_slice(&[-1.0f32, 2.0, 3.0]).set_requires_grad(true),
                ),
            ]
        };
        let (pa, pb) = (vars(), vars());
        let mut a = AdamW::new(
            pa.iter()
                .map(|(n, t)| (n.clone(), t.shallow_clone()))
                .collect(),
            AdamWConfig::default(),
        );
        for _ in 0..2 {
            a.zero_grad();
            (pa[0].1.square().sum(Kind::Float) + pa[1].1.pow_tensor_scalar(3).sum(Kind::Float))
                .backward();
            a.step_with_lr(0.01);
        }
        assert!(a.updates_flat());
        let path =
            std::env::temp_dir().join(format!("hrf-adamw-{}.safetensors", std::process::id()));
        a.save(&path).unwrap();
        let mut b = AdamW::new(
            pb.iter()
                .map(|(n, t)| (n.clone(), t.shallow_clone()))
                .collect(),
            AdamWConfig::default(),
        );
        b.load(&path).unwrap();
        assert_eq!(b.step, 2);
        for i in 0..2 {
            for (x, y) in [(&a.exp_avg, &b.exp_avg), (&a.exp_avg_sq, &b.exp_avg_sq)] {
                assert_eq!(
                    Vec::<f32>::try_from(&x[i]).unwrap(),
                    Vec::<f32>::try_from(&y[i]).unwrap()
                );
                assert!(x[i].abs().sum(Kind::Float).double_value(&[]) > 0.0);
            }
        }
        // The loaded moments landed in b's flat buffers, where its updates read them.
        let flat = b.flat.as_ref().unwrap();
        assert!(flat.exp_avg.equal(&a.flat.as_ref().unwrap().exp_avg));
        std::fs::remove_file(path).unwrap();
    }

    /// Deterministic values without torch's global generator (other tests seed and draw from it
    /// concurrently).
    fn wavy(shape: &[i64], phase: f64) -> Tensor {
        let n: i64 = shape.iter().product();
        (Tensor::arange(n, (Kind::Float, tch::Device::Cpu)) * 0.37 + phase)
            .sin()
            .view(shape)
    }

    /// Two copies of a small MLP trained five steps with clipping: the flat optimiser and the
    /// variable-by-variable one agree to the bit (so a resumed run, whose first update is a
    /// per-variable one, continues exactly), the flat one really updates through its buffers
    /// from the second step, and the VarStore sees its updates.
    #[test]
    fn flat_update_matches_the_per_variable_one() {
        use tch::nn;
        let make = || {
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let r = vs.root();
            let w1 = (&r / "l1").var_copy("weight", &(wavy(&[8, 5], 0.0) * 0.5));
            let b1 = (&r / "l1").var_copy("bias", &(wavy(&[8], 1.0) * 0.1));
            let w2 = (&r / "l2").var_copy("weight", &(wavy(&[3, 8], 2.0) * 0.4));
            let b2 = (&r / "l2").var_copy("bias", &(wavy(&[3], 3.0) * 0.1));
            let net = move |x: &Tensor| (x.matmul(&w1.tr()) + &b1).tanh().matmul(&w2.tr()) + &b2;
            (vs, net)
        };
        let (vs_a, net_a) = make();
        let (vs_b, net_b) = make();
        let init: std::collections::HashMap<String, Tensor> = vs_a
            .variables()
            .into_iter()
            .map(|(n, t)| (n, t.copy()))
            .collect();
        let sorted = |vs: &nn::VarStore| {
            let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let cfg = AdamWConfig {
            lr: 0.05,
            weight_decay: 0.1,
            ..Default::default()
        };
        let mut flat = AdamW::new(sorted(&vs_a), cfg);
        let mut reference = AdamW::per_variable(sorted(&vs_b), cfg);
        assert!(flat.flat_params().is_some() && reference.flat_params().is_none());
        let x = wavy(&[16, 5], 0.5) * 2.0;
        for step in 0..5 {
            let mut norms = [0.0; 2];
            norms[0] = {
                flat.zero_grad();
                net_a(&x).square().mean(Kind::Float).backward();
                let n = flat.clip_grad_norm(0.05);
                flat.step_with_lr(0.05);
                n
            };
            norms[1] = {
                reference.zero_grad();
                net_b(&x).square().mean(Kind::Float).backward();
                let n = reference.clip_grad_norm(0.05);
                reference.step_with_lr(0.05);
                n
            };
            assert!(norms[0] > 0.05, "the clipping must act");
            assert_eq!(norms[0], norms[1]);
            assert_eq!(flat.updates_flat(), step > 0, "step {step}");
            assert!(!reference.updates_flat());
        }
        let (a, b) = (vs_a.variables(), vs_b.variables());
        for (name, t) in &a {
            assert!(t.equal(&b[name]), "{name}");
            assert!(!t.equal(&init[name]), "{name} was not updated");
        }
    }
}
