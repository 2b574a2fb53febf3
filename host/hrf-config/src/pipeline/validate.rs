//! Validation of a run pipeline: `RunFile::validate` checks the sections in turn, one function
//! per section (model, sampling, training, prompts, advantages, rewards, evaluation, run, sizes),
//! each pushing what it finds into one shared list (`Problems`) that names every problem's
//! field, and builds the `RunPipeline` when the list stays empty. The rewards are rewards.rs's,
//! HRF's window window.rs's, the sizes and the memory estimate sizes.rs's; the defaults filled
//! in come from defaults.rs.

use std::path::Path;

use serde_json::Value;

use super::defaults;
use super::problems::{valid_name, Base, Problems};
use super::raw::{
    AdvantagesRaw, BestBy, EvaluationRaw, OptimizerRaw, PromptsFile, PromptsRaw, RunFile,
    RunSettingsRaw, TrainingRaw,
};
use super::resolved::{EvaluationSettings, RewardSpec, RunPipeline, RunSettings};
use super::{rewards, sizes, window};
use crate::features::{FeatureExtractor, PIXEL_FEATURES_MAX_SIZE};
use crate::guard::{Floor, GuardAction, GuardSettings};
use crate::limits::{self, canonical};
use crate::model_spec::{ModelSource, ModelSpec, ModelSpecRaw};
use crate::training::{
    AdvantageMode, AdvantageSettings, GroupUpdate, LrSchedule, Method, OptimizerSettings,
    SamplingSettings, StartIndex, TrainingSettings,
};
use crate::ConfigErrors;

impl RunFile {
    /// Checks the pipeline read from `file` (relative paths resolve against its folder) and
    /// fills its defaults. Errors name their field; `load` adds their line:column.
    pub fn validate(self, file: &Path, text: String) -> Result<RunPipeline, ConfigErrors> {
        let mut p = Problems::new(file);
        // Resolved paths are absolute so that the resolved pipeline stands on its own.
        // One spelling per path (`configs/../models/x` is `models/x`), so that runs of one
        // pipeline started from different folders compare alike.
        let abs_file = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
        let base = Base::of(&abs_file);

        let model = model(&mut p, &self.model, file, &abs_file);
        sampling(&mut p, &self.sampling);
        let training = training(&mut p, &self.training, &self.sampling, self.run.seed);
        let conditional = self.prompts.is_some();
        let prompts = prompts(&mut p, self.prompts.as_ref(), &base);
        let advantages = advantages(
            &mut p,
            self.advantages.unwrap_or_default(),
            training.method,
            conditional,
            self.sampling
                .batch_size
                .saturating_mul(self.sampling.batches_per_epoch),
        );
        let rewards = rewards::validate(&mut p, self.rewards, &base, conditional);
        let text_to_image = model.as_ref().is_some_and(ModelSpec::is_text_to_image);
        let evaluation = evaluation(
            &mut p,
            &self.evaluation,
            self.sampling.guidance,
            text_to_image,
            &base,
        );
        let gold = rewards::validate_gold(&mut p, self.evaluation.gold, &base, conditional);
        if let Some(g) = &self.guard {
            guard(&mut p, g, &evaluation, &gold);
        }
        let run = run(&mut p, self.run, &base);
        sizes::check(
            &mut p,
            model.as_ref(),
            &self.sampling,
            &training,
            &evaluation,
            conditional,
            &rewards,
        );
        checkpoints(&mut p, &run);

        match model {
            Some(model) if p.list.is_empty() => Ok(RunPipeline {
                file: file.to_path_buf(),
                text,
                model,
                scheduler: self.scheduler.map(Value::Object),
                sampling: self.sampling,
                training,
                advantages,
                prompts,
                rewards,
                evaluation,
                gold,
                guard: self.guard,
                run,
            }),
            _ => Err(ConfigErrors(p.list)),
        }
    }
}

/// `model:`: the folder (resolved, one spelling) or the named architecture, and the device.
fn model(
    p: &mut Problems<'_>,
    m: &ModelSpecRaw,
    file: &Path,
    abs_file: &Path,
) -> Option<ModelSpec> {
    match m.validate(abs_file) {
        Ok(mut m) => {
            if let ModelSource::Folder(dir) = &m.source {
                m.source = ModelSource::Folder(canonical(dir));
            }
            Some(m)
        }
        Err(e) => {
            for mut err in e.0 {
                err.file = file.to_path_buf();
                p.list.push(err);
            }
            None
        }
    }
}

/// `sampling:`: the chain and the epoch's batches (their caps are sizes.rs's).
fn sampling(p: &mut Problems<'_>, s: &SamplingSettings) {
    if s.steps < 2 {
        p.push("sampling.steps", format!("must be ≥ 2, got {}", s.steps));
    }
    p.at_least("sampling.batch_size", s.batch_size, 1);
    p.at_least("sampling.batches_per_epoch", s.batches_per_epoch, 1);
    p.real(
        "sampling.eta",
        s.eta,
        |v| (0.0..=1.0).contains(&v),
        "in [0, 1]",
    );
    p.real("sampling.guidance", s.guidance, |v| v >= 0.0, "≥ 0");
    p.real("sampling.sigma_min", s.sigma_min, |v| v >= 0.0, "≥ 0");
}

/// `training:`: the update's settings, the method's defaults filled (defaults.rs), HRF's
/// `training.hrf` resolved (window.rs); `seed` is `run.seed`.
fn training(
    p: &mut Problems<'_>,
    t: &TrainingRaw,
    s: &SamplingSettings,
    seed: u64,
) -> TrainingSettings {
    p.at_least("training.epochs", t.epochs, 1);
    p.at_least("training.inner_epochs", t.inner_epochs, 1);
    if let Some(b) = t.batch_size {
        p.at_least("training.batch_size", b, 1);
    }
    p.at_least("training.grad_accum", t.grad_accum, 1);
    if let Some(m) = t.micro_batch {
        p.at_least("training.micro_batch", m, 1);
    }
    let o = &t.optimizer;
    p.real("training.optimizer.lr", o.lr, |v| v > 0.0, "positive");
    let optimizer_schedule = schedule(p, o, t.epochs);
    if let Some(wd) = o.weight_decay {
        p.real("training.optimizer.weight_decay", wd, |v| v >= 0.0, "≥ 0");
    }
    let unit = |v: f64| (0.0..1.0).contains(&v);
    p.real("training.optimizer.beta1", o.beta1, unit, "in [0, 1)");
    p.real("training.optimizer.beta2", o.beta2, unit, "in [0, 1)");
    p.real("training.optimizer.eps", o.eps, |v| v > 0.0, "positive");
    p.real(
        "training.max_grad_norm",
        t.max_grad_norm,
        |v| v > 0.0,
        "positive",
    );
    let hier = t.method.is_hierarchical();
    if t.preset.is_some() && !hier {
        p.push(
            "training.preset",
            "`authors` is HRF as the authors ran it: only methods hrf and hrf-d take it",
        );
    }
    let adv_clip = t.adv_clip.unwrap_or(defaults::adv_clip(t.method));
    p.real("training.adv_clip", adv_clip, |v| v > 0.0, "positive");
    let weight_decay = o.weight_decay.unwrap_or(defaults::weight_decay(t.method));
    let step_reduction = t
        .step_reduction
        .unwrap_or(defaults::step_reduction(t.method));
    let steps = s.steps.max(0) as usize;
    match t.start {
        Some(_) if hier => p.push(
            "training.start",
            "only ddpo-is and ddpo-sf take a start index; hrf and hrf-d use training.hrf.window",
        ),
        Some(StartIndex::Fixed(k)) if k >= steps => p.push(
            "training.start.fixed",
            format!("must be < sampling.steps ({steps}), got {k}"),
        ),
        _ => {}
    }
    let hrf = match (&t.hrf, hier) {
        (Some(_), false) => {
            p.push("training.hrf", "only methods hrf and hrf-d take `hrf`");
            None
        }
        (h, true) => Some(window::validate_hrf(
            p,
            h.clone().unwrap_or_default(),
            t.preset,
            t.method,
            steps,
            t.epochs,
            s.batch_size.saturating_mul(s.batches_per_epoch),
        )),
        (None, false) => None,
    };
    p.real("training.clip_range", t.clip_range, |v| v > 0.0, "positive");
    let timestep_fraction = t
        .timestep_fraction
        .unwrap_or_else(defaults::timestep_fraction);
    p.real(
        "training.timestep_fraction",
        timestep_fraction,
        |v| v > 0.0 && v <= 1.0,
        "in (0, 1]",
    );
    // One group per optimiser step: a train batch is a group.
    let per_group = hrf
        .as_ref()
        .filter(|h| h.update == GroupUpdate::PerGroup)
        .map(|h| h.group_size);
    if let (Some(g), Some(b)) = (per_group, t.batch_size) {
        if b != g {
            p.push(
                "training.batch_size",
                format!(
                    "with training.hrf.update per-group a train batch is one anchor group of \
                     {g}: leave batch_size out or make it {g}, got {b}"
                ),
            );
        }
    }
    let batch_size = t
        .batch_size
        .unwrap_or_else(|| defaults::train_batch_size(per_group));
    p.real("training.kl_coef", t.kl_coef, |v| v >= 0.0, "≥ 0");
    if t.method == Method::DdpoSf && t.inner_epochs != 1 {
        p.push(
            "training.inner_epochs",
            format!(
                "ddpo-sf takes one optimiser step per epoch: inner_epochs must be 1, got {}",
                t.inner_epochs
            ),
        );
    }
    TrainingSettings {
        method: t.method,
        preset: t.preset,
        epochs: t.epochs,
        optimizer: OptimizerSettings {
            lr: o.lr,
            weight_decay,
            beta1: o.beta1,
            beta2: o.beta2,
            eps: o.eps,
            schedule: o.schedule,
            warmup_epochs: o.warmup_epochs,
            warmup_start_factor: o.warmup_start_factor,
            min_lr: optimizer_schedule,
        },
        max_grad_norm: t.max_grad_norm,
        inner_epochs: t.inner_epochs,
        batch_size,
        grad_accum: t.grad_accum,
        micro_batch: t.micro_batch,
        precision: t.precision,
        adv_clip,
        clip_range: t.clip_range,
        timestep_fraction,
        step_reduction,
        kl_coef: t.kl_coef,
        start: t.start,
        hrf,
        seed,
    }
}

/// `training.optimizer`'s learning-rate schedule: checks it and gives the resolved `min_lr`.
fn schedule(p: &mut Problems<'_>, o: &OptimizerRaw, epochs: usize) -> Option<f64> {
    p.real(
        "training.optimizer.warmup_start_factor",
        o.warmup_start_factor,
        |v| v > 0.0 && v <= 1.0,
        "in (0, 1]",
    );
    match o.schedule {
        LrSchedule::Constant => {
            if o.min_lr.is_some() {
                p.push(
                    "training.optimizer.min_lr",
                    "used by `schedule: cosine` only; leave it out or set the schedule",
                );
            }
            if o.warmup_epochs > epochs {
                p.push(
                    "training.optimizer.warmup_epochs",
                    format!(
                        "must be ≤ training.epochs ({epochs}), got {}",
                        o.warmup_epochs
                    ),
                );
            }
            None
        }
        LrSchedule::Cosine => {
            if o.warmup_epochs >= epochs {
                p.push(
                    "training.optimizer.warmup_epochs",
                    format!(
                        "the cosine needs epochs after the warm-up: must be < training.epochs \
                         ({epochs}), got {}",
                        o.warmup_epochs
                    ),
                );
            }
            let min_lr = o.min_lr.unwrap_or(0.0);
            p.real(
                "training.optimizer.min_lr",
                min_lr,
                |v| v >= 0.0 && v <= o.lr,
                "in [0, training.optimizer.lr]",
            );
            Some(min_lr)
        }
    }
}

/// `prompts:`: the list, or the file's lines (blank lines and `#` comments skipped). None:
/// unconditional, an empty list.
fn prompts(p: &mut Problems<'_>, prompts: Option<&PromptsRaw>, base: &Base) -> Vec<String> {
    match prompts {
        None => Vec::new(),
        Some(PromptsRaw::List(list)) => {
            if list.is_empty() {
                p.push("prompts", "empty: give prompts or leave `prompts` out");
            }
            for (i, prompt) in list.iter().enumerate() {
                if prompt.trim().is_empty() {
                    p.push(format!("prompts[{i}]"), "empty prompt");
                }
            }
            list.clone()
        }
        Some(PromptsRaw::File(PromptsFile { file: f })) => {
            let path = base.at(Path::new(f));
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let list: Vec<String> = text
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(str::to_string)
                        .collect();
                    if list.is_empty() {
                        p.push("prompts.file", format!("{} has no prompts", path.display()));
                    }
                    list
                }
                Err(e) => {
                    p.push(
                        "prompts.file",
                        format!("cannot read {}: {e}", path.display()),
                    );
                    Vec::new()
                }
            }
        }
    }
}

/// `advantages:`: the mode (by default the method's and the prompts', defaults.rs) and the
/// per-prompt tracker's sizes.
fn advantages(
    p: &mut Problems<'_>,
    a: AdvantagesRaw,
    method: Method,
    conditional: bool,
    samples_per_epoch: usize,
) -> AdvantageSettings {
    let hier = method.is_hierarchical();
    let mode = a
        .mode
        .unwrap_or(defaults::advantage_mode(method, conditional));
    if mode == AdvantageMode::PerPrompt && hier {
        p.push(
            "advantages.mode",
            "hrf and hrf-d standardise within anchor groups: use `group` (or `epoch`)",
        );
    }
    if mode == AdvantageMode::PerPrompt && !conditional {
        p.push("advantages.mode", "per-prompt advantages need `prompts`");
    }
    match (a.group_size, mode == AdvantageMode::Group, hier) {
        (None, true, false) => p.push(
            "advantages.mode",
            "group advantages with ddpo-is / ddpo-sf need advantages.group_size (samples per \
             group); hrf and hrf-d group by anchor",
        ),
        (Some(_), _, true) => p.push(
            "advantages.group_size",
            "hrf and hrf-d standardise within their anchor groups: set training.hrf.group_size",
        ),
        (Some(_), false, false) => p.push("advantages.group_size", "used by `mode: group` only"),
        (Some(g), true, false) => {
            p.at_least("advantages.group_size", g, 2);
            if g > 0 && !samples_per_epoch.is_multiple_of(g) {
                p.push(
                    "advantages.group_size",
                    format!(
                        "the epoch's {samples_per_epoch} samples (sampling.batch_size × \
                         batches_per_epoch) must split into whole groups of {g}"
                    ),
                );
            }
        }
        _ => {}
    }
    p.at_least("advantages.buffer_size", a.buffer_size, 1);
    p.at_least("advantages.min_count", a.min_count, 1);
    if a.min_count > a.buffer_size {
        p.push(
            "advantages.min_count",
            format!(
                "must be ≤ buffer_size ({}), got {}",
                a.buffer_size, a.min_count
            ),
        );
    }
    AdvantageSettings {
        mode,
        buffer_size: a.buffer_size,
        min_count: a.min_count,
        group_size: a
            .group_size
            .filter(|_| mode == AdvantageMode::Group && !hier),
    }
}

/// `evaluation:`: sample counts, η, guidance (by default `sampling.guidance`), the best-by rule,
/// the diversity features (by default the model's kind's).
fn evaluation(
    p: &mut Problems<'_>,
    e: &EvaluationRaw,
    sampling_guidance: f64,
    text_to_image: bool,
    base: &Base,
) -> EvaluationSettings {
    p.at_least("evaluation.samples", e.samples, 2);
    p.at_least("evaluation.final_samples", e.final_samples, 2);
    p.at_least("evaluation.batch_size", e.batch_size, 1);
    p.real(
        "evaluation.eta",
        e.eta,
        |v| (0.0..=1.0).contains(&v),
        "in [0, 1]",
    );
    let guidance = e
        .guidance
        .unwrap_or(defaults::evaluation_guidance(sampling_guidance));
    if let Some(g) = e.guidance {
        p.real("evaluation.guidance", g, |v| v >= 0.0, "≥ 0");
    }
    if let BestBy::RewardAndDiversity { min_vendi_ratio } = e.best_by {
        p.real(
            "evaluation.best_by.reward-with-diversity.min_vendi_ratio",
            min_vendi_ratio,
            |v| v >= 0.0,
            "≥ 0",
        );
    }
    EvaluationSettings {
        every: e.every,
        seed: e.seed,
        samples: e.samples,
        final_samples: e.final_samples,
        batch_size: e.batch_size,
        eta: e.eta,
        guidance,
        best_by: e.best_by,
        features: features(p, e.features.as_ref(), text_to_image, base),
    }
}

/// `evaluation.features`: the encoder file exists, the pixel size is in range, and the testbed's
/// classifier judges only the pixel models it was trained for.
fn features(
    p: &mut Problems<'_>,
    f: Option<&FeatureExtractor>,
    text_to_image: bool,
    base: &Base,
) -> FeatureExtractor {
    let Some(f) = f else {
        return FeatureExtractor::default_for(text_to_image);
    };
    match f.clone() {
        FeatureExtractor::Classifier if text_to_image => {
            p.push(
                "evaluation.features",
                "the testbed's evaluation classifier judges 1-channel pixel images, not a Stable \
                 Diffusion pipeline's: give {kind: onnx, model: …} (an image encoder) or {kind: pixels}",
            );
            FeatureExtractor::Classifier
        }
        FeatureExtractor::Onnx {
            model,
            output,
            input,
        } => {
            let model = base.at(&model);
            if !model.is_file() {
                p.push(
                    "evaluation.features.model",
                    format!("{} not found", model.display()),
                );
            }
            if let Some(wh) = input.size {
                if wh.iter().any(|&v| v == 0 || v > limits::MAX_IMAGE_SIDE) {
                    p.push(
                        "evaluation.features.input.size",
                        format!(
                            "width and height must be in 1..={}, got [{}, {}]",
                            limits::MAX_IMAGE_SIDE,
                            wh[0],
                            wh[1]
                        ),
                    );
                }
            }
            FeatureExtractor::Onnx {
                model,
                output,
                input,
            }
        }
        FeatureExtractor::Pixels { size } => {
            if !(1..=PIXEL_FEATURES_MAX_SIZE).contains(&size) {
                p.push(
                    "evaluation.features.size",
                    format!("must be in 1..={PIXEL_FEATURES_MAX_SIZE}, got {size}"),
                );
            }
            FeatureExtractor::Pixels { size }
        }
        other => other,
    }
}

/// `guard:`: at least one check; floors, the drop, patience and the rollback's settings in
/// range; what the checks need (evaluations during training, gold rewards) given.
fn guard(
    p: &mut Problems<'_>,
    g: &GuardSettings,
    evaluation: &EvaluationSettings,
    gold: &[RewardSpec],
) {
    if g.vendi_floor.is_none() && g.class_entropy_floor.is_none() && g.gold_drop.is_none() {
        p.push(
            "guard",
            "give at least one check: vendi_floor, class_entropy_floor or gold_drop",
        );
    }
    if g.class_entropy_floor.is_some() && !evaluation.features.has_classes() {
        p.push(
            "guard.class_entropy_floor",
            format!(
                "needs class probabilities, which evaluation.features {} does not give: use guard.vendi_floor",
                evaluation.features.describe()
            ),
        );
    }
    for (field, floor) in [
        ("guard.vendi_floor", g.vendi_floor),
        ("guard.class_entropy_floor", g.class_entropy_floor),
    ] {
        match floor.map(Floor::parts) {
            Some((x, true)) => p.real(field, x, |v| v > 0.0 && v <= 1.0, "a fraction in (0, 1]"),
            Some((x, false)) => p.real(field, x, |v| v > 0.0, "> 0"),
            None => {}
        }
    }
    if let Some(d) = g.gold_drop {
        p.real("guard.gold_drop", d, |v| v > 0.0, "> 0");
        if gold.is_empty() {
            p.push(
                "guard.gold_drop",
                "needs gold rewards to watch: give evaluation.gold",
            );
        }
    }
    if evaluation.every == 0 {
        p.push(
            "guard",
            "checked at the evaluations during training: set evaluation.every > 0",
        );
    }
    p.at_least("guard.patience", g.patience, 1);
    let defaults = GuardSettings::default();
    match g.action {
        GuardAction::Rollback => {
            p.real(
                "guard.lr_factor",
                g.lr_factor,
                |v| v > 0.0 && v <= 1.0,
                "in (0, 1]",
            );
            p.at_least("guard.max_rollbacks", g.max_rollbacks, 1);
        }
        GuardAction::Stop => {
            for (field, differs) in [
                ("guard.lr_factor", g.lr_factor != defaults.lr_factor),
                (
                    "guard.max_rollbacks",
                    g.max_rollbacks != defaults.max_rollbacks,
                ),
            ] {
                if differs {
                    p.push(field, "only `action: rollback` takes it");
                }
            }
        }
    }
}

/// `run:`: the name and the output folder (their lengths against the file system's limits).
/// The checkpoint counts are `checkpoints`', checked after the sizes.
fn run(p: &mut Problems<'_>, r: RunSettingsRaw, base: &Base) -> RunSettings {
    if let Some(problem) = limits::run_name_problem(&r.name) {
        p.push("run.name", problem);
    } else if !valid_name(&r.name) {
        p.push(
            "run.name",
            format!("{:?}: use letters, digits, '.', '_' and '-'", r.name),
        );
    }
    let output = base.at(Path::new(&r.output));
    if let Some(problem) = limits::output_problem(&output, &r.name) {
        p.push("run.output", problem);
    }
    RunSettings {
        name: r.name,
        output,
        seed: r.seed,
        save_every: r.save_every,
        keep: r.keep,
    }
}

/// `run.save_every` and `run.keep`.
fn checkpoints(p: &mut Problems<'_>, r: &RunSettings) {
    p.at_least("run.save_every", r.save_every, 1);
    p.at_least("run.keep", r.keep, 1);
}
