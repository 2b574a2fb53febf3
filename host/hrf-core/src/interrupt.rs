//! The process-wide stop request: set by the `hrf` binary's SIGINT/SIGTERM handler, polled by
//! the training loops and by every wait on a plugin (a WASM call, a `process` reply), so that a
//! plugin blocked in a call cannot keep the run from stopping.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set once a stop was asked for (Ctrl-C, SIGTERM). Only ever set by a signal handler or a test.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// Whether a stop was asked for.
pub fn requested() -> bool {
    STOP.load(Ordering::SeqCst)
}
