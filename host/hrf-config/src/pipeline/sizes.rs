//! Sizes: the fixed caps on batch sizes, epochs and sample counts (limits.rs), the largest
//! tensor a batch makes, and hrf's estimate of the run's memory against the machine's
//! (`run_sizes`, `RunPipeline::memory_estimate`, `check_sizes`).

use super::problems::Problems;
use super::resolved::{EvaluationSettings, RewardKind, RewardSpec, RunPipeline};
use crate::limits::{self, ModelShape, RunSizes};
use crate::model_spec::ModelSpec;
use crate::reward::ImageInput;
use crate::training::{SamplingSettings, TrainingSettings};

/// Checks the pipeline's sizes: fixed caps first, then (when they hold) what the model makes of
/// them: the batches' largest tensors and the memory estimate against this machine's.
pub(super) fn check(
    p: &mut Problems<'_>,
    model: Option<&ModelSpec>,
    s: &SamplingSettings,
    t: &TrainingSettings,
    e: &EvaluationSettings,
    conditional: bool,
    rewards: &[RewardSpec],
) {
    // Sizes: fixed caps first, then (when they hold) what the model makes of them.
    let mut sizes_ok = true;
    let batch = "images per batch";
    sizes_ok &= p.at_most(
        "sampling.batch_size",
        s.batch_size,
        limits::MAX_BATCH,
        batch,
    );
    sizes_ok &= p.at_most(
        "sampling.batches_per_epoch",
        s.batches_per_epoch,
        limits::MAX_BATCHES_PER_EPOCH,
        "batches per epoch",
    );
    let per_epoch = s.batch_size.saturating_mul(s.batches_per_epoch);
    if sizes_ok {
        sizes_ok &= p.at_most(
            "sampling.batches_per_epoch",
            per_epoch,
            limits::MAX_SAMPLES_PER_EPOCH,
            "samples per epoch, sampling.batch_size × batches_per_epoch",
        );
    }
    sizes_ok &= p.at_most("training.epochs", t.epochs, limits::MAX_EPOCHS, "epochs");
    let run_samples = t.epochs as u128 * per_epoch as u128;
    if sizes_ok && run_samples > limits::MAX_RUN_SAMPLES {
        p.push(
            "training.epochs",
            format!(
                "{} epochs of {} samples make {} samples, more than a run may sample ({})",
                t.epochs,
                crate::thousands(per_epoch as u64),
                crate::thousands(run_samples as u64),
                crate::thousands(limits::MAX_RUN_SAMPLES as u64)
            ),
        );
        sizes_ok = false;
    }
    sizes_ok &= p.at_most(
        "training.batch_size",
        t.batch_size,
        limits::MAX_BATCH,
        batch,
    );
    if let Some(m) = t.micro_batch {
        sizes_ok &= p.at_most("training.micro_batch", m, limits::MAX_BATCH, batch);
    }
    sizes_ok &= p.at_most(
        "evaluation.batch_size",
        e.batch_size,
        limits::MAX_BATCH,
        batch,
    );
    for (field, v) in [
        ("evaluation.samples", e.samples),
        ("evaluation.final_samples", e.final_samples),
    ] {
        sizes_ok &= p.at_most(field, v, limits::MAX_EVAL_SAMPLES, "samples");
    }
    for (i, r) in rewards.iter().enumerate() {
        sizes_ok &= p.at_most(
            format!("rewards[{i}].batch_size"),
            r.batch_size,
            limits::MAX_BATCH,
            "images per reward call",
        );
        if let RewardKind::Onnx {
            input: ImageInput { size: Some(wh), .. },
            ..
        } = &r.kind
        {
            if wh.iter().any(|&v| v == 0 || v > limits::MAX_IMAGE_SIDE) {
                p.push(
                    format!("rewards[{i}].input.size"),
                    format!(
                        "width and height must be in 1..={}, got [{}, {}]",
                        limits::MAX_IMAGE_SIDE,
                        wh[0],
                        wh[1]
                    ),
                );
                sizes_ok = false;
            }
        }
    }
    let shape = model
        .filter(|_| sizes_ok)
        .and_then(|m| ModelShape::of(&m.source));
    if let Some(shape) = shape {
        let sizes = run_sizes(
            &shape,
            s,
            t,
            (e.batch_size, e.samples.max(e.final_samples), e.guidance),
            conditional,
            model.is_some_and(ModelSpec::is_text_to_image),
            rewards,
        );
        check_sizes(p, &shape, &sizes, limits::memory_limit());
    }
}

/// What the memory estimate needs of a pipeline: the sampling settings, the training batch and
/// KL weight, the evaluation's batch, largest sample count and guidance, whether it has prompts,
/// the rewards.
fn run_sizes(
    shape: &ModelShape,
    s: &SamplingSettings,
    t: &TrainingSettings,
    (evaluation_batch, final_samples, eval_guidance): (usize, usize, f64),
    conditional: bool,
    text_to_image: bool,
    rewards: &[RewardSpec],
) -> RunSizes {
    RunSizes {
        sampling_batch: s.batch_size,
        batches_per_epoch: s.batches_per_epoch,
        steps: s.steps.max(0) as u64,
        training_batch: t.pass_rows().0,
        training_field: t.pass_rows().1,
        evaluation_batch,
        final_samples,
        guided_sampling: conditional && s.guidance != 1.0,
        guided_evaluation: conditional && eval_guidance != 1.0,
        // A pipeline's KL base is its own weights with the LoRA adapters off.
        base_copy: t.kl_coef > 0.0 && !text_to_image,
        reward_inputs: rewards
            .iter()
            .map(|r| {
                let elements = match &r.kind {
                    RewardKind::Onnx {
                        input:
                            ImageInput {
                                size: Some([w, h]),
                                channels,
                                ..
                            },
                        ..
                    } => *w as u64 * *h as u64 * channels.unwrap_or(3).max(1) as u64,
                    _ => shape.image_elements().max(1) as u64 * 3,
                };
                (r.batch_size, elements)
            })
            .collect(),
    }
}

impl RunPipeline {
    /// hrf's estimate of the memory the run takes, by part (what validation checks against the
    /// machine's RAM); none when the model's config cannot be read.
    pub fn memory_estimate(&self) -> Option<Vec<limits::Part>> {
        let shape = ModelShape::of(&self.model.source)?;
        let e = &self.evaluation;
        let sizes = run_sizes(
            &shape,
            &self.sampling,
            &self.training,
            (e.batch_size, e.samples.max(e.final_samples), e.guidance),
            !self.prompts.is_empty(),
            self.model.is_text_to_image(),
            &self.rewards,
        );
        Some(limits::memory_estimate(&shape, &sizes))
    }
}

/// The batches' largest tensors against `MAX_TENSOR_ELEMENTS`, and the memory estimate against
/// `limit` (bytes, and what it is).
pub(super) fn check_sizes(
    p: &mut Problems<'_>,
    shape: &ModelShape,
    sizes: &RunSizes,
    limit: (u64, String),
) {
    let (largest, what) = shape.largest_tensor();
    let image = shape.image_elements();
    let steps = sizes.steps as u128 + 1;
    let mut tensors_ok = true;
    let batches = [
        (
            "sampling.batch_size",
            sizes.sampling_batch,
            sizes.guided_sampling,
        ),
        (
            sizes.training_field,
            sizes.training_batch,
            sizes.guided_sampling,
        ),
        (
            "evaluation.batch_size",
            sizes.evaluation_batch,
            sizes.guided_evaluation,
        ),
    ];
    for (field, batch, guided) in batches {
        let rows = batch as u128 * if guided { 2 } else { 1 };
        let mut candidates = vec![(rows * largest, what.clone())];
        if field == "sampling.batch_size" {
            candidates.push((
                batch as u128 * steps * image,
                format!("the batch's trajectories ({steps} latents each)"),
            ));
        }
        let (elements, what) = candidates.into_iter().max_by_key(|c| c.0).expect("one");
        if elements > limits::MAX_TENSOR_ELEMENTS {
            let guided = if guided { " (doubled by guidance)" } else { "" };
            p.push(
                field,
                format!(
                    "a batch of {batch}{guided} makes {what} one tensor of {} elements, more than \
                     the {} (2³¹ − 1) that libtorch's 32-bit-indexed kernels take",
                    crate::thousands(elements.min(u64::MAX as u128) as u64),
                    crate::thousands(limits::MAX_TENSOR_ELEMENTS as u64)
                ),
            );
            tensors_ok = false;
        }
    }
    if tensors_ok {
        let parts = limits::memory_estimate(shape, sizes);
        if let Some((field, message)) = limits::memory_problem(&parts, limit.0, &limit.1) {
            p.push(field, message);
        }
    }
}
