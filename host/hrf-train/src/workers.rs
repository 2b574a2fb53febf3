//! CPU workers (`model.workers`): a run's UNet passes dealt out to N one-thread workers that run
//! side by side, instead of one pool of libtorch threads that splits every kernel. A small
//! UNet's kernels are too short to split well (in `perf record` of a two-thread bench run,
//! OpenMP's pool took 12% of the time); two whole passes at once need no barrier.
//!
//! Job j runs on worker j mod N, and each worker runs its jobs in order. Each worker sets
//! libtorch's intra-op threads to 1 for itself (OpenMP keeps that setting per thread), so a
//! job computes exactly what it computes in a one-thread process. Results come back to the
//! calling thread in job order, whatever order the workers finish in: what is built from them
//! (rewards submitted, gradients summed, statistics) is the same as in a serial loop, and a
//! run with N workers gives the numbers of a one-thread run bit for bit.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

/// A job's closure, shared by the workers.
struct SharedJob<'a, R>(&'a (dyn Fn(usize) -> R + 'a));

// SAFETY: see `in_turn`'s contract; the closure is only called, never changed.
unsafe impl<R> Sync for SharedJob<'_, R> {}

/// Runs `job(0)`, …, `job(jobs − 1)` on `workers` one-thread workers (job j on worker
/// j mod `workers`) and hands each result to `sink(j, result)` on the calling thread in job
/// order. When `sink` returns false no further job starts and no further result is handed
/// over; the call returns once every started job has finished. With one worker the jobs run on
/// the calling thread, as a plain loop; with more, even a single job runs on a worker (at one
/// thread, as the rest of the run).
///
/// # Safety
/// `job` runs on several threads at once. Everything it reaches that it did not make itself
/// (a policy's weights, stored trajectories, the scheduler's tables) it may only read: no
/// in-place operation on a shared tensor, no `backward()` that accumulates into a shared
/// leaf's gradient (`Tensor::run_backward` with inputs returns the gradients instead), and any
/// policy it runs must be one whose passes hold no state (`Policy::concurrent`). libtorch's
/// operators read shared inputs from several threads safely; its grad mode and autocast are
/// per thread, and each job sets what it needs.
pub(crate) unsafe fn in_turn<R: Send>(
    workers: usize,
    jobs: usize,
    job: &(dyn Fn(usize) -> R + '_),
    sink: &mut dyn FnMut(usize, R) -> bool,
) {
    if workers <= 1 {
        for j in 0..jobs {
            if !sink(j, job(j)) {
                return;
            }
        }
        return;
    }
    let main_threads = tch::get_num_threads();
    let stop = AtomicBool::new(false);
    let shared = SharedJob(job);
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel::<(usize, R)>();
        for w in 0..workers.min(jobs) {
            let (tx, stop, shared) = (tx.clone(), &stop, &shared);
            scope.spawn(move || {
                tch::set_num_threads(1);
                for j in (w..jobs).step_by(workers) {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    let r = (shared.0)(j);
                    if tx.send((j, r)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut waiting = BTreeMap::new();
        let mut next = 0;
        for (j, r) in rx {
            if stop.load(Ordering::Acquire) {
                continue;
            }
            waiting.insert(j, r);
            while let Some(r) = waiting.remove(&next) {
                next += 1;
                if !sink(next - 1, r) {
                    stop.store(true, Ordering::Release);
                    waiting.clear();
                    break;
                }
            }
        }
    });
    // libtorch also keeps the last setting as the default of threads that start later.
    tch::set_num_threads(main_threads);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Tensor;

    /// Results arrive in job order whatever order the workers finish in, each job on the worker
    /// it was dealt to, at one libtorch thread.
    #[test]
    fn results_come_back_in_job_order_from_one_thread_workers() {
        let job = |j: usize| {
            // Later jobs finish first.
            std::thread::sleep(std::time::Duration::from_millis(5 * (8 - j as u64)));
            (
                j,
                tch::get_num_threads(),
                std::thread::current().id(),
                Tensor::from(j as f32) * 2.0,
            )
        };
        let mut seen = Vec::new();
        // SAFETY: the job touches only what it makes.
        unsafe {
            in_turn(3, 8, &job, &mut |j, r| {
                seen.push((j, r));
                true
            })
        };
        assert_eq!(seen.len(), 8);
        for (i, (j, (jj, threads, _, t))) in seen.iter().enumerate() {
            assert_eq!((i, *jj), (*j, *j));
            assert_eq!(*threads, 1, "job {j} ran at one libtorch thread");
            assert_eq!(t.double_value(&[]), 2.0 * *j as f64);
        }
        for w in 0..3 {
            let ids: Vec<_> = seen.iter().skip(w).step_by(3).map(|(_, r)| r.2).collect();
            assert!(ids.windows(2).all(|p| p[0] == p[1]), "worker {w}'s jobs");
        }
        assert_ne!(
            seen[0].1 .2, seen[1].1 .2,
            "jobs 0 and 1 on different workers"
        );
        assert_ne!(seen[0].1 .2, std::thread::current().id());
    }

    /// A sink that says stop gets nothing more, and no job starts after it said so; with one
    /// worker the jobs run on the calling thread.
    #[test]
    fn a_stopping_sink_gets_nothing_more() {
        let started = std::sync::atomic::AtomicUsize::new(0);
        let job = |j: usize| {
            started.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(20));
            j
        };
        let mut seen = Vec::new();
        // SAFETY: the job touches only an atomic counter.
        unsafe {
            in_turn(2, 40, &job, &mut |j, _| {
                seen.push(j);
                j < 2
            })
        };
        assert_eq!(seen, [0, 1, 2]);
        let n = started.load(Ordering::SeqCst);
        assert!((3..=6).contains(&n), "{n} jobs started");
        let here = std::thread::current().id();
        let job = |j: usize| (j, std::thread::current().id());
        let mut ids = Vec::new();
        // SAFETY: as above.
        unsafe {
            in_turn(1, 3, &job, &mut |_, (_, id)| {
                ids.push(id);
                true
            })
        };
        assert_eq!(ids, [here; 3]);
    }
}
