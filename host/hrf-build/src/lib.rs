//! Build-script helpers: where the binaries of a crate that links libtorch look for it at run time.
//! tch's rpath does not reach downstream binaries, so every such crate bakes it in itself.

use std::path::PathBuf;

/// Emits rpath entries for the targets of the calling package: the libtorch it was built
/// against (`LIBTORCH`, set by `.cargo/config.toml`), then a `torch/lib` beside the binary, so a
/// binary carried to another machine finds a libtorch put next to it.
pub fn libtorch_rpath() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Some(libtorch) = std::env::var_os("LIBTORCH") {
        let lib = PathBuf::from(libtorch).join("lib");
        let lib = lib.canonicalize().unwrap_or(lib);
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/torch/lib");
    println!("cargo:rustc-link-arg=-Wl,--disable-new-dtags");
}
