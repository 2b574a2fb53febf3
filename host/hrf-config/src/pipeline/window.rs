//! HRF's `training.hrf` section (docs/ALGORITHM.md §3, §4): groups, HRF-D's candidate search,
//! and the window schedule, resolved into explicit start indices and epoch counts.

use super::defaults;
use super::problems::Problems;
use super::raw::HrfRaw;
use crate::limits;
use crate::training::{HrfSettings, Method, Preset, WindowCluster};

/// Checks `training.hrf` and resolves its window schedule into explicit steps and epoch counts.
pub(super) fn validate_hrf(
    p: &mut Problems<'_>,
    h: HrfRaw,
    preset: Option<Preset>,
    method: Method,
    steps: usize,
    epochs: usize,
    samples_per_epoch: usize,
) -> HrfSettings {
    let group_size = h
        .group_size
        .unwrap_or_else(|| defaults::hrf_group_size(preset));
    let stride = h
        .stride
        .unwrap_or_else(|| defaults::hrf_stride(preset, steps));
    p.at_least("training.hrf.group_size", group_size, 2);
    if group_size > 0 && !samples_per_epoch.is_multiple_of(group_size) {
        p.push(
            "training.hrf.group_size",
            format!(
                "the epoch's {samples_per_epoch} samples (sampling.batch_size × batches_per_epoch) \
                 must split into whole groups of {group_size}"
            ),
        );
    }
    let raw = h.window.unwrap_or_else(|| defaults::hrf_window(steps));
    if raw.is_empty() {
        p.push("training.hrf.window", "give at least one cluster");
    }
    let mut clusters = Vec::new();
    for (i, c) in raw.iter().enumerate() {
        let at = format!("training.hrf.window[{i}]");
        let list: Vec<usize> = match (&c.range, &c.steps) {
            (Some([a, b]), None) => {
                if !(a < b && *b <= steps) {
                    p.push(
                        format!("{at}.range"),
                        format!("need a < b ≤ sampling.steps ({steps}), got [{a}, {b})"),
                    );
                }
                (*a..*b).collect()
            }
            (None, Some(list)) => {
                if list.is_empty() {
                    p.push(format!("{at}.steps"), "empty");
                }
                if let Some(bad) = list.iter().find(|&&k| k >= steps) {
                    p.push(
                        format!("{at}.steps"),
                        format!("start indices must be < sampling.steps ({steps}), got {bad}"),
                    );
                }
                let mut l = list.clone();
                l.sort_unstable();
                l.dedup();
                l
            }
            _ => {
                p.push(
                    at.clone(),
                    "give exactly one of `range: [a, b]` or `steps: [...]`",
                );
                Vec::new()
            }
        };
        if !(c.epochs.is_finite() && c.epochs >= 0.0) {
            p.push(
                format!("{at}.epochs"),
                format!("must be ≥ 0, got {}", c.epochs),
            );
        }
        clusters.push(list);
    }
    // Whole numbers summing to the epoch count are counts; otherwise fractions summing to 1.
    let given: Vec<f64> = raw.iter().map(|c| c.epochs).collect();
    let sum: f64 = given.iter().sum();
    let counts: Vec<usize> = if given.iter().all(|e| e.fract() == 0.0) && sum == epochs as f64 {
        given.iter().map(|&e| e as usize).collect()
    } else if (sum - 1.0).abs() <= 1e-6 {
        let mut cum = 0.0;
        let mut prev = 0usize;
        given
            .iter()
            .map(|&e| {
                cum += e;
                let end = ((cum * epochs as f64).round() as usize).min(epochs);
                let n = end - prev;
                prev = end;
                n
            })
            .collect()
    } else {
        if !raw.is_empty() {
            p.push(
                "training.hrf.window",
                format!(
                    "cluster epochs must be fractions summing to 1 or whole numbers summing to \
                     training.epochs ({epochs}); they sum to {sum}"
                ),
            );
        }
        vec![0; raw.len()]
    };
    p.at_least("training.hrf.stride", stride, 1);
    if method == Method::HrfD && stride > 0 && steps.div_ceil(stride) < 3 {
        p.push(
            "training.hrf.stride",
            format!(
                "hrf-d needs at least 3 candidate starts: range(0, {steps}, {stride}) has {}",
                steps.div_ceil(stride)
            ),
        );
    }
    let copies = h.copies.unwrap_or(defaults::hrf_copies(group_size));
    p.at_least("training.hrf.copies", copies, 1);
    p.at_most(
        "training.hrf.copies",
        copies,
        limits::MAX_BATCH,
        "noise copies per anchor",
    );
    p.real("training.hrf.beta", h.beta, |v| v >= 0.0, "≥ 0");
    HrfSettings {
        group_size,
        window: clusters
            .into_iter()
            .zip(counts)
            .map(|(steps, epochs)| WindowCluster { steps, epochs })
            .collect(),
        stride,
        copies,
        beta: h.beta,
        update: h.update.unwrap_or_else(|| defaults::hrf_update(preset)),
        clip_scale: h
            .clip_scale
            .unwrap_or_else(|| defaults::hrf_clip_scale(preset)),
    }
}
