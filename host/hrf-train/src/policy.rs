//! The policy DDPO and HRF fine-tune: what the epoch needs from a model, and nothing more. The
//! sampler, the PPO loss, the KL term and HRF's anchors talk to a `Policy`, never to a network
//! type, so another model family (a latent text-to-image pipeline) slots in by implementing it.
//!
//! Today's one implementation is the pixel-space `UNet2DModel`: its latents are images, its
//! conditioning is a class label, and decoding is a conversion to 8-bit pixels.

use hrf_core::Image;
use hrf_diffusion::autocast::Autocast;
use hrf_diffusion::UNet2DModel;
use tch::{Device, Kind, Tensor};

/// A denoiser over latents with optional per-row conditioning.
///
/// `conditioning` is a `[B]` int64 tensor of condition ids, one per row: class labels for the
/// pixel testbed (the null condition means "unconditional"). Rows with the null condition are
/// what classifier-free guidance contrasts against.
pub trait Policy {
    /// The shape of one latent, `[C, H, W]`: what pure noise x_T is drawn in.
    fn latent_shape(&self) -> [i64; 3];

    /// The condition id meaning "no condition" (classifier-free guidance's unconditional
    /// branch), or None for a model without conditioning.
    fn null_condition(&self) -> Option<i64>;

    /// The model's output at latents `x` and timesteps `t` (what the scheduler's step takes:
    /// ε̂ for an epsilon model), with classifier-free guidance weight `guidance`:
    /// uncond + w·(cond − uncond). w = 1 is plain conditional; rows all unconditional skip it.
    fn guided_output(
        &self,
        x: &Tensor,
        t: &Tensor,
        conditioning: Option<&Tensor>,
        guidance: f64,
    ) -> Tensor;

    /// `guided_output` for rows that are steps of the trajectories an epoch trains, row r named
    /// by `step_keys[r]` ([`crate::sampling::step_key`]: the sample and the step): a policy
    /// whose passes draw randomness while it learns (LoRA dropout) draws it from the keys, so
    /// a step is trained with the draw it was sampled with. Default: `guided_output`.
    fn guided_output_keyed(
        &self,
        step_keys: &[u64],
        x: &Tensor,
        t: &Tensor,
        conditioning: Option<&Tensor>,
        guidance: f64,
    ) -> Tensor {
        debug_assert_eq!(step_keys.len() as i64, x.size()[0], "one key per row");
        self.guided_output(x, t, conditioning, guidance)
    }

    /// Model evaluations of one guided step over `rows` rows (guidance doubles the batch unless
    /// the rows are unconditional or the weight is 1): the epoch's `unet_evals` count.
    fn step_evals(&self, conditioning: Option<&Tensor>, guidance: f64, rows: u64) -> u64 {
        if self.guides(conditioning, guidance) {
            2 * rows
        } else {
            rows
        }
    }

    /// Whether `guided_output` runs the conditional and the unconditional branch.
    fn guides(&self, conditioning: Option<&Tensor>, guidance: f64) -> bool {
        match (conditioning, self.null_condition()) {
            (Some(y), Some(null)) if guidance != 1.0 => {
                !bool::try_from(y.eq(null).all()).unwrap_or(false)
            }
            _ => false,
        }
    }

    /// Final latents x₀ `[B, …]` as the 8-bit images rewards see.
    fn decode(&self, x0: &Tensor) -> Vec<Image>;

    /// Completes a backward pass: a policy whose `guided_output` ran with gradient
    /// checkpointing backpropagates the gradients the loss's `backward()` left on its outputs
    /// into its weights. Call after each `backward()` of a loss built on `guided_output`.
    fn finish_backward(&self) {}

    /// Whether passes may run on several threads at once (`model.workers`): true when a pass
    /// only reads the policy (no adapter switch, dropout keys or checkpoint tape it sets while
    /// it runs) and its backward needs no `finish_backward`. Default false.
    fn concurrent(&self) -> bool {
        false
    }
}

impl Policy for UNet2DModel {
    fn latent_shape(&self) -> [i64; 3] {
        let cfg = self.config();
        let size = cfg.sample_size.unwrap_or(32);
        [cfg.in_channels, size, size]
    }

    fn null_condition(&self) -> Option<i64> {
        self.config().num_class_embeds.map(|k| k - 1)
    }

    fn guided_output(
        &self,
        x: &Tensor,
        t: &Tensor,
        conditioning: Option<&Tensor>,
        guidance: f64,
    ) -> Tensor {
        match (conditioning, self.null_condition()) {
            (Some(y), Some(null)) if guidance != 1.0 => {
                if !self.guides(conditioning, guidance) {
                    return self.forward(x, t, Some(y));
                }
                let uncond = y.full_like(null);
                let out = self.forward(
                    &Tensor::cat(&[x, x], 0),
                    &Tensor::cat(&[t, t], 0),
                    Some(&Tensor::cat(&[y, &uncond], 0)),
                );
                let chunks = out.chunk(2, 0);
                &chunks[1] + (&chunks[0] - &chunks[1]) * guidance
            }
            _ => self.forward(x, t, conditioning),
        }
    }

    fn decode(&self, x0: &Tensor) -> Vec<Image> {
        to_images(x0)
    }

    /// Its forward pass reads its weights and nothing else.
    fn concurrent(&self) -> bool {
        true
    }
}

/// A policy at the run's compute precision: with an autocast (`training.precision: bf16`) its
/// forward passes run under libtorch's autocast, without one it is the policy itself. Under
/// autocast
/// the model computes its convolutions, linear layers and attention in bf16, and its output
/// comes back in the latents' precision (fp32), so the scheduler's arithmetic, the log-probs
/// and the PPO ratio stay fp32. The backward pass of a forward run here follows the precisions
/// autograd recorded, outside any region (as PyTorch advises); a checkpointed UNet keeps the
/// autocast its forward ran under and recomputes under it (as `torch.utils.checkpoint`).
///
/// Each call is its own autocast region: the region's cached bf16 copies of the weights are
/// dropped when it ends, so an optimiser step between two calls is always seen.
pub struct MixedPrecision<'a> {
    inner: &'a dyn Policy,
    autocast: Option<Autocast>,
}

impl<'a> MixedPrecision<'a> {
    pub fn new(inner: &'a dyn Policy, autocast: Option<Autocast>) -> Self {
        Self { inner, autocast }
    }

    /// `pass` as one autocast region (when there is an autocast), its output back in `x`'s
    /// precision.
    fn within(&self, x: &Tensor, pass: impl FnOnce() -> Tensor) -> Tensor {
        match self.autocast {
            Some(a) => a.run(pass).to_kind(x.kind()),
            None => pass(),
        }
    }
}

impl Policy for MixedPrecision<'_> {
    fn latent_shape(&self) -> [i64; 3] {
        self.inner.latent_shape()
    }

    fn null_condition(&self) -> Option<i64> {
        self.inner.null_condition()
    }

    fn guided_output(
        &self,
        x: &Tensor,
        t: &Tensor,
        conditioning: Option<&Tensor>,
        guidance: f64,
    ) -> Tensor {
        self.within(x, || self.inner.guided_output(x, t, conditioning, guidance))
    }

    fn guided_output_keyed(
        &self,
        step_keys: &[u64],
        x: &Tensor,
        t: &Tensor,
        conditioning: Option<&Tensor>,
        guidance: f64,
    ) -> Tensor {
        self.within(x, || {
            self.inner
                .guided_output_keyed(step_keys, x, t, conditioning, guidance)
        })
    }

    fn step_evals(&self, conditioning: Option<&Tensor>, guidance: f64, rows: u64) -> u64 {
        self.inner.step_evals(conditioning, guidance, rows)
    }

    fn guides(&self, conditioning: Option<&Tensor>, guidance: f64) -> bool {
        self.inner.guides(conditioning, guidance)
    }

    fn decode(&self, x0: &Tensor) -> Vec<Image> {
        self.inner.decode(x0)
    }

    fn finish_backward(&self) {
        self.inner.finish_backward()
    }

    /// Each call's autocast region is its thread's own (libtorch keeps autocast per thread).
    fn concurrent(&self) -> bool {
        self.inner.concurrent()
    }
}

/// Converts a batch of model-space samples `[B, C, H, W]` to 8-bit images.
pub fn to_images(x: &Tensor) -> Vec<hrf_core::Image> {
    let (b, c, h, w) = x.size4().expect("[B, C, H, W]");
    let channels = hrf_core::Channels::from_count(c as usize).expect("1 or 3 channels");
    let cpu = x.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
    let flat = Vec::<f32>::try_from(cpu.flatten(0, -1)).expect("f32");
    let n = (c * h * w) as usize;
    (0..b as usize)
        .map(|i| {
            hrf_core::Image::from_chw_unit(w as u32, h as u32, channels, &flat[i * n..(i + 1) * n])
                .expect("size")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixels_map_from_unit_range_to_bytes() {
        let x = Tensor::from_slice(&[-1.0f32, 0.0, 1.0, 2.0]).view([1, 1, 2, 2]);
        let images = to_images(&x);
        assert_eq!(images.len(), 1);
        assert_eq!((images[0].width(), images[0].height()), (2, 2));
        let px = images[0].data();
        assert_eq!(
            (px[0], px[2], px[3]),
            (0, 255, 255),
            "−1 → 0, 1 → 255, clamped above"
        );
        assert!((127..=128).contains(&px[1]), "0 → mid grey, got {}", px[1]);
    }
}
