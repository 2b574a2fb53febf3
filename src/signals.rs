//! Ctrl-C (SIGINT) and `timeout`/`kill` (SIGTERM) ask a long command to stop at the next safe
//! point (after the current epoch or step, with a checkpoint written); a second one ends the
//! process at once.

use std::sync::atomic::Ordering;

/// Set once a stop was asked for; the training loops poll it, and so does every wait on a
/// plugin (it lives in hrf-core so that the plugin host sees it too).
pub use hrf_core::interrupt::STOP;

extern "C" fn on_signal(signal: libc::c_int) {
    if STOP.swap(true, Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(128 + signal) };
    }
}

/// Installs the handler for SIGINT and SIGTERM.
pub fn install() {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only touches an atomic and calls _exit.
        unsafe {
            libc::signal(signal, handler as libc::sighandler_t);
        }
    }
}
