use super::*;
use hrf_config::training::WindowCluster;
use hrf_core::{Reward, RewardInfo, Score};
use hrf_diffusion::{DiffusersModel, SchedulerConfig, UNetConfig};
use hrf_rewards::{Component, RewardSet};

/// Mean brightness of the image: a reward whose gradient direction is easy to see.
struct Brightness;
impl Reward for Brightness {
    fn info(&self) -> RewardInfo {
        RewardInfo {
            name: "brightness".into(),
            version: "test".into(),
            higher_is_better: true,
            batch_hint: None,
        }
    }
    fn score(&mut self, samples: &[Sample]) -> Result<Vec<Score>, RewardError> {
        Ok(samples
            .iter()
            .map(|s| {
                Score::new(
                    s.image.data().iter().map(|&b| b as f32).sum::<f32>()
                        / s.image.data().len() as f32,
                )
            })
            .collect())
    }
}

fn run(method: Method, grad_accum: usize, epochs: u64) -> (Vec<EpochStats>, Tensor) {
    run_with(epochs, |t| {
        t.method = method;
        t.grad_accum = grad_accum;
    })
}

/// Epochs of 8 samples × 5 steps on the testbed UNet, train batches of 3, settings as
/// `adjust` leaves them.
fn run_with(epochs: u64, adjust: impl Fn(&mut TrainingSettings)) -> (Vec<EpochStats>, Tensor) {
    run_on(epochs, 1, adjust)
}

/// `run_with` on `workers` one-thread workers (`model.workers`).
fn run_on(
    epochs: u64,
    workers: usize,
    adjust: impl Fn(&mut TrainingSettings),
) -> (Vec<EpochStats>, Tensor) {
    let model = DiffusersModel::new_seeded(&UNetConfig::testbed(), Device::Cpu, 1).unwrap();
    // The frozen base of the KL term, when `kl_coef` > 0: the same initial weights.
    let base = DiffusersModel::new_seeded(&UNetConfig::testbed(), Device::Cpu, 1).unwrap();
    let mut training = TrainingSettings {
        epochs: epochs as usize,
        batch_size: 3,
        timestep_fraction: 0.5,
        clip_range: 0.2,
        optimizer: hrf_config::training::OptimizerSettings {
            lr: 1e-3,
            ..TrainingSettings::default().optimizer
        },
        ..Default::default()
    };
    adjust(&mut training);
    let mut params: Vec<(String, Tensor)> = model.vs.variables().into_iter().collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    let sched = DdimScheduler::new(SchedulerConfig::default(), 5, 1e-4).unwrap();
    let mut ddpo = Ddpo {
        sampling: SamplingSettings {
            steps: 5,
            batch_size: 4,
            batches_per_epoch: 2,
            ..Default::default()
        },
        advantages: AdvantageSettings::default(),
        scheduler: &sched,
        optimizer: AdamW::new(params, training.optimizer.adamw().into()),
        training,
        policy: &model.unet,
        base: Some(&base.unet),
        tracker: None,
        prompts: vec![],
        device: Device::Cpu,
        lr_scale: 1.0,
        workers,
    };
    let mut worker = RewardWorker::spawn(RewardSet::new(vec![Component {
        name: "brightness".into(),
        weight: 1.0,
        skip_failures: false,
        reward: Box::new(Brightness),
    }]));
    let mut stats = Vec::new();
    for e in 0..epochs {
        stats.push(ddpo.epoch(e, &mut worker, &mut Unobserved).unwrap().stats);
    }
    assert!(
        ddpo.optimizer.updates_flat(),
        "after the first update AdamW runs on its flat buffers"
    );
    let w = model.vs.variables()["conv_out.weight"].detach().copy();
    (stats, w)
}

#[test]
fn an_epoch_takes_the_expected_optimiser_steps_and_is_reproducible() {
    let (stats, w1) = run(Method::DdpoIs, 1, 2);
    // 8 samples in train batches of 3 → 3 batches → 3 optimiser steps per inner epoch.
    assert_eq!(stats[0].optimizer_steps, 3);
    // 5 steps, the last degenerate → 4 trainable; fraction 0.5 → 2 per sample.
    assert_eq!(stats[0].trained_steps_per_sample, 2);
    assert!(stats
        .iter()
        .all(|s| s.loss.is_finite() && s.grad_norm > 0.0 && s.approx_kl.is_finite()));
    // Later train batches of an epoch see the weights after earlier updates: some ratios leave
    // [0.8, 1.2] at this large learning rate, but not all.
    assert!(stats[0].clipfrac < 1.0);
    let (_, w2) = run(Method::DdpoIs, 1, 2);
    assert!(w1.equal(&w2), "same seed, same weights");
    let (accum, _) = run(Method::DdpoIs, 2, 1);
    assert_eq!(
        accum[0].optimizer_steps, 2,
        "3 batches, accumulating 2: steps after batches 2 and 3"
    );
    let (sf, _) = run(Method::DdpoSf, 1, 1);
    assert_eq!(sf[0].optimizer_steps, 1, "DDPO-SF: one step per epoch");
    assert_eq!(sf[0].ratio_clip_mean, None, "DDPO-SF has no ratio clip");
    // DDPO's clips are not scaled: ε and c_A for every sample.
    let s = &stats[0];
    assert_eq!((s.ratio_clip_min, s.ratio_clip_max), (Some(0.2), Some(0.2)));
    assert_eq!(
        (s.adv_clip_min, s.adv_clip_mean, s.adv_clip_max),
        (5.0, 5.0, 5.0)
    );
    assert_eq!(s.lr, 1e-3, "constant schedule");
}

/// An epoch's statistics without its clocks.
fn untimed(s: &EpochStats) -> serde_json::Value {
    let mut v = serde_json::to_value(s).unwrap();
    for clock in ["sample_s", "train_s", "reward_wait_s"] {
        v.as_object_mut().unwrap().remove(clock).expect("a timing");
    }
    v
}

/// `model.workers`: the sampling batches, HRF's anchor batches, HRF-D's candidate batches
/// and each train batch's passes dealt out to one-thread workers give the epochs a one-thread process computes,
/// bit for bit (this thread runs libtorch at one thread), with one slot per pass or
/// micro-batches, the KL term and gradient accumulation, for DDPO, HRF and HRF-D.
#[test]
fn workers_compute_the_one_thread_epochs_bit_for_bit() {
    use hrf_config::training::HrfSettings;
    tch::set_num_threads(1);
    let ddpo = |micro: Option<usize>, kl: f64, accum: usize| {
        move |t: &mut TrainingSettings| {
            t.micro_batch = micro;
            t.kl_coef = kl;
            t.grad_accum = accum;
        }
    };
    let hrf = |method: Method| {
        move |t: &mut TrainingSettings| {
            t.method = method;
            t.micro_batch = Some(5);
            t.hrf = Some(HrfSettings {
                group_size: 2,
                window: vec![WindowCluster {
                    steps: vec![1, 2],
                    epochs: 2,
                }],
                stride: 2,
                copies: 2,
                beta: 0.5,
                update: Default::default(),
                clip_scale: Default::default(),
            });
        }
    };
    type Adjust = Box<dyn Fn(&mut TrainingSettings)>;
    let cases: [(&str, Adjust); 5] = [
        ("ddpo", Box::new(ddpo(None, 0.0, 1))),
        (
            "ddpo micro-batched with kl",
            Box::new(ddpo(Some(2), 0.1, 1)),
        ),
        ("ddpo accumulating", Box::new(ddpo(Some(3), 0.0, 2))),
        ("hrf", Box::new(hrf(Method::Hrf))),
        ("hrf-d", Box::new(hrf(Method::HrfD))),
    ];
    for (name, adjust) in &cases {
        let (serial, w_serial) = run_on(2, 1, adjust);
        let (dealt, w_dealt) = run_on(2, 3, adjust);
        assert!(w_dealt.equal(&w_serial), "{name}: the same weights");
        for (a, b) in dealt.iter().zip(&serial) {
            assert_eq!(untimed(a), untimed(b), "{name}");
        }
        assert!(serial[1].grad_norm > 0.0, "{name}: it trained");
    }
    assert_eq!(
        tch::get_num_threads(),
        1,
        "the thread's own setting is kept"
    );
}

/// `training.precision`: bf16 autocast changes the epoch (its passes compute in bf16) and
/// leaves nothing behind: an fp32 epoch after a bf16 one on the same thread is bit for bit
/// the fp32 epoch before it, and with the KL term (the base model's passes autocast too).
#[test]
fn bf16_autocast_changes_the_epoch_only_when_asked_for() {
    for kl in [0.0, 0.1] {
        let with = |precision: TrainingPrecision| {
            move |t: &mut TrainingSettings| {
                t.precision = precision;
                t.kl_coef = kl;
            }
        };
        let (fp32, w_fp32) = run_with(1, with(TrainingPrecision::Fp32));
        let (bf16, w_bf16) = run_with(1, with(TrainingPrecision::Bf16));
        let (again, w_again) = run_with(1, with(TrainingPrecision::Fp32));
        assert!(w_again.equal(&w_fp32), "kl {kl}: fp32 after bf16 is fp32");
        assert_eq!(untimed(&again[0]), untimed(&fp32[0]), "kl {kl}");
        assert!(!w_bf16.equal(&w_fp32), "kl {kl}: bf16 computes otherwise");
        let (a, b) = (&bf16[0], &fp32[0]);
        assert!(a.loss.is_finite() && a.grad_norm > 0.0, "kl {kl}");
        assert_eq!(a.optimizer_steps, b.optimizer_steps);
        assert_eq!(a.kl_to_base > 0.0, kl > 0.0, "kl {kl}: {}", a.kl_to_base);
        let rel = (a.reward_mean - b.reward_mean).abs() / b.reward_mean.abs();
        assert!(
            rel < 0.05,
            "kl {kl}: reward {} vs {}",
            a.reward_mean,
            b.reward_mean
        );
    }
}

/// HRF with `update: per-group`: one optimiser step per anchor group, each batch one group;
/// telemetry counts a step whose gradient norm exceeds max_grad_norm as clipped, and the
/// clip ranges are scaled by f = (N − k)/N; the cosine schedule's rate is logged per epoch.
#[test]
fn per_group_steps_clipped_gradients_and_the_schedule_are_reported() {
    use hrf_config::training::{ClipScale, GroupUpdate, HrfSettings, LrSchedule};
    let hrf = |max_grad_norm: f64| {
        move |t: &mut TrainingSettings| {
            t.method = Method::Hrf;
            t.timestep_fraction = 1.0;
            t.max_grad_norm = max_grad_norm;
            t.adv_clip = 2.5;
            t.optimizer.schedule = LrSchedule::Cosine;
            t.optimizer.min_lr = Some(1e-4);
            t.hrf = Some(HrfSettings {
                group_size: 4,
                window: vec![WindowCluster {
                    steps: vec![2],
                    epochs: 2,
                }],
                stride: 2,
                copies: 4,
                beta: 0.5,
                update: GroupUpdate::PerGroup,
                clip_scale: ClipScale::Chain,
            });
        }
    };
    let (stats, _) = run_with(2, hrf(1e-12));
    // 8 samples in groups of 4 → 2 groups → 2 optimiser steps, whatever batch_size says.
    assert_eq!(stats[0].optimizer_steps, 2);
    assert_eq!(stats[0].starts, BTreeMap::from([(2, 2)]));
    // From k = 2 of 5 steps, steps 2 and 3 are trained (4 is degenerate).
    assert_eq!(stats[0].trained_steps_per_sample, 2);
    assert_eq!(
        (stats[0].grad_clipped_steps, stats[0].grad_clipped_share),
        (2, 1.0)
    );
    // f = (5 − 2)/5 = 0.6 for every sample.
    let s = &stats[0];
    for (got, want) in [
        (s.ratio_clip_min.unwrap(), 0.2 * 0.6),
        (s.ratio_clip_max.unwrap(), 0.2 * 0.6),
        (s.adv_clip_mean, 2.5 * 0.6),
    ] {
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }
    // Cosine over 2 epochs from 1e-3 to 1e-4: 1e-3, then halfway.
    assert_eq!(stats[0].lr, 1e-3);
    assert!((stats[1].lr - 5.5e-4).abs() < 1e-15, "{}", stats[1].lr);
    let (loose, _) = run_with(1, hrf(1e12));
    assert_eq!(
        (loose[0].grad_clipped_steps, loose[0].grad_clipped_share),
        (0, 0.0)
    );
    assert!(loose[0].grad_norm > 0.0);
}
