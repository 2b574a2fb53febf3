//! The rewards of a run combined into one number per sample (a weighted sum, each reward turned
//! so that higher is better), and a worker thread that scores batches while the trainer samples
//! the next ones. Every component's values are kept for logging.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread::JoinHandle;

use hrf_core::{check_scores, Reward, RewardError, Sample};

/// One reward of the set, with its weight.
pub struct Component {
    pub name: String,
    pub weight: f64,
    pub reward: Box<dyn Reward>,
}

/// Scores of a batch: the weighted total and each component's own values (as the reward
/// returned them, before orientation and weighting).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SetScores {
    pub total: Vec<f64>,
    pub components: Vec<(String, Vec<f64>)>,
}

impl SetScores {
    /// Appends another batch's scores (same components, in order).
    pub fn extend(&mut self, other: SetScores) {
        self.total.extend(other.total);
        if self.components.is_empty() {
            self.components = other.components;
        } else {
            for ((_, mine), (_, theirs)) in self.components.iter_mut().zip(other.components) {
                mine.extend(theirs);
            }
        }
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
    /// or a non-finite value fails the whole batch, naming the reward.
    pub fn score(&mut self, samples: &[Sample]) -> Result<SetScores, RewardError> {
        let mut out = SetScores {
            total: vec![0.0; samples.len()],
            components: Vec::with_capacity(self.components.len()),
        };
        for c in &mut self.components {
            let info = c.reward.info();
            let scores = c.reward.score(samples)?;
            check_scores(&info, samples.len(), &scores)?;
            let sign = if info.higher_is_better { 1.0 } else { -1.0 };
            let values: Vec<f64> = scores.iter().map(|s| s.value as f64).collect();
            for (t, v) in out.total.iter_mut().zip(&values) {
                *t += c.weight * sign * v;
            }
            out.components.push((c.name.clone(), values));
        }
        Ok(out)
    }
}

type Job = Vec<Sample>;
type Reply = Result<SetScores, RewardError>;

/// A thread that owns the reward set and scores batches in the order they were submitted.
pub struct RewardWorker {
    jobs: Option<Sender<Job>>,
    replies: Receiver<Reply>,
    pending: usize,
    handle: Option<JoinHandle<()>>,
}

impl RewardWorker {
    pub fn spawn(mut set: RewardSet) -> Self {
        let (jobs, job_rx) = channel::<Job>();
        let (reply_tx, replies) = channel::<Reply>();
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
                    if reply_tx.send(reply).is_err() {
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
        assert!(self.pending > 0, "recv without a submitted batch");
        self.pending -= 1;
        self.replies.recv().unwrap_or_else(|_| {
            Err(RewardError::Failed {
                reward: "rewards".into(),
                message: "the reward thread stopped".into(),
            })
        })
    }

    /// Scores one batch and waits for it (evaluation, dry runs, HRF-D's candidates). Only
    /// between epochs: replies still pending would be someone else's.
    pub fn score_now(&mut self, batch: Vec<Sample>) -> Reply {
        assert_eq!(self.pending, 0, "score_now with batches still pending");
        self.submit(batch);
        self.recv()
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
    use hrf_core::{Channels, Image, RewardInfo, Score};

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

    fn samples(n: u8) -> Vec<Sample> {
        (0..n)
            .map(|i| Sample {
                image: Image::new(1, 1, Channels::L8, vec![i]).unwrap(),
                prompt: None,
                metadata: serde_json::Value::Null,
            })
            .collect()
    }

    fn component(value: f32, higher: bool, weight: f64) -> Component {
        Component {
            name: format!("c{value}"),
            weight,
            reward: Box::new(Constant(value, higher)),
        }
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
        let mut bad = RewardWorker::spawn(RewardSet::new(vec![component(f32::NAN, true, 1.0)]));
        let e = bad.score_now(samples(1)).unwrap_err();
        assert!(e.to_string().contains("panicked: boom"), "{e}");
        // The thread is still there.
        assert!(bad.score_now(samples(1)).is_err());
    }
}
