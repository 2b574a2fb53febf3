//! hrf-abi: the native reward plugin C ABI (`plugins/native/include/hrf_reward.h`) as Rust types,
//! written once for the host (hrf-plugins) and for plugins written in Rust.
//!
//! A native plugin is a shared library exporting two functions: [`ABI_VERSION_SYMBOL`]
//! (returns [`ABI_VERSION`]; the host checks it before anything else) and [`TABLE_SYMBOL`]
//! (returns a pointer to the plugin's [`PluginTable`], valid while the library is loaded). A Rust
//! plugin defines a `static` table and exports both with [`export_plugin!`]. The field and type
//! names follow the header; `tests/header.rs` compiles the header with `cc` and checks every
//! size, offset and the version against this crate.
//!
//! No dependencies, `no_std`: a plugin pays nothing for using it.

#![no_std]

use core::ffi::{c_char, c_void};

/// The ABI version (`HRF_REWARD_ABI_VERSION`). Bump it with any change to the types below.
pub const ABI_VERSION: u32 = 1;

/// The exported function returning the plugin's ABI version: an [`AbiVersionFn`].
pub const ABI_VERSION_SYMBOL: &str = __abi_version_symbol!();
/// The exported function returning the plugin's table: a [`TableFn`].
pub const TABLE_SYMBOL: &str = __table_symbol!();

// The exported names, written once: the constants above and [`export_plugin!`] take them from
// here (an attribute's value may be a macro call, a constant it may not).
#[doc(hidden)]
#[macro_export]
macro_rules! __abi_version_symbol {
    () => {
        "hrf_reward_abi_version"
    };
}
#[doc(hidden)]
#[macro_export]
macro_rules! __table_symbol {
    () => {
        "hrf_reward_plugin_table"
    };
}

/// `sizeof(hrf_reward_plugin)`, what [`PluginTable::table_size`] must say.
pub const TABLE_SIZE: u32 = core::mem::size_of::<PluginTable>() as u32;
/// `sizeof(hrf_sample)`, what [`PluginTable::sample_size`] must say.
pub const SAMPLE_SIZE: u32 = core::mem::size_of::<Sample>() as u32;

/// One generated sample (`hrf_sample`). `data` holds `width * height * channels` bytes,
/// interleaved row-major; `channels` is 1 (grey) or 3 (RGB). `prompt` is NULL for unconditional
/// samples. Every pointer is valid only during the `score` call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub width: u32,
    pub height: u32,
    pub channels: u32,
    pub data: *const u8,
    /// UTF-8, NUL-terminated, or NULL.
    pub prompt: *const c_char,
    /// A UTF-8 JSON object, NUL-terminated.
    pub metadata_json: *const c_char,
}

/// `create`: a new instance configured from the entry's `config:` as JSON; NULL on failure (then
/// `last_error(NULL)` says why).
pub type CreateFn = unsafe extern "C" fn(config_json: *const c_char) -> *mut c_void;
/// `score`: writes `n` scores to `scores`; 0 on success, non-zero on failure (then
/// `last_error(state)` says why).
pub type ScoreFn = unsafe extern "C" fn(
    state: *mut c_void,
    samples: *const Sample,
    n: usize,
    scores: *mut f32,
) -> i32;
/// `last_error`: the last error of `state` (of `create` when NULL), NUL-terminated, owned by the
/// plugin, valid until its next call.
pub type LastErrorFn = unsafe extern "C" fn(state: *mut c_void) -> *const c_char;
/// `destroy`: frees an instance.
pub type DestroyFn = unsafe extern "C" fn(state: *mut c_void);
/// The exported [`ABI_VERSION_SYMBOL`].
pub type AbiVersionFn = unsafe extern "C" fn() -> u32;
/// The exported [`TABLE_SYMBOL`].
pub type TableFn = unsafe extern "C" fn() -> *const PluginTable;

/// The plugin's table (`hrf_reward_plugin`). The function pointers are nullable in C, so they are
/// `Option`s here (`Option<fn>` has the layout of a C function pointer); the host refuses a
/// table holding NULL for any of them.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PluginTable {
    /// [`ABI_VERSION`].
    pub abi_version: u32,
    /// [`TABLE_SIZE`].
    pub table_size: u32,
    /// [`SAMPLE_SIZE`].
    pub sample_size: u32,
    /// UTF-8, NUL-terminated.
    pub name: *const c_char,
    pub version: *const c_char,
    /// 1: larger scores are better.
    pub higher_is_better: i32,
    /// Preferred batch size, 0: none.
    pub batch_hint: u32,
    pub create: Option<CreateFn>,
    pub score: Option<ScoreFn>,
    pub last_error: Option<LastErrorFn>,
    pub destroy: Option<DestroyFn>,
}

// SAFETY: a table is immutable once made and its pointers name static strings and functions
// (the ABI's promise), so a `static` one may be shared between threads.
unsafe impl Sync for PluginTable {}

/// Exports the two ABI functions ([`ABI_VERSION_SYMBOL`], [`TABLE_SYMBOL`]) from a Rust plugin
/// (a `cdylib`), returning [`ABI_VERSION`] and a pointer to `$table`, a `static` [`PluginTable`]:
///
/// ```ignore
/// static TABLE: hrf_abi::PluginTable = hrf_abi::PluginTable { /* … */ };
/// hrf_abi::export_plugin!(TABLE);
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($table:path) => {
        #[unsafe(export_name = $crate::__abi_version_symbol!())]
        pub extern "C" fn hrf_reward_abi_version() -> u32 {
            $crate::ABI_VERSION
        }

        #[unsafe(export_name = $crate::__table_symbol!())]
        pub extern "C" fn hrf_reward_plugin_table() -> *const $crate::PluginTable {
            &$table
        }
    };
}
