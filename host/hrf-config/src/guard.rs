//! The `guard:` section (docs/GUARDS.md): floors on diversity and the drift of gold rewards,
//! checked at every evaluation, and what a run does when they fail. The file's shape and the
//! resolved settings are one type: every field has a default but the checks themselves.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A floor on a diversity measure: a fraction of the base model's evaluation (a bare number,
/// or `{relative: x}`), or an absolute value (`{absolute: x}`).
#[derive(Debug, Clone, Copy, JsonSchema)]
#[serde(untagged)]
pub enum Floor {
    /// A fraction of the base model's value, in (0, 1].
    Fraction(f64),
    /// `{relative: x}` or `{absolute: x}`.
    Given(FloorGiven),
}

/// A floor written as a map.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum FloorGiven {
    /// A fraction of the base model's value, in (0, 1].
    Relative(f64),
    /// The value itself, > 0.
    Absolute(f64),
}

impl Floor {
    /// The floor's value for a base model's `base`.
    pub fn threshold(self, base: f64) -> f64 {
        match self {
            Floor::Fraction(x) | Floor::Given(FloorGiven::Relative(x)) => x * base,
            Floor::Given(FloorGiven::Absolute(x)) => x,
        }
    }

    /// The number written, and whether it is a fraction of the base model's.
    pub fn parts(self) -> (f64, bool) {
        match self {
            Floor::Fraction(x) | Floor::Given(FloorGiven::Relative(x)) => (x, true),
            Floor::Given(FloorGiven::Absolute(x)) => (x, false),
        }
    }
}

// A bare number is `{relative: x}`.
impl PartialEq for Floor {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

// Written back in the map's form, which says which kind it is.
impl Serialize for Floor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            Floor::Fraction(x) => FloorGiven::Relative(x).serialize(s),
            Floor::Given(g) => g.serialize(s),
        }
    }
}

// By hand rather than `untagged`, whose error says nothing of what was expected.
impl<'de> Deserialize<'de> for Floor {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Floor;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a fraction of the base model's value, {relative: x} or {absolute: x}")
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Floor, E> {
                Ok(Floor::Fraction(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Floor, E> {
                Ok(Floor::Fraction(v as f64))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Floor, E> {
                Ok(Floor::Fraction(v as f64))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Floor, A::Error> {
                Deserialize::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(Floor::Given)
            }
        }
        d.deserialize_any(V)
    }
}

/// What a run does when its guards fail for `patience` evaluations in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum GuardAction {
    /// Stop training; the run still evaluates and writes final/ and best/.
    #[default]
    Stop,
    /// Go back to the newest checkpoint whose evaluation satisfied every guard (lr times
    /// `lr_factor`) and train on from there.
    Rollback,
}

/// `guard:` as written and as resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct GuardSettings {
    /// The least Vendi score an evaluation may have: a fraction of the base model's (a number,
    /// or `{relative: x}`) or `{absolute: x}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vendi_floor: Option<Floor>,
    /// The least class entropy (nats, of the evaluation classifier's histogram), in the same
    /// forms as `vendi_floor`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class_entropy_floor: Option<Floor>,
    /// Fails when a gold reward (`evaluation.gold`) is more than this below its best
    /// evaluation so far while the training reward is above its value at that evaluation.
    /// In the gold reward's units (its score turned so that higher is better, times its
    /// weight); needs `evaluation.gold`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gold_drop: Option<f64>,
    /// Failing evaluations in a row before the action (≥ 1).
    pub patience: usize,
    /// `stop` (default) or `rollback`.
    pub action: GuardAction,
    /// `rollback` only: the learning rate is multiplied by this at every rollback, in (0, 1].
    pub lr_factor: f64,
    /// `rollback` only: rollbacks allowed; the next firing stops the run (≥ 1).
    pub max_rollbacks: usize,
}

impl Default for GuardSettings {
    fn default() -> Self {
        Self {
            vendi_floor: None,
            class_entropy_floor: None,
            gold_drop: None,
            patience: 1,
            action: GuardAction::Stop,
            lr_factor: 1.0,
            max_rollbacks: 3,
        }
    }
}
