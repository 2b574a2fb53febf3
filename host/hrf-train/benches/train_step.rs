//! The cost of one DDPM training step of the testbed UNets (forward, backward, gradient clipping,
//! AdamW, EMA), with the optimiser and EMA updating variable by variable (~180 tensors, a dozen
//! kernels each) against the one-buffer layout `AdamW::new` uses, measured in this one process
//! on the best device (CUDA when present, else the CPU). Prints milliseconds per step (median)
//! and the ratios; also the optimiser + EMA part alone.
//!
//! `cargo bench -p hrf-train --bench train_step [-- BATCH [STEPS]]` (defaults 128 and 30).
//! On a GPU machine the compiled bench needs libtorch's folder on LD_LIBRARY_PATH.

use std::time::Instant;

use hrf_diffusion::{DiffusersModel, UNetConfig};
use hrf_train::{ema, AdamW, AdamWConfig};
use tch::{Device, Kind, Tensor};

struct Trainer {
    model: DiffusersModel,
    ema_model: DiffusersModel,
    opt: AdamW,
    ema: ema::ModelEma,
}

impl Trainer {
    fn new(cfg: &UNetConfig, dev: Device, flat: bool) -> Self {
        let model = DiffusersModel::new_seeded(cfg, dev, 0).expect("model");
        let ema_model = DiffusersModel::new(cfg, dev).expect("model");
        ema::copy_weights(&ema_model.vs, &model.vs);
        let mut params: Vec<(String, Tensor)> = model.vs.variables().into_iter().collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let config = AdamWConfig {
            lr: 1e-4,
            weight_decay: 0.0,
            ..Default::default()
        };
        let opt = if flat {
            AdamW::new(params, config)
        } else {
            AdamW::per_variable(params, config)
        };
        let ema = ema::ModelEma::new(&ema_model.vs, &opt);
        assert_eq!(flat, ema.is_flat());
        Self {
            model,
            ema_model,
            opt,
            ema,
        }
    }

    fn update(&mut self) {
        let _norm = self.opt.clip_grad_norm_deferred(1.0);
        self.opt.step_with_lr(1e-4);
        self.ema.update(&self.ema_model.vs, &self.model.vs, 0.999);
    }

    fn step(&mut self, x: &Tensor, t: &Tensor, y: &Tensor, noise: &Tensor) {
        self.opt.zero_grad();
        let pred = self.model.unet.forward(x, t, Some(y));
        (pred - noise).square().mean(Kind::Float).backward();
        self.update();
    }
}

fn sync(dev: Device) {
    if let Device::Cuda(i) = dev {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Median milliseconds of `f` over `n` timed calls (after 5 untimed ones), synchronising the
/// device around each call.
fn median_ms(dev: Device, n: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..5 {
        f();
    }
    sync(dev);
    let mut t: Vec<f64> = (0..n)
        .map(|_| {
            let s = Instant::now();
            f();
            sync(dev);
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[n / 2]
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let batch: i64 = args.first().map_or(128, |a| a.parse().expect("BATCH"));
    let steps: usize = args.get(1).map_or(30, |a| a.parse().expect("STEPS"));
    let dev = hrf_diffusion::device::best_device();
    println!("device {dev:?}, batch {batch}, median of {steps} steps");
    for name in ["testbed", "testbed-wide"] {
        let cfg = UNetConfig::named(name).expect("named architecture");
        let x = hrf_diffusion::init::keyed_normal(&[1], &[batch, 1, 32, 32]).to_device(dev);
        let noise = hrf_diffusion::init::keyed_normal(&[2], &[batch, 1, 32, 32]).to_device(dev);
        let t = Tensor::randint(1000, [batch], (Kind::Int64, dev));
        let y = Tensor::randint(11, [batch], (Kind::Int64, dev));
        let mut per_var = Trainer::new(&cfg, dev, false);
        let mut flat = Trainer::new(&cfg, dev, true);
        let vars = per_var.model.vs.variables().len();
        let step_pv = median_ms(dev, steps, || per_var.step(&x, &t, &y, &noise));
        let step_flat = median_ms(dev, steps, || flat.step(&x, &t, &y, &noise));
        assert!(flat.opt.updates_flat() && !per_var.opt.updates_flat());
        // The optimiser and EMA alone, on the gradients of the last step.
        let upd_pv = median_ms(dev, steps, || per_var.update());
        let upd_flat = median_ms(dev, steps, || flat.update());
        println!(
            "{name} ({} parameters in {vars} tensors):\n  training step   per-variable {step_pv:8.2} ms, flat {step_flat:8.2} ms: {:.2}× faster ({:.0} vs {:.0} images/s)\n  optimiser + EMA per-variable {upd_pv:8.2} ms, flat {upd_flat:8.2} ms: {:.2}× faster",
            per_var.model.num_parameters(),
            step_pv / step_flat,
            batch as f64 / step_pv * 1e3,
            batch as f64 / step_flat * 1e3,
            upd_pv / upd_flat,
        );
    }
}
