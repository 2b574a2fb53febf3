//! Guards (docs/GUARDS.md): at every evaluation, floors on diversity (Vendi, class entropy;
//! a fraction of the base model's or absolute) and the drift of gold rewards are checked, and
//! after `patience` failing evaluations in a row the run stops or rolls back to the newest
//! checkpoint whose evaluation passed. Pure bookkeeping: the run loop (finetune.rs) evaluates,
//! writes and loads checkpoints; this decides.

use std::collections::BTreeMap;

use hrf_config::guard::{GuardAction, GuardSettings};
use hrf_report::records::{EvalReport, GuardCheck, GuardEvent, GuardSummary};
use serde::{Deserialize, Serialize};

/// A gold reward's best evaluation so far and the training reward there.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GoldBest {
    pub value: f64,
    pub reward: f64,
    pub epoch: u64,
}

/// What the guards carry from evaluation to evaluation; part of a checkpoint's state, so a
/// resumed run decides as an uninterrupted one would.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuardState {
    /// Failing evaluations in a row.
    pub failing: usize,
    pub gold_best: BTreeMap<String, GoldBest>,
    /// The epoch of the newest checkpoint whose evaluation passed every guard (rollback).
    pub last_good: Option<u64>,
    pub rollbacks: usize,
    /// The factor on the learning rate (lr_factor to the power of the rollbacks).
    pub lr_scale: f64,
    /// The epoch a guard stopped training at.
    pub stopped_at: Option<u64>,
    /// The evaluations where a guard acted.
    pub fired: Vec<GuardEvent>,
}

impl Default for GuardState {
    fn default() -> Self {
        Self {
            failing: 0,
            gold_best: BTreeMap::new(),
            last_good: None,
            rollbacks: 0,
            lr_scale: 1.0,
            stopped_at: None,
            fired: Vec::new(),
        }
    }
}

/// The training seed after `rollbacks` rollbacks: a rolled-back run draws fresh noise for the
/// epochs it trains again instead of replaying the ones that failed (0: the run's seed).
pub fn branch_seed(seed: u64, rollbacks: usize) -> u64 {
    if rollbacks == 0 {
        return seed;
    }
    crate::rng::KeyedRng::new(&[seed, 0x6a4d, rollbacks as u64]).next_u64()
}

/// The checks of `g` on an evaluation, against the base model's and the gold rewards' bests
/// so far. A diversity floor is checked only where the evaluation measured diversity.
pub fn checks(
    g: &GuardSettings,
    base: &EvalReport,
    report: &EvalReport,
    gold_best: &BTreeMap<String, GoldBest>,
) -> Vec<GuardCheck> {
    let mut out = Vec::new();
    let diversity = |r: &EvalReport, vendi: bool| {
        r.diversity.as_ref().and_then(|d| {
            if vendi {
                Some(d.vendi)
            } else {
                d.class_entropy()
            }
        })
    };
    for (name, floor, vendi) in [
        ("vendi_floor", g.vendi_floor, true),
        ("class_entropy_floor", g.class_entropy_floor, false),
    ] {
        let (Some(floor), Some(value)) = (floor, diversity(report, vendi)) else {
            continue;
        };
        let Some(limit) = (match floor.parts() {
            (_, true) => diversity(base, vendi).map(|b| floor.threshold(b)),
            (x, false) => Some(x),
        }) else {
            continue;
        };
        out.push(GuardCheck {
            guard: name.into(),
            gold: None,
            value,
            limit,
            failed: value < limit,
        });
    }
    if let Some(limit) = g.gold_drop {
        for (name, &value) in &report.gold {
            let Some(best) = gold_best.get(name) else {
                continue;
            };
            let drop = best.value - value;
            out.push(GuardCheck {
                guard: "gold_drop".into(),
                gold: Some(name.clone()),
                value: drop,
                limit,
                failed: drop > limit && report.reward_mean > best.reward,
            });
        }
    }
    out
}

impl GuardState {
    /// The state after the base model's evaluation: the gold rewards' bests start there.
    pub fn after_base(base: &EvalReport) -> Self {
        let mut s = Self::default();
        s.note_gold(base);
        s
    }

    /// Records `report`'s gold values where they are the best so far.
    pub fn note_gold(&mut self, report: &EvalReport) {
        for (name, &value) in &report.gold {
            let better = self.gold_best.get(name).is_none_or(|b| value > b.value);
            if better {
                self.gold_best.insert(
                    name.clone(),
                    GoldBest {
                        value,
                        reward: report.reward_mean,
                        epoch: report.epoch,
                    },
                );
            }
        }
    }

    /// Decides after a training evaluation (`report`, at `epoch`): `ok`, `wait`, `stop` or
    /// `rollback` (to `last_good`; with none to go back to, or `max_rollbacks` used, `stop`).
    /// Updates the failing count, the rollbacks and the lr factor; the caller acts.
    pub fn decide(
        &mut self,
        g: &GuardSettings,
        base: &EvalReport,
        report: &EvalReport,
        epoch: u64,
    ) -> GuardEvent {
        let checks = checks(g, base, report, &self.gold_best);
        self.note_gold(report);
        let failed = checks.iter().any(|c| c.failed);
        self.failing = if failed { self.failing + 1 } else { 0 };
        let mut event = GuardEvent {
            epoch,
            checks,
            failing: self.failing,
            action: "ok".into(),
            to_epoch: None,
            lr_scale: None,
        };
        if !failed {
            return event;
        }
        if self.failing < g.patience {
            event.action = "wait".into();
            return event;
        }
        let back_to = self
            .last_good
            .filter(|_| g.action == GuardAction::Rollback && self.rollbacks < g.max_rollbacks);
        match back_to {
            Some(to) => {
                self.rollbacks += 1;
                self.lr_scale *= g.lr_factor;
                self.failing = 0;
                event.action = "rollback".into();
                event.to_epoch = Some(to);
                event.lr_scale = Some(self.lr_scale);
            }
            None => {
                self.stopped_at = Some(epoch);
                event.action = "stop".into();
            }
        }
        self.fired.push(event.clone());
        event
    }

    /// The final evaluation's checks (for best/; nothing is done).
    pub fn at_final(
        &self,
        g: &GuardSettings,
        base: &EvalReport,
        report: &EvalReport,
    ) -> GuardEvent {
        let checks = checks(g, base, report, &self.gold_best);
        GuardEvent {
            epoch: report.epoch,
            failing: checks.iter().any(|c| c.failed) as usize,
            checks,
            action: "final".into(),
            to_epoch: None,
            lr_scale: None,
        }
    }

    pub fn summary(&self) -> GuardSummary {
        GuardSummary {
            stopped_at: self.stopped_at,
            rollbacks: self.rollbacks,
            fired: self.fired.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hrf_config::guard::{Floor, FloorGiven};
    use hrf_report::diversity::{ClassCoverage, Diversity, FEATURES_CLASSIFIER};

    fn report(
        epoch: u64,
        reward: f64,
        vendi: f64,
        entropy: f64,
        gold: &[(&str, f64)],
    ) -> EvalReport {
        EvalReport {
            epoch,
            samples: 16,
            reward_mean: reward,
            reward_sem: 0.0,
            reward_components: BTreeMap::new(),
            reward_trajectory: vec![],
            diversity: Some(Diversity {
                samples: 16,
                vendi,
                features: FEATURES_CLASSIFIER.into(),
                classes: Some(ClassCoverage {
                    class_entropy: entropy,
                    classes_covered: 10,
                    class_histogram: vec![],
                    is_like: 1.0,
                }),
                fid_like: None,
            }),
            per_prompt_vendi: None,
            class_accuracy: None,
            sample_rewards: vec![],
            gold: gold.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
            eval_s: 0.0,
        }
    }

    #[test]
    fn floors_are_fractions_of_the_base_or_absolute() {
        let base = report(0, -1.0, 10.0, 2.0, &[]);
        let g = GuardSettings {
            vendi_floor: Some(Floor::Fraction(0.8)),
            class_entropy_floor: Some(Floor::Given(FloorGiven::Absolute(1.5))),
            ..GuardSettings::default()
        };
        let c = checks(&g, &base, &report(5, -0.5, 7.9, 1.6, &[]), &BTreeMap::new());
        assert_eq!(c.len(), 2);
        assert_eq!(
            (c[0].guard.as_str(), c[0].limit, c[0].failed),
            ("vendi_floor", 8.0, true)
        );
        assert_eq!(
            (c[1].guard.as_str(), c[1].limit, c[1].failed),
            ("class_entropy_floor", 1.5, false)
        );
        assert_eq!(c[0].describe(), "vendi_floor: 7.9000 < 8.0000");
        // Exactly at the floor passes.
        let c = checks(&g, &base, &report(5, -0.5, 8.0, 1.5, &[]), &BTreeMap::new());
        assert!(c.iter().all(|c| !c.failed));
    }

    #[test]
    fn gold_drop_fires_only_while_the_training_reward_rises() {
        let g = GuardSettings {
            gold_drop: Some(0.1),
            ..GuardSettings::default()
        };
        let base = report(0, -1.0, 10.0, 2.0, &[("gold", 1.0)]);
        let mut s = GuardState::after_base(&base);
        // The gold reward rises to 1.2 at epoch 2 (training reward −0.8): the new best.
        assert_eq!(
            s.decide(&g, &base, &report(2, -0.8, 10.0, 2.0, &[("gold", 1.2)]), 2)
                .action,
            "ok"
        );
        assert_eq!(
            s.gold_best["gold"],
            GoldBest {
                value: 1.2,
                reward: -0.8,
                epoch: 2
            }
        );
        // 0.15 below its best, but the training reward fell too: not reward hacking.
        let e = s.decide(&g, &base, &report(4, -0.9, 10.0, 2.0, &[("gold", 1.05)]), 4);
        assert_eq!((e.action.as_str(), e.checks[0].failed), ("ok", false));
        assert!((e.checks[0].value - 0.15).abs() < 1e-12);
        // 0.1 below: not more than the drop allowed.
        let e = s.decide(&g, &base, &report(6, -0.5, 10.0, 2.0, &[("gold", 1.1)]), 6);
        assert!(!e.failed(), "{e:?}");
        // 0.3 below while the training reward rose from −0.8 to −0.5: fires (stop).
        let e = s.decide(&g, &base, &report(8, -0.5, 10.0, 2.0, &[("gold", 0.9)]), 8);
        assert_eq!(e.action, "stop");
        assert_eq!(e.checks[0].gold.as_deref(), Some("gold"));
        assert_eq!(s.stopped_at, Some(8));
        assert_eq!(s.summary().fired, vec![e]);
    }

    #[test]
    fn patience_then_rollback_with_the_lr_factor_then_stop() {
        let g = GuardSettings {
            vendi_floor: Some(Floor::Fraction(0.9)),
            patience: 2,
            action: GuardAction::Rollback,
            lr_factor: 0.5,
            max_rollbacks: 1,
            ..GuardSettings::default()
        };
        let base = report(0, -1.0, 10.0, 2.0, &[]);
        let mut s = GuardState::after_base(&base);
        s.last_good = Some(0);
        let bad = |e| report(e, -0.5, 8.0, 2.0, &[]);
        assert_eq!(s.decide(&g, &base, &bad(2), 2).action, "wait");
        let e = s.decide(&g, &base, &bad(4), 4);
        assert_eq!(
            (e.action.as_str(), e.to_epoch, e.lr_scale),
            ("rollback", Some(0), Some(0.5))
        );
        assert_eq!((s.rollbacks, s.lr_scale, s.failing), (1, 0.5, 0));
        // A passing evaluation resets the count.
        assert_eq!(
            s.decide(&g, &base, &report(2, -0.6, 9.5, 2.0, &[]), 2)
                .action,
            "ok"
        );
        assert_eq!(s.decide(&g, &base, &bad(4), 4).action, "wait");
        // The rollbacks are used up: the next firing stops.
        assert_eq!(s.decide(&g, &base, &bad(6), 6).action, "stop");
        assert_eq!((s.stopped_at, s.fired.len()), (Some(6), 2));
        // With nothing to go back to, a rollback guard stops.
        let mut s = GuardState::after_base(&base);
        let g = GuardSettings {
            patience: 1,
            max_rollbacks: 3,
            ..g
        };
        assert_eq!(s.decide(&g, &base, &bad(2), 2).action, "stop");
    }

    #[test]
    fn rolled_back_runs_draw_fresh_noise() {
        assert_eq!(branch_seed(7, 0), 7);
        assert_ne!(branch_seed(7, 1), 7);
        assert_ne!(branch_seed(7, 1), branch_seed(7, 2));
        assert_eq!(branch_seed(7, 1), branch_seed(7, 1));
    }
}
