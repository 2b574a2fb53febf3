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
pub struct AdamW {
    pub config: AdamWConfig,
    params: Vec<(String, Tensor)>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    /// Optimiser steps taken so far.
    pub step: i64,
}

impl AdamW {
    /// `params`: (name, variable) pairs, e.g. a VarStore's trainable variables sorted by name.
    pub fn new(params: Vec<(String, Tensor)>, config: AdamWConfig) -> Self {
        let zeros = |p: &Tensor| p.zeros_like().detach();
        Self {
            exp_avg: params.iter().map(|(_, p)| zeros(p)).collect(),
            exp_avg_sq: params.iter().map(|(_, p)| zeros(p)).collect(),
            params,
            config,
            step: 0,
        }
    }

    pub fn params(&self) -> impl Iterator<Item = &Tensor> {
        self.params.iter().map(|(_, p)| p)
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// The global L2 norm of the gradients (before any clipping).
    pub fn grad_norm(&self) -> f64 {
        let norms: Vec<Tensor> = self
            .params
            .iter()
            .map(|(_, p)| p.grad())
            .filter(|g| g.defined())
            .map(|g| g.to_kind(Kind::Float).square().sum(Kind::Float))
            .collect();
        if norms.is_empty() {
            return 0.0;
        }
        f64::try_from(Tensor::stack(&norms, 0).sum(Kind::Float).sqrt()).unwrap_or(f64::NAN)
    }

    /// Scales gradients so their global norm is at most `max_norm`; returns the norm before.
    /// As torch.nn.utils.clip_grad_norm_: factor max_norm / (norm + 1e-6), applied when < 1.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let norm = self.grad_norm();
        let factor = max_norm / (norm + 1e-6);
        if factor < 1.0 {
            tch::no_grad(|| {
                for (_, p) in &self.params {
                    let mut g = p.grad();
                    if g.defined() {
                        let _ = g.g_mul_scalar_(factor);
                    }
                }
            });
        }
        norm
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
        tch::no_grad(|| {
            for (i, (_, p)) in self.params.iter_mut().enumerate() {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let _ = p.g_mul_scalar_(1.0 - lr * weight_decay);
                let m = &mut self.exp_avg[i];
                let _ = m.g_mul_scalar_(beta1);
                let _ = m.g_add_(&(&g * (1.0 - beta1)));
                let v = &mut self.exp_avg_sq[i];
                let _ = v.g_mul_scalar_(beta2);
                let _ = v.g_add_(&(g.square() * (1.0 - beta2)));
                let denom = (v.sqrt() / bc2.sqrt()) + eps;
                let update = &*m / denom * (lr / bc1);
                let _ = p.g_sub_(&update);
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
        let p = Tensor::from_slice(&[0.5f32, 1.5]).set_requires_grad(true);
        let mut a = AdamW::new(
            vec![("w".into(), p.shallow_clone())],
            AdamWConfig::default(),
        );
        p.square().sum(Kind::Float).backward();
        a.step_with_lr(0.01);
        let path =
            std::env::temp_dir().join(format!("hrf-adamw-{}.safetensors", std::process::id()));
        a.save(&path).unwrap();
        let q = Tensor::from_slice(&[0.5f32, 1.5]).set_requires_grad(true);
        let mut b = AdamW::new(
            vec![("w".into(), q.shallow_clone())],
            AdamWConfig::default(),
        );
        b.load(&path).unwrap();
        assert_eq!(b.step, 1);
        assert_eq!(
            Vec::<f32>::try_from(&b.exp_avg[0]).unwrap(),
            Vec::<f32>::try_from(&a.exp_avg[0]).unwrap()
        );
        std::fs::remove_file(path).unwrap();
    }
}
