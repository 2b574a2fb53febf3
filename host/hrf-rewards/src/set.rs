//! The rewards of a run combined into one number per sample (a weighted sum, each reward turned
//! so that higher is better), and a worker thread that scores batches while the trainer samples
//! the next ones. Every component's values are kept for logging. A reward whose entry says
//! `on_error: skip` does not stop the run when it fails: the samples it could not score are
//! marked skipped (their total is NaN) and the trainer leaves them out.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread::JoinHandle;

use std::collections::BTreeMap;

use hrf_core::{check_scores, text, CallStats, Reward, RewardError, Sample};

/// Skip reasons kept per batch, and per epoch across its batches; the others are only counted
/// (the last line says how many), so that a failing reward cannot flood the log or the metrics.
pub const MAX_SKIP_REASONS: usize = 16;
/// Bytes kept of one skip reason (it holds a plugin's message, itself cut to
/// [`text::MAX_MESSAGE`], plus the reward's label and where it comes from).
pub const MAX_SKIP_REASON: usize = 2 * text::MAX_MESSAGE;

/// One reward of the set, with its weight.
pub struct Component {
    pub name: String,
    pub weight: f64,
    pub reward: Box<dyn Reward>,
    /// `on_error: skip`: a failed call (error, trap, timeout, wrong count) skips every sample
    /// of the call, a NaN or infinite value skips its sample; otherwise either fails the batch.
    pub skip_failures: bool,
}

/// Scores of a batch: the weighted total and each component's own values (as the reward
/// returned them, before orientation and weighting).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SetScores {
    /// NaN for a skipped sample.
    pub total: Vec<f64>,
    pub components: Vec<(String, Vec<f64>)>,
    /// Per sample: skipped because a reward with `on_error: skip` failed on it.
    pub skipped: Vec<bool>,
    /// What was skipped and why, one line per failure, for the log: each one line (control
    /// characters escaped) of at most [`MAX_SKIP_REASON`] bytes, at most [`MAX_SKIP_REASONS`]
    /// of them plus a last line counting the others.
    pub skip_reasons: Vec<String>,
    /// Skip reasons not kept in `skip_reasons` (past [`MAX_SKIP_REASONS`]).
    pub skip_reasons_dropped: usize,
    /// Per network reward (by name): what its requests cost.
    pub requests: BTreeMap<String, CallStats>,
}

impl SetScores {
    /// Adds a skip reason (cleaned and cut, see `skip_reasons`); past [`MAX_SKIP_REASONS`] it
    /// is only counted.
    pub fn push_skip_reason(&mut self, why: &str) {
        if self.skip_reasons_dropped == 0 && self.skip_reasons.len() < MAX_SKIP_REASONS {
            self.skip_reasons.push(text::clean(why, MAX_SKIP_REASON));
        } else {
            self.count_dropped_reasons(1);
        }
    }

    fn count_dropped_reasons(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        if self.skip_reasons_dropped == 0 {
            self.skip_reasons.push(String::new());
        }
        self.skip_reasons_dropped += n;
        let last = self.skip_reasons.last_mut().expect("pushed");
        *last = format!(
            "… and {} more skip reasons, not shown (at most {MAX_SKIP_REASONS} are kept)",
            self.skip_reasons_dropped
        );
    }

    /// Appends another batch's scores (same components, in order).
    pub fn extend(&mut self, other: SetScores) {
        self.total.extend(other.total);
        self.skipped.extend(other.skipped);
        let kept = other.skip_reasons.len() - (other.skip_reasons_dropped > 0) as usize;
        for why in &other.skip_reasons[..kept] {
            self.push_skip_reason(why);
        }
        self.count_dropped_reasons(other.skip_reasons_dropped);
        for (name, calls) in &other.requests {
            self.requests.entry(name.clone()).or_default().add(calls);
        }
        if self.components.is_empty() {
            self.components = other.components;
        } else {
            for ((_, mine), (_, theirs)) in self.components.iter_mut().zip(other.components) {
                mine.extend(theirs);
            }
        }
    }

    /// The indices of the samples not skipped.
    pub fn kept(&self) -> Vec<usize> {
        (0..self.total.len())
            .filter(|&i| !self.skipped[i])
            .collect()
    }

    /// [`kept`](Self::kept), or an error saying why nothing of `what` (an epoch, an evaluation)
    /// could be used: there is nothing to train on or to average.
    pub fn kept_or_fail(&self, what: &str) -> Result<Vec<usize>, RewardError> {
        let kept = self.kept();
        if kept.is_empty() {
            return Err(RewardError::Failed {
                reward: "rewards".into(),
                message: format!(
                    "every sample of {what} was skipped (on_error: skip): {}",
                    self.skip_reasons.join("; ")
                ),
            });
        }
        Ok(kept)
    }

    /// The entries of `values` (one per sample) of the samples not skipped.
    pub fn kept_values(&self, values: &[f64]) -> Vec<f64> {
        values
            .iter()
            .zip(&self.skipped)
            .filter(|(_, &skipped)| !skipped)
            .map(|(&v, _)| v)
            .collect()
    }
}

pub struct RewardSet {
    components: Vec<Component>,
}

impl RewardSet {
    pub fn new(components: Vec<Component>) -> Self {
        Self { components }
    }

    pub fn names(&self) -> Vec<String> {
        self.components.iter().map(|c| c.name.clone()).collect()
    }

    /// Scores every sample with every component. A reward that fails, returns the wrong count
    /// or a non-finite value fails the whole batch, naming the reward, unless its entry says
    /// `on_error: skip`: then the samples it could not score are skipped (see [`SetScores`]).
    pub fn score(&mut self, samples: &[Sample]) -> Result<SetScores, RewardError> {
        let n = samples.len();
        let mut out = SetScores {
            total: vec![0.0; n],
            components: Vec::with_capacity(self.components.len()),
            skipped: vec![false; n],
            skip_reasons: Vec::new(),
            skip_reasons_dropped: 0,
            requests: BTreeMap::new(),
        };
        for c in &mut self.components {
            let info = c.reward.info();
            let scored = c.reward.score(samples);
            if let Some(calls) = c.reward.take_call_stats() {
                out.requests.entry(c.name.clone()).or_default().add(&calls);
            }
            let checked = match &scored {
                Ok(scores) => check_scores(&info, n, scores),
                Err(_) => Ok(()),
            };
            let values: Vec<f64> = match (scored, checked) {
                (Ok(scores), Ok(())) => scores.iter().map(|s| s.value as f64).collect(),
                (Err(e), _) | (_, Err(e)) if !c.skip_failures => return Err(e),
                (Ok(scores), Err(RewardError::NotFinite { .. })) => {
                    // Scored, but some values are not numbers: skip just those samples.
                    let values: Vec<f64> = scores.iter().map(|s| s.value as f64).collect();
                    let bad: Vec<usize> = (0..n).filter(|&i| !values[i].is_finite()).collect();
                    out.push_skip_reason(&format!(
                        "{}: non-finite value for {} of {n} samples (first: sample {}); skipped them (on_error: skip)",
                        info.label(),
                        bad.len(),
                        bad[0]
                    ));
                    values
                }
                (Err(e), _) | (_, Err(e)) => {
                    out.push_skip_reason(&format!(
                        "{e}; skipped the call's {n} samples (on_error: skip)"
                    ));
                    vec![f64::NAN; n]
                }
            };
            let sign = if info.higher_is_better { 1.0 } else { -1.0 };
            for (i, (t, v)) in out.total.iter_mut().zip(&values).enumerate() {
                if v.is_finite() {
                    *t += c.weight * sign * v;
                } else {
                    out.skipped[i] = true;
                }
            }
            out.components.push((c.name.clone(), values));
        }
        for (t, &s) in out.total.iter_mut().zip(&out.skipped) {
            if s {
                *t = f64::NAN;
            }
        }
        Ok(out)
    }
}

type Job = Vec<Sample>;
type Reply = Result<SetScores, RewardError>;

/// A thread that owns the reward set and scores batches in the order they were submitted.
pub struct RewardWorker {
    jobs: Option<Sender<Job>>,
    /// Each reply comes with the batch it scored, handed back so that nobody keeps a copy.
    replies: Receiver<(Job, Reply)>,
    pending: usize,
    handle: Option<JoinHandle<()>>,
}

impl RewardWorker {
    pub fn spawn(mut set: RewardSet) -> Self {
        let (jobs, job_rx) = channel::<Job>();
        let (reply_tx, replies) = channel::<(Job, Reply)>();
        let handle = std::thread::Builder::new()
            .name("hrf-rewards".into())
            .spawn(move || {
                for batch in job_rx {
                    // A panicking reward must not take the run down without a word.
                    let reply = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        set.score(&batch)
                    }))
                    .unwrap_or_else(|p| {
                        let what = p
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "unknown panic".into());
                        Err(RewardError::Failed {
                            reward: set.names().join("+"),
                            message: format!("panicked: {what}"),
                        })
                    });
                    if reply_tx.send((batch, reply)).is_err() {
                        break;
                    }
                }
            })
            .expect("spawning the reward thread");
        Self {
            jobs: Some(jobs),
            replies,
            pending: 0,
            handle: Some(handle),
        }
    }

    /// Queues a batch; its scores come back from `recv` in submission order.
    pub fn submit(&mut self, batch: Vec<Sample>) {
        self.pending += 1;
        if let Some(jobs) = &self.jobs {
            // A send only fails when the thread is gone; `recv` reports that.
            let _ = jobs.send(batch);
        }
    }

    /// The scores of the oldest batch not yet received.
    pub fn recv(&mut self) -> Reply {
        self.recv_batch().1
    }

    /// The oldest batch not yet received, handed back, with its scores (the batch is empty if
    /// the reward thread stopped).
    pub fn recv_batch(&mut self) -> (Vec<Sample>, Reply) {
        assert!(self.pending > 0, "recv without a submitted batch");
        self.pending -= 1;
        self.replies.recv().unwrap_or_else(|_| {
            (
                Vec::new(),
                Err(RewardError::Failed {
                    reward: "rewards".into(),
                    message: "the reward thread stopped".into(),
                }),
            )
        })
    }

    /// Scores one batch and waits for it (evaluation, dry runs, HRF-D's candidates). Only
    /// between epochs: replies still pending would be someone else's.
    pub fn score_now(&mut self, batch: Vec<Sample>) -> Reply {
        assert_eq!(self.pending, 0, "score_now with batches still pending");
        self.submit(batch);
        self.recv()
    }

    /// `score_now`, handing the batch back with its scores.
    pub fn score_now_batch(&mut self, batch: Vec<Sample>) -> (Vec<Sample>, Reply) {
        assert_eq!(self.pending, 0, "score_now with batches still pending");
        self.submit(batch);
        self.recv_batch()
    }

    /// Receives every outstanding reply, discarding it (after an error, before reuse).
    pub fn drain(&mut self) {
        while self.pending > 0 {
            let _ = self.recv();
        }
    }
}

impl Drop for RewardWorker {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hrf_core::{RewardInfo, Score};

    struct Constant(f32, bool);
    impl Reward for Constant {
        fn info(&self) -> RewardInfo {
            RewardInfo {
                name: format!("c{}", self.0),
                version: "1".into(),
                higher_is_better: self.1,
                batch_hint: None,
            }
        }
        fn score(&mut self, s: &[Sample]) -> Result<Vec<Score>, RewardError> {
            if self.0.is_nan() {
                panic!("boom");
            }
            Ok(s.iter()
                .map(|x| Score::new(self.0 + x.image.data()[0] as f32))
                .collect())
        }
    }

    use crate::test_samples::samples;

    fn component(value: f32, higher: bool, weight: f64) -> Component {
        Component {
            name: format!("c{value}"),
            weight,
            reward: Box::new(Constant(value, higher)),
            skip_failures: false,
        }
    }

    /// Returns NaN for the samples whose pixel is odd, or (`fail`) an error, or one score too few.
    struct Flaky(&'static str);
    impl Reward for Flaky {
        fn info(&self) -> RewardInfo {
            RewardInfo {
                name: "flaky".into(),
                version: "0.3".into(),
                higher_is_better: true,
                batch_hint: None,
            }
        }
        fn score(&mut self, s: &[Sample]) -> Result<Vec<Score>, RewardError> {
            let v = |x: &Sample| x.image.data()[0] as f32;
            match self.0 {
                "nan" => Ok(s
                    .iter()
                    .map(|x| Score::new(if v(x) % 2.0 == 1.0 { f32::NAN } else { v(x) }))
                    .collect()),
                "fail" => Err(RewardError::Failed {
                    reward: "flaky 0.3".into(),
                    message: "trapped".into(),
                }),
                _ => Ok(s.iter().skip(1).map(|x| Score::new(v(x))).collect()),
            }
        }
    }

    fn flaky(mode: &'static str, skip_failures: bool) -> Component {
        Component {
            name: "flaky".into(),
            weight: 1.0,
            reward: Box::new(Flaky(mode)),
            skip_failures,
        }
    }

    #[test]
    fn on_error_fail_stops_the_batch_and_names_the_reward() {
        for mode in ["nan", "fail", "short"] {
            let mut set = RewardSet::new(vec![flaky(mode, false)]);
            let e = set.score(&samples(4)).unwrap_err().to_string();
            assert!(e.contains("flaky"), "{mode}: {e}");
        }
    }

    #[test]
    fn on_error_skip_skips_only_what_could_not_be_scored() {
        // NaN for samples 1 and 3: those two are skipped, the others keep every component.
        let mut set = RewardSet::new(vec![component(10.0, true, 1.0), flaky("nan", true)]);
        let s = set.score(&samples(4)).unwrap();
        assert_eq!(s.skipped, vec![false, true, false, true]);
        assert_eq!(s.kept(), vec![0, 2]);
        assert_eq!(s.kept_or_fail("epoch 1").unwrap(), vec![0, 2]);
        assert_eq!(s.kept_values(&s.total), vec![10.0, 14.0]);
        assert!(s.total[1].is_nan() && s.total[3].is_nan());
        assert_eq!(s.skip_reasons.len(), 1);
        assert!(
            s.skip_reasons[0]
                .contains("flaky@0.3: non-finite value for 2 of 4 samples (first: sample 1)"),
            "{:?}",
            s.skip_reasons
        );
        // A failed call or a wrong count skips the whole call.
        for mode in ["fail", "short"] {
            let mut set = RewardSet::new(vec![component(10.0, true, 1.0), flaky(mode, true)]);
            let s = set.score(&samples(3)).unwrap();
            assert_eq!(s.skipped, vec![true; 3], "{mode}");
            assert!(s.kept().is_empty());
            let e = s.kept_or_fail("epoch 2").unwrap_err().to_string();
            assert!(e.contains("every sample of epoch 2 was skipped"), "{e}");
            assert!(
                s.skip_reasons[0].contains("skipped the call's 3 samples"),
                "{:?}",
                s.skip_reasons
            );
        }
        // Batches accumulate their flags.
        let mut all = SetScores::default();
        let mut set = RewardSet::new(vec![flaky("nan", true)]);
        all.extend(set.score(&samples(2)).unwrap());
        all.extend(set.score(&samples(2)).unwrap());
        assert_eq!(all.skipped, vec![false, true, false, true]);
        assert_eq!(all.skip_reasons.len(), 2);
    }

    /// Fails every call with a long message full of control characters.
    struct Loud;
    impl Reward for Loud {
        fn info(&self) -> RewardInfo {
            RewardInfo {
                name: "loud".into(),
                version: "1".into(),
                higher_is_better: true,
                batch_hint: None,
            }
        }
        fn score(&mut self, _: &[Sample]) -> Result<Vec<Score>, RewardError> {
            Err(RewardError::Failed {
                reward: "loud@1".into(),
                message: format!("\x1b[2J\r\nforged line{}", "x".repeat(1 << 20)),
            })
        }
    }

    #[test]
    fn skip_reasons_are_one_line_each_cut_and_counted_past_the_cap() {
        let loud = || Component {
            name: "loud".into(),
            weight: 1.0,
            reward: Box::new(Loud),
            skip_failures: true,
        };
        let mut set = RewardSet::new(vec![component(1.0, true, 1.0), loud()]);
        let mut all = SetScores::default();
        for _ in 0..40 {
            all.extend(set.score(&samples(2)).unwrap());
        }
        assert_eq!(all.skip_reasons.len(), MAX_SKIP_REASONS + 1);
        assert_eq!(all.skip_reasons_dropped, 40 - MAX_SKIP_REASONS);
        for why in &all.skip_reasons[..MAX_SKIP_REASONS] {
            assert!(
                why.starts_with("reward loud@1: \\x1b[2J\\r\\nforged line"),
                "{why}"
            );
            assert!(why.len() < MAX_SKIP_REASON + 40, "{}", why.len());
            assert!(!why.chars().any(char::is_control));
        }
        assert_eq!(
            all.skip_reasons[MAX_SKIP_REASONS],
            format!(
                "… and {} more skip reasons, not shown (at most {MAX_SKIP_REASONS} are kept)",
                40 - MAX_SKIP_REASONS
            )
        );
        // The count survives merging sets that had dropped reasons themselves.
        let mut twice = SetScores::default();
        twice.extend(all.clone());
        twice.extend(all);
        assert_eq!(twice.skip_reasons_dropped, 80 - MAX_SKIP_REASONS);
        assert_eq!(twice.skip_reasons.len(), MAX_SKIP_REASONS + 1);
    }

    #[test]
    fn weighted_sum_with_orientation() {
        let mut set = RewardSet::new(vec![component(1.0, true, 2.0), component(10.0, false, 0.5)]);
        let s = set.score(&samples(2)).unwrap();
        // sample 0: 2·1 − 0.5·10 = −3; sample 1: 2·2 − 0.5·11 = −1.5
        assert_eq!(s.total, vec![-3.0, -1.5]);
        assert_eq!(s.components[1], ("c10".into(), vec![10.0, 11.0]));
    }

    #[test]
    fn the_worker_answers_in_order_and_survives_a_panic() {
        let mut w = RewardWorker::spawn(RewardSet::new(vec![component(0.0, true, 1.0)]));
        w.submit(samples(1));
        w.submit(samples(3));
        assert_eq!(w.recv().unwrap().total, vec![0.0]);
        assert_eq!(w.recv().unwrap().total, vec![0.0, 1.0, 2.0]);
        // Batches come back with their scores, in submission order (pixel = index in batch).
        let pixels = |b: &[Sample]| b.iter().map(|s| s.image.data()[0]).collect::<Vec<_>>();
        w.submit(samples(3));
        w.submit(samples(1));
        let (back, scores) = w.recv_batch();
        assert_eq!(
            (pixels(&back), scores.unwrap().total.len()),
            (vec![0, 1, 2], 3)
        );
        let (back, _) = w.recv_batch();
        assert_eq!(pixels(&back), vec![0]);
        let (back, scores) = w.score_now_batch(samples(2));
        assert_eq!((back.len(), scores.unwrap().total.len()), (2, 2));
        let mut bad = RewardWorker::spawn(RewardSet::new(vec![component(f32::NAN, true, 1.0)]));
        let e = bad.score_now(samples(1)).unwrap_err();
        assert!(e.to_string().contains("panicked: boom"), "{e}");
        // The thread is still there.
        assert!(bad.score_now(samples(1)).is_err());
    }
}
