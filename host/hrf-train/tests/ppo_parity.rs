//! DDPO-IS's clipped loss and its gradient on two named parameters of a tiny UNet match Python
//! torch + diffusers (fixture from tools/parity/make_ddpo_fixtures.py, ddpo-pytorch's formulas).

use std::collections::HashMap;
use std::path::Path;

use hrf_diffusion::{DdimScheduler, DiffusersModel, SchedulerConfig};
use hrf_train::ppo::{ppo_loss, StepBatch};
use tch::{Device, Tensor};

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    f64::try_from((a - b).abs().max()).unwrap()
}

/// The gradients of the two fixture parameters equal the reference's `{prefix}grad.{name}`
/// within 1e-4 (relative to the largest reference entry, at least 1).
fn assert_gradients_match(model: &DiffusersModel, f: &HashMap<String, Tensor>, prefix: &str) {
    let vars = model.vs.variables();
    for name in ["conv_in.weight", "down_blocks.1.attentions.0.to_q.weight"] {
        let want = &f[&format!("{prefix}grad.{name}")];
        let scale = f64::try_from(want.abs().max()).unwrap();
        assert!(
            scale > 1e-6,
            "{prefix}{name}: the reference gradient is zero"
        );
        let err = max_abs(&vars[name].grad(), want);
        println!("{prefix}{name}: max abs gradient error {err:.2e} (max |grad| {scale:.2e})");
        assert!(err <= 1e-4 * scale.max(1.0), "{prefix}{name}: {err:e}");
    }
}

#[test]
fn clipped_loss_and_gradients_match_torch() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let model = DiffusersModel::load(&dir.join("ppo_unet"), Device::Cpu).unwrap();
    let f: HashMap<String, Tensor> = Tensor::read_safetensors(dir.join("ppo_step.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    let sched = DdimScheduler::new(SchedulerConfig::default(), 10, 1e-4).unwrap();
    let batch = StepBatch {
        sample: &f["sample"],
        prev: &f["prev"],
        step_index: &f["steps"],
        labels: Some(&f["class_labels"]),
        old_log_prob: &f["old_log_prob"],
        advantages: &f["advantages"],
        step_keys: None,
    };
    let out = ppo_loss(&model.unet, &sched, &batch, 1.0, 1.0, 0.05);
    assert!(max_abs(&out.log_prob, &f["log_prob"]) < 1e-4, "log-probs");
    let loss_err = max_abs(&out.loss.reshape([1]), &f["loss"]);
    assert!(loss_err < 1e-5, "loss error {loss_err:e}");
    assert_eq!(
        out.clipfrac(),
        0.5,
        "two of the four ratios leave [0.95, 1.05]"
    );
    out.loss.backward();
    assert_gradients_match(&model, &f, "");
}

/// HRF's window loss on a train batch whose rows start at k = 0, 4, 7 and train different
/// numbers of steps, with both clips scaled by f = N_train(k)/N_train(0): the objective and its
/// gradient match the fixture written from the paper's formulas in Python torch, for the
/// authors' sum over steps and ddpo-pytorch's mean.
#[test]
fn window_loss_and_gradients_match_torch() {
    use hrf_config::training::StepReduction;
    use hrf_train::gradients::{accumulate_window_gradients, WindowBatch};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let f: HashMap<String, Tensor> = Tensor::read_safetensors(dir.join("window_step.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    let sched = DdimScheduler::new(SchedulerConfig::default(), 10, 1e-4).unwrap();
    let starts: Vec<i64> = Vec::try_from(&f["starts"]).unwrap();
    let fractions: Vec<f64> = starts
        .iter()
        .map(|&k| {
            hrf_train::hrf::window_fraction(
                &sched,
                k as usize,
                hrf_config::training::ClipScale::Trainable,
            )
        })
        .collect();
    let want: Vec<f32> = Vec::try_from(&f["f"]).unwrap();
    for (got, want) in fractions.iter().zip(&want) {
        assert!((got - *want as f64).abs() < 1e-6, "f {got} vs {want}");
    }
    let clip = Tensor::from_slice(
        &fractions
            .iter()
            .map(|f| (0.05 * f) as f32)
            .collect::<Vec<_>>(),
    );
    assert!(
        max_abs(&clip, &f["clip"]) < 1e-7,
        "ratio clip ranges scale with f"
    );
    let steps = vec![vec![5, 0, 2, 8], vec![4, 6], vec![8, 7]];
    // One slot per pass, and micro-batches that split slots (2), cross them (5) and take the
    // whole batch (64): the same objective and gradient.
    let cases = [
        (StepReduction::Sum, "sum", None),
        (StepReduction::Mean, "mean", None),
        (StepReduction::Sum, "sum", Some(2)),
        (StepReduction::Mean, "mean", Some(5)),
        (StepReduction::Sum, "sum", Some(64)),
    ];
    let mut logged = Vec::new();
    for (reduction, key, micro_batch) in cases {
        let model = DiffusersModel::load(&dir.join("ppo_unet"), Device::Cpu).unwrap();
        let batch = WindowBatch {
            latents: &f["latents"],
            old_log_probs: &f["old_log_probs"],
            labels: Some(&f["class_labels"]),
            advantages: &f["advantages"],
            clip: &clip,
            steps: &steps,
            reduction,
            per_update: 1.0,
            micro_batch,
            sampled: (0, &[0, 1, 2]),
            workers: None,
        };
        let st = accumulate_window_gradients(&model.unet, None, &sched, &batch, 1.0, 1.0, false);
        assert_eq!(st.slots, 4, "the longest row has 4 steps");
        let passes = match micro_batch {
            None => 4,
            Some(n) => 8usize.div_ceil(n),
        };
        assert_eq!(
            st.passes, passes,
            "8 (row, step) pairs in passes of {micro_batch:?}"
        );
        if key == "sum" {
            logged.push([st.loss_sum, st.clipfrac_sum, st.approx_kl_sum]);
        }
        let want = f[&format!("{key}.objective")].double_value(&[0]);
        assert!(
            (st.objective - want).abs() < 1e-5 * want.abs().max(1.0),
            "{key}: objective {} vs {want}",
            st.objective
        );
        assert_gradients_match(&model, &f, &format!("{key}."));
    }
    // The per-slot statistics do not depend on how the pairs were split (up to the float
    // rounding of the UNet's kernels at other batch sizes: log-probs within ~1e-6, so
    // ½·(log ρ)² of ~1e-3 within 1e-4 relative).
    for other in &logged[1..] {
        for (a, b) in logged[0].iter().zip(other) {
            assert!((a - b).abs() <= 1e-4 * a.abs(), "{logged:?}");
        }
    }
}

/// One optimiser step of the HRF authors' loop (`training.preset: authors`): a train batch is
/// one anchor group whose members all start at k = 4 of a 10-step chain; the whole window is
/// trained (every trainable step); f = (N − k)/N = 0.6 as the authors' code counts it scales
/// the advantage clip (2.5·f) and the ratio clip (ε·f); per-step batch means are summed over
/// the window (`step_reduction: sum`). hrf's objective and gradient equal the authors' loss
/// written in Python torch (tools/parity/make_ddpo_fixtures.py, `authors_group_fixture`).
#[test]
fn one_group_per_step_equals_the_authors_loss() {
    use hrf_config::training::{ClipScale, StepReduction};
    use hrf_train::gradients::{accumulate_window_gradients, WindowBatch};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let f: HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.join("authors_group_step.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let sched = DdimScheduler::new(SchedulerConfig::default(), 10, 1e-4).unwrap();
    let k = f["start"].int64_value(&[0]) as usize;
    let frac = hrf_train::hrf::window_fraction(&sched, k, ClipScale::Chain);
    assert_eq!(frac, f["f"].double_value(&[0]), "f = (N − k)/N");
    let raw: Vec<f32> = Vec::try_from(&f["raw_advantages"]).unwrap();
    let mut adv: Vec<f64> = raw.iter().map(|&a| a as f64).collect();
    hrf_train::hrf::clip_advantages(&mut adv, &[frac; 3], 2.5);
    let adv = Tensor::from_slice(&adv.iter().map(|&a| a as f32).collect::<Vec<_>>());
    assert!(
        max_abs(&adv, &f["advantages"]) < 1e-7,
        "advantages clipped to ±2.5·f"
    );
    let eps = f["clip_range"].double_value(&[0]);
    let clip = Tensor::from_slice(&[(eps * frac) as f32; 3]);
    // The whole window, each member in its own order (the sum does not depend on it).
    let window = sched.trainable_steps(k);
    assert_eq!(window, vec![4, 5, 6, 7, 8]);
    let mut reversed = window.clone();
    reversed.reverse();
    let steps = vec![window.clone(), reversed, window];
    let model = DiffusersModel::load(&dir.join("ppo_unet"), Device::Cpu).unwrap();
    let batch = WindowBatch {
        latents: &f["latents"],
        old_log_probs: &f["old_log_probs"],
        labels: Some(&f["class_labels"]),
        advantages: &adv,
        clip: &clip,
        steps: &steps,
        reduction: StepReduction::Sum,
        per_update: 1.0,
        micro_batch: None,
        sampled: (0, &[0, 1, 2]),
        workers: None,
    };
    let st = accumulate_window_gradients(&model.unet, None, &sched, &batch, 1.0, 1.0, false);
    assert_eq!(st.slots, 5);
    assert!(st.clipfrac_sum > 0.0, "some ratios leave 1 ± ε·f");
    let want = f["objective"].double_value(&[0]);
    assert!(
        (st.objective - want).abs() < 1e-5 * want.abs().max(1.0),
        "objective {} vs the authors' {want}",
        st.objective
    );
    assert_gradients_match(&model, &f, "");
}
