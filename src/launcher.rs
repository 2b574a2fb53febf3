//! `hrf`: finds a libtorch for `hrf-engine` and execs it with the same arguments.
//!
//! Order (docs/ARCHITECTURE.md §8): the libtorch the engine was built against (its rpath), a
//! `torch/lib` next to the binaries (its rpath too), then the lib dir of an importable python3
//! torch — the GPU machines, where a carried binary must use that machine's CUDA-enabled libtorch.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const TORCH_VERSION: &str = "2.11.0";

fn python_torch_lib() -> Option<PathBuf> {
    let code = format!(
        "import torch, os\nassert torch.__version__.split('+')[0] == '{TORCH_VERSION}', torch.__version__\nprint(os.path.join(os.path.dirname(torch.__file__), 'lib'))"
    );
    let out = Command::new("python3").args(["-c", &code]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    dir.join("libtorch_cpu.so").exists().then_some(dir)
}

fn main() -> ExitCode {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("hrf"));
    let dir = exe.parent().unwrap_or(Path::new("."));
    let engine = dir.join("hrf-engine");
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();

    let built = option_env!("LIBTORCH").map(|p| Path::new(p).join("lib"));
    let beside = dir.join("torch").join("lib");
    let linked = built
        .iter()
        .chain(std::iter::once(&beside))
        .any(|d| d.join("libtorch_cpu.so").exists());
    let mut cmd = Command::new(&engine);
    cmd.args(&args);
    if !linked {
        match python_torch_lib() {
            Some(lib) => {
                let mut path = OsString::from(lib.as_os_str());
                if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
                    path.push(":");
                    path.push(old);
                }
                cmd.env("LD_LIBRARY_PATH", path);
            }
            None => {
                eprintln!(
                    "hrf: libtorch {TORCH_VERSION} not found: not at its build path ({}), not in {}, and python3 \
                     has no torch {TORCH_VERSION}. Run ./setup.sh, put a torch/ folder (with lib/) beside the hrf \
                     binary, or install torch=={TORCH_VERSION} for python3.",
                    built.as_deref().map_or("none".into(), |p| p.display().to_string()),
                    beside.display()
                );
                return ExitCode::from(1);
            }
        }
    }
    let err = cmd.exec();
    eprintln!("hrf: cannot start {}: {err}", engine.display());
    ExitCode::from(1)
}
