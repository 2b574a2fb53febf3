//! The model a fine-tuning run drives, as `model:` names it: a pixel UNet2DModel (a folder or a
//! named architecture; every weight trains) or a Stable Diffusion pipeline folder (LoRA adapters
//! train; prompts are encoded once, the negative prompt is guidance's unconditional branch).

use hrf_config::model_spec::{ModelSource, Precision};
use hrf_config::pipeline::RunPipeline;
use hrf_diffusion::lora::LoraSpec;
use hrf_diffusion::stable_diffusion::StableDiffusion;
use hrf_diffusion::{DiffusersModel, SchedulerConfig};
use hrf_train::policy::Policy;
use hrf_train::text_to_image::TextToImage;
use hrf_train::tuned::TunedModel;

use crate::usage::UsageError;

pub enum RunModel {
    Pixel(Box<DiffusersModel>),
    TextToImage(Box<TextToImage>),
}

impl RunModel {
    pub fn tuned(&self) -> &dyn TunedModel {
        match self {
            Self::Pixel(m) => m.as_ref(),
            Self::TextToImage(t) => t.as_ref(),
        }
    }

    pub fn policy(&self) -> &dyn Policy {
        self.tuned().policy()
    }

    /// The frozen base model as a view of this one (a pipeline's adapters off), where the
    /// model has one; else the KL term loads the base model on its own.
    pub fn base_view(&self) -> Option<hrf_train::text_to_image::BaseView<'_>> {
        match self {
            Self::Pixel(_) => None,
            Self::TextToImage(t) => t.base_view(),
        }
    }

    /// (all parameters, the trained ones).
    pub fn parameters(&self) -> (i64, i64) {
        let count = |vs: &tch::nn::VarStore| -> i64 {
            vs.variables().values().map(|t| t.numel() as i64).sum()
        };
        let trained: i64 = self
            .tuned()
            .trainable()
            .iter()
            .map(|(_, t)| t.numel() as i64)
            .sum();
        match self {
            Self::Pixel(m) => (m.num_parameters(), trained),
            Self::TextToImage(t) => {
                let sd = &t.pipeline;
                let all =
                    count(&sd.unet.vs) + count(&sd.vae.vs) + count(&sd.text_encoder.vs) + trained;
                (all, trained)
            }
        }
    }

    /// The 1-channel pixel UNet's config, for what only the testbed's models have (class
    /// names, the evaluation classifier).
    pub fn pixel(&self) -> Option<&DiffusersModel> {
        match self {
            Self::Pixel(m) => Some(m.as_ref()),
            Self::TextToImage(_) => None,
        }
    }
}

/// The pipeline's model (with fresh LoRA adapters when `adapters`; the KL term's frozen base
/// is loaded without), and the scheduler settings it samples with.
pub fn load(
    p: &RunPipeline,
    dev: tch::Device,
    adapters: bool,
) -> anyhow::Result<(RunModel, SchedulerConfig)> {
    let file = p.file.display();
    let seed = hrf_train::sampling::mix_seed(&[p.run.seed, 0x1417]) as u64;
    let (model, own) = match (&p.model.source, p.model.is_text_to_image()) {
        (ModelSource::Folder(dir), true) => {
            let settings = p
                .model
                .lora
                .as_ref()
                .expect("validated: a pipeline has model.lora");
            let spec = LoraSpec {
                rank: settings.rank,
                alpha: settings.alpha.unwrap_or(settings.rank as f64),
                targets: settings.targets.clone(),
                dropout: settings.dropout,
            };
            spec.validate()
                .map_err(|e| UsageError(format!("{file}: model.lora: {e}")))?;
            let lora_seed = hrf_train::sampling::mix_seed(&[p.run.seed, 0x10a]) as u64;
            let mut sd = StableDiffusion::load(dir, dev, adapters.then_some((&spec, lora_seed)))
                .map_err(|e| UsageError(format!("{file}: model.weights: {e}")))?;
            if let Some(kind) = frozen_kind(p.model.dtype, dev)
                .map_err(|e| UsageError(format!("{file}: model.dtype: {e}")))?
            {
                sd.set_precision(kind);
            }
            let own = Some(sd.scheduler.clone());
            let mut t2i = TextToImage::new(sd, &p.prompts, &p.model.negative_prompt);
            t2i.set_checkpointing(p.model.gradient_checkpointing);
            (RunModel::TextToImage(Box::new(t2i)), own)
        }
        (source, _) => {
            let m = super::pretrain::load_model(source, dev, seed)?;
            let own = m.scheduler.clone();
            (RunModel::Pixel(Box::new(m)), own)
        }
    };
    let scheduler = match (own, &p.scheduler) {
        (Some(s), None) => s,
        (_, Some(v)) => serde_json::from_value::<SchedulerConfig>(v.clone())
            .map_err(|e| UsageError(format!("{file}: scheduler: {e}")))?,
        (None, None) => SchedulerConfig::default(),
    };
    scheduler
        .validate()
        .map_err(|e| UsageError(format!("{file}: scheduler: {e}")))?;
    Ok((model, scheduler))
}

/// The libtorch kind of `model.dtype` on `dev` (`None`: fp32, nothing to cast). fp16 needs CUDA
/// (validation refuses `device: cpu`; this catches `auto` on a machine without a GPU).
pub fn frozen_kind(dtype: Precision, dev: tch::Device) -> Result<Option<tch::Kind>, String> {
    match dtype {
        Precision::Fp32 => Ok(None),
        Precision::Bf16 => Ok(Some(tch::Kind::BFloat16)),
        Precision::Fp16 if dev.is_cuda() => Ok(Some(tch::Kind::Half)),
        Precision::Fp16 => Err(
            "fp16 runs on CUDA only, and this run's device is the CPU: use bf16 (or fp32)".into(),
        ),
    }
}
