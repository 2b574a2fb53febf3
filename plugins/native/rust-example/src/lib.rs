//! Example native reward plugin in Rust, against the C ABI (plugins/native/include/hrf_reward.h):
//! the mean pixel intensity in [0, 1]. `config: {"panic_on_score": true}` makes `score` panic,
//! which this plugin catches and reports as an error: nothing unwinds into the host. The ABI's
//! types, version and exported names come from hrf-abi (host/hrf-abi), as the host's do.

use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use hrf_abi::{PluginTable, Sample};

struct State {
    panic_on_score: bool,
    error: CString,
}

static CREATE_ERROR: std::sync::Mutex<Option<CString>> = std::sync::Mutex::new(None);

fn message(e: Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| e.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

extern "C" fn create(config: *const c_char) -> *mut c_void {
    let made = catch_unwind(|| {
        // SAFETY: the host passes a NUL-terminated string valid for this call.
        let text = unsafe { CStr::from_ptr(config) }.to_string_lossy();
        let panic_on_score = text.replace(' ', "").contains("\"panic_on_score\":true");
        Box::into_raw(Box::new(State {
            panic_on_score,
            error: CString::default(),
        })) as *mut c_void
    });
    made.unwrap_or_else(|e| {
        *CREATE_ERROR.lock().unwrap() = CString::new(message(e)).ok();
        std::ptr::null_mut()
    })
}

extern "C" fn score(state: *mut c_void, samples: *const Sample, n: usize, out: *mut f32) -> i32 {
    // SAFETY: `state` came from `create`; the host passes n samples and room for n scores.
    let s = unsafe { &mut *(state as *mut State) };
    let result = catch_unwind(AssertUnwindSafe(|| {
        if s.panic_on_score {
            panic!("mean-intensity: asked to panic");
        }
        let samples = unsafe { std::slice::from_raw_parts(samples, n) };
        let out = unsafe { std::slice::from_raw_parts_mut(out, n) };
        for (x, o) in samples.iter().zip(out.iter_mut()) {
            let len = (x.width * x.height * x.channels) as usize;
            let data = unsafe { std::slice::from_raw_parts(x.data, len) };
            *o = data.iter().map(|&b| b as f32).sum::<f32>() / (255.0 * len.max(1) as f32);
        }
    }));
    match result {
        Ok(()) => 0,
        Err(e) => {
            s.error = CString::new(message(e)).unwrap_or_default();
            1
        }
    }
}

extern "C" fn last_error(state: *mut c_void) -> *const c_char {
    if state.is_null() {
        return CREATE_ERROR
            .lock()
            .unwrap()
            .as_ref()
            .map_or(c"unknown".as_ptr(), |e| e.as_ptr());
    }
    // SAFETY: `state` came from `create`.
    unsafe { &*(state as *mut State) }.error.as_ptr()
}

extern "C" fn destroy(state: *mut c_void) {
    if !state.is_null() {
        // SAFETY: `state` came from `create` and is destroyed once.
        drop(unsafe { Box::from_raw(state as *mut State) });
    }
}

static TABLE: PluginTable = PluginTable {
    abi_version: hrf_abi::ABI_VERSION,
    table_size: hrf_abi::TABLE_SIZE,
    sample_size: hrf_abi::SAMPLE_SIZE,
    name: c"mean-intensity".as_ptr(),
    version: c"0.1.0".as_ptr(),
    higher_is_better: 1,
    batch_hint: 0,
    create: Some(create),
    score: Some(score),
    last_error: Some(last_error),
    destroy: Some(destroy),
};

hrf_abi::export_plugin!(TABLE);
