//! Where libtorch came from and which device to run on. The binary links libtorch_cpu only; on a
//! machine whose libtorch has CUDA, `libtorch_cuda.so` beside it is loaded before the first CUDA
//! query so its static initialisers register the CUDA backend (docs/ARCHITECTURE.md §8).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tch::Device;

/// What the process found about its libtorch.
#[derive(Debug, Clone)]
pub struct Libtorch {
    /// The directory holding the libtorch_cpu.so this process mapped.
    pub lib_dir: Option<PathBuf>,
    /// Its version (`build-version` or `version.py` beside `lib/`).
    pub version: Option<String>,
    /// Whether libtorch_cuda.so was found and loaded.
    pub cuda_library: Option<PathBuf>,
    /// Why CUDA could not be loaded, when a libtorch_cuda.so exists but failed.
    pub cuda_error: Option<String>,
}

fn mapped_lib_dir(name: &str) -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| {
            Path::new(p)
                .file_name()
                .is_some_and(|f| f.to_string_lossy() == name)
        })
        .and_then(|p| Path::new(p).parent().map(Path::to_path_buf))
}

fn version_near(lib_dir: &Path) -> Option<String> {
    let torch_dir = lib_dir.parent()?;
    if let Ok(v) = std::fs::read_to_string(torch_dir.join("build-version")) {
        return Some(v.trim().to_string());
    }
    let py = std::fs::read_to_string(torch_dir.join("version.py")).ok()?;
    py.lines()
        .find_map(|l| l.strip_prefix("__version__ = "))
        .map(|v| v.trim().trim_matches(['\'', '"']).to_string())
}

fn load_cuda(lib_dir: &Path) -> (Option<PathBuf>, Option<String>) {
    let path = lib_dir.join("libtorch_cuda.so");
    if !path.exists() {
        return (None, None);
    }
    let Ok(cpath) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return (None, Some("path is not a C string".into()));
    };
    // SAFETY: dlopen with a valid C string; the handle is deliberately never closed, because the
    // CUDA backend registered by the library's initialisers must outlive every tensor.
    let handle = unsafe { libc::dlopen(cpath.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns a thread-local C string or null.
        let err = unsafe { libc::dlerror() };
        let msg = if err.is_null() {
            "dlopen failed".to_string()
        } else {
            unsafe { std::ffi::CStr::from_ptr(err) }
                .to_string_lossy()
                .into_owned()
        };
        return (None, Some(msg));
    }
    (Some(path), None)
}

/// Finds libtorch and loads its CUDA backend when present; runs once per process.
pub fn libtorch() -> &'static Libtorch {
    static INFO: OnceLock<Libtorch> = OnceLock::new();
    INFO.get_or_init(|| {
        let lib_dir = mapped_lib_dir("libtorch_cpu.so");
        let version = lib_dir.as_deref().and_then(version_near);
        let (cuda_library, cuda_error) = match lib_dir.as_deref() {
            Some(dir) if std::env::var_os("HRF_NO_CUDA").is_none() => load_cuda(dir),
            _ => (None, None),
        };
        Libtorch {
            lib_dir,
            version,
            cuda_library,
            cuda_error,
        }
    })
}

/// CUDA device 0 when this libtorch has CUDA and a GPU is visible, else the CPU.
/// `HRF_NO_CUDA=1` forces the CPU.
pub fn best_device() -> Device {
    libtorch();
    if std::env::var_os("HRF_NO_CUDA").is_some() {
        Device::Cpu
    } else {
        Device::cuda_if_available()
    }
}

/// Parses `cpu`, `cuda`, `cuda:N` or `auto`.
pub fn parse_device(s: &str) -> Result<Device, String> {
    match s {
        "auto" => Ok(best_device()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => parse_device("cuda:0"),
        _ => {
            let n = s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| format!("device: expected auto, cpu, cuda or cuda:N, got {s:?}"))?;
            libtorch();
            if tch::Cuda::device_count() as usize > n {
                Ok(Device::Cuda(n))
            } else {
                Err(format!(
                    "device: {s} requested but {} CUDA device(s) are visible",
                    tch::Cuda::device_count()
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_the_linked_libtorch() {
        let _ = tch::Tensor::zeros([1], (tch::Kind::Float, tch::Device::Cpu));
        let info = super::libtorch();
        let dir = info.lib_dir.as_ref().expect("libtorch_cpu.so is mapped");
        assert!(dir.join("libtorch_cpu.so").exists());
        assert_eq!(info.version.as_deref().map(|v| &v[..6]), Some("2.11.0"));
    }

    #[test]
    fn device_strings() {
        assert_eq!(super::parse_device("cpu"), Ok(tch::Device::Cpu));
        assert!(super::parse_device("gpu").is_err());
    }
}
