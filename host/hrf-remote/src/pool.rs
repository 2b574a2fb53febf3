//! Requests in flight at once: `jobs` requests run by at most `workers` threads, each result in
//! its job's place. Once a request has failed no worker takes another job (the call has
//! failed; the others finish the request they hold), so a dead server costs at most one failed
//! request per worker.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use hrf_core::{CallStats, RewardError, Score};

use crate::client::ServerClient;

/// One job's outcome: its scores or its error; `None`: not sent (after a failure).
pub type JobResult = Option<Result<Vec<f32>, String>>;

/// Each job's outcome, and what the requests cost.
pub fn in_flight<F>(jobs: usize, workers: usize, run: F) -> (Vec<JobResult>, CallStats)
where
    F: Fn(usize, &mut CallStats) -> Result<Vec<f32>, String> + Sync,
{
    let results: Vec<Mutex<JobResult>> = (0..jobs).map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let total = Mutex::new(CallStats::default());
    std::thread::scope(|s| {
        for _ in 0..workers.clamp(1, jobs.max(1)) {
            s.spawn(|| {
                let mut stats = CallStats::default();
                loop {
                    if failed.load(Ordering::SeqCst) {
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= jobs {
                        break;
                    }
                    let r = run(i, &mut stats);
                    let bad = r.is_err();
                    *results[i].lock().expect("results") = Some(r);
                    if bad {
                        failed.store(true, Ordering::SeqCst);
                        break;
                    }
                }
                total.lock().expect("stats").add(&stats);
            });
        }
    });
    let results = results
        .into_iter()
        .map(|r| r.into_inner().expect("results"))
        .collect();
    (results, total.into_inner().expect("stats"))
}

/// The scores of every job in order, or the first error as the failure of the reward that
/// `label` names.
pub fn scores(
    results: Vec<JobResult>,
    label: impl FnOnce() -> String,
) -> Result<Vec<Score>, RewardError> {
    let mut out = Vec::new();
    for r in results {
        match r {
            Some(Ok(v)) => out.extend(v.into_iter().map(Score::new)),
            Some(Err(message)) => {
                return Err(RewardError::Failed {
                    reward: label(),
                    message,
                })
            }
            // Not sent: a failure stopped its worker; that failure is returned.
            None => {}
        }
    }
    Ok(out)
}

/// A reward failure whose message went through the client's [`redact`](ServerClient::redact).
pub fn redacted(e: RewardError, client: &ServerClient) -> RewardError {
    match e {
        RewardError::Failed { reward, message } => RewardError::Failed {
            reward,
            message: client.redact(&message),
        },
        other => other,
    }
}
