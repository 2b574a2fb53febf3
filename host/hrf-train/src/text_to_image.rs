//! The text-to-image policy: a Stable Diffusion pipeline (hrf_diffusion::stable_diffusion) seen
//! through `Policy`. Latents are the UNet's, conditioning ids index a table of text states made
//! once for the run (each prompt's, then the negative prompt's as the null condition), guidance
//! contrasts the prompt with the negative prompt as StableDiffusionPipeline does, and decoding
//! runs the VAE to the 8-bit RGB images the rewards see.

use hrf_core::Image;
use std::sync::Mutex;

use hrf_diffusion::stable_diffusion::StableDiffusion;
use hrf_diffusion::unet_cond::Checkpoint;
use tch::{Kind, Tensor};

use crate::policy::{to_images, Policy};

/// Whether autograd records operations here (false inside `tch::no_grad`).
fn grad_enabled() -> bool {
    let leaf = Tensor::zeros([1], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    (&leaf * 2.0).requires_grad()
}

pub struct TextToImage {
    pub pipeline: StableDiffusion,
    /// `[P + 1, L, D]`: the prompts' text states, then the negative prompt's.
    states: Tensor,
    prompts: Vec<String>,
    negative: String,
    /// Gradient checkpointing of the UNet while gradients are recorded.
    checkpointing: bool,
    /// Checkpointed passes whose backward waits for their output's gradient.
    pending: Mutex<Vec<Checkpoint>>,
}

impl TextToImage {
    /// Encodes `prompts` and `negative` (the empty prompt: the pipeline's unconditional branch)
    /// once. Condition id i < P is prompt i; P is the negative prompt.
    pub fn new(pipeline: StableDiffusion, prompts: &[String], negative: &str) -> Self {
        let mut texts: Vec<&str> = prompts.iter().map(String::as_str).collect();
        texts.push(negative);
        let states = pipeline.encode_prompts(&texts);
        Self {
            pipeline,
            states,
            prompts: prompts.to_vec(),
            negative: negative.to_string(),
            checkpointing: false,
            pending: Mutex::new(Vec::new()),
        }
    }

    /// Gradient checkpointing (`model.gradient_checkpointing`): under autograd, the UNet keeps
    /// only each level's inputs and recomputes the levels in [`Policy::finish_backward`]; the
    /// gradients are the plain pass's. Sampling (no autograd) is unchanged.
    pub fn set_checkpointing(&mut self, on: bool) {
        self.checkpointing = on;
    }

    pub fn prompts(&self) -> &[String] {
        &self.prompts
    }

    pub fn negative_prompt(&self) -> &str {
        &self.negative
    }

    fn null(&self) -> i64 {
        self.prompts.len() as i64
    }

    /// The frozen base pipeline (the KL term's reference) as a view of this one: the same
    /// weights, text states and VAE with the LoRA adapters off, so no second copy is loaded.
    /// None when the UNet has no adapters (then it is its own base).
    pub fn base_view(&self) -> Option<BaseView<'_>> {
        self.pipeline.unet.lora.as_ref().map(|_| BaseView(self))
    }

    /// Text states `[B, L, D]` of condition ids `[B]`, in the UNet's precision.
    fn states_of(&self, ids: &Tensor) -> Tensor {
        let kind = self.pipeline.unet.kind();
        self.states
            .index_select(0, &ids.to_device(self.states.device()))
            .to_kind(kind)
    }

    fn unet(&self, x: &Tensor, t: &Tensor, ids: &Tensor) -> Tensor {
        let unet = &self.pipeline.unet;
        let (x_in, states) = (x.to_kind(unet.kind()), self.states_of(ids));
        let out = if self.checkpointing && grad_enabled() {
            let (out, ck) = unet.forward_checkpointed(&x_in, t, &states);
            self.pending.lock().expect("not poisoned").push(ck);
            out
        } else {
            unet.forward(&x_in, t, &states)
        };
        out.to_kind(x.kind())
    }
}

/// [`TextToImage::base_view`]: the pipeline with its adapters off.
pub struct BaseView<'a>(&'a TextToImage);

impl Policy for BaseView<'_> {
    fn latent_shape(&self) -> [i64; 3] {
        self.0.latent_shape()
    }

    fn null_condition(&self) -> Option<i64> {
        self.0.null_condition()
    }

    fn guided_output(
        &self,
        x: &Tensor,
        t: &Tensor,
        conditioning: Option<&Tensor>,
        guidance: f64,
    ) -> Tensor {
        // The base model is frozen: no graph, so nothing checkpointed waits on this pass.
        let off = &self.0.pipeline.unet.adapters;
        tch::no_grad(|| off.without_adapters(|| self.0.guided_output(x, t, conditioning, guidance)))
    }

    fn decode(&self, x0: &Tensor) -> Vec<Image> {
        self.0.decode(x0)
    }
}

impl Policy for TextToImage {
    fn latent_shape(&self) -> [i64; 3] {
        self.pipeline.latent_shape()
    }

    fn null_condition(&self) -> Option<i64> {
        Some(self.null())
    }

    fn guided_output(
        &self,
        x: &Tensor,
        t: &Tensor,
        conditioning: Option<&Tensor>,
        guidance: f64,
    ) -> Tensor {
        let b = x.size()[0];
        let ids = match conditioning {
            Some(y) => y.shallow_clone(),
            None => Tensor::full([b], self.null(), (Kind::Int64, x.device())),
        };
        if !self.guides(Some(&ids), guidance) {
            return self.unet(x, t, &ids);
        }
        // As StableDiffusionPipeline: one batch of [unconditional; conditional] rows.
        let uncond = ids.full_like(self.null());
        let out = self.unet(
            &Tensor::cat(&[x, x], 0),
            &Tensor::cat(&[t, t], 0),
            &Tensor::cat(&[&uncond, &ids], 0),
        );
        let chunks = out.chunk(2, 0);
        &chunks[0] + (&chunks[1] - &chunks[0]) * guidance
    }

    /// With LoRA dropout (`model.lora.dropout`), the guided pass runs with each row's
    /// adapters masked by its step key (both of guidance's branches alike); without, it is
    /// `guided_output`.
    fn guided_output_keyed(
        &self,
        step_keys: &[u64],
        x: &Tensor,
        t: &Tensor,
        conditioning: Option<&Tensor>,
        guidance: f64,
    ) -> Tensor {
        let unet = &self.pipeline.unet;
        if !unet
            .lora
            .as_ref()
            .is_some_and(|(spec, _)| spec.dropout > 0.0)
        {
            return self.guided_output(x, t, conditioning, guidance);
        }
        assert_eq!(step_keys.len() as i64, x.size()[0], "one key per row");
        // The masks take 32-bit keys.
        let keys: Vec<i64> = step_keys
            .iter()
            .map(|&k| (k & 0xffff_ffff) as i64)
            .collect();
        let keys = Tensor::from_slice(&keys).to_device(x.device());
        unet.dropout_keys.with_keys(Some(&keys), || {
            self.guided_output(x, t, conditioning, guidance)
        })
    }

    fn decode(&self, x0: &Tensor) -> Vec<Image> {
        to_images(&self.pipeline.decode_to_unit(x0))
    }

    fn finish_backward(&self) {
        let pending = std::mem::take(&mut *self.pending.lock().expect("not poisoned"));
        for ck in pending.into_iter().rev() {
            let g = ck.eps.grad();
            if g.defined() {
                self.pipeline.unet.backward_checkpointed(ck, &g.detach());
            }
        }
    }
}
