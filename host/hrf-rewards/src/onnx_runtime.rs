//! Finds and loads the ONNX Runtime shared library (ort with `load-dynamic`): the one set-up
//! unpacked (path baked in at build time), one beside the executable, one named by
//! `ORT_DYLIB_PATH`, or the one inside an importable Python `onnxruntime` package.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub const EXPECTED_VERSION: &str = "1.30.0";

pub struct OnnxRuntime {
    pub path: PathBuf,
    pub version: String,
    /// ort's process-wide environment; every session is built from it.
    pub env: ort::environment::Environment,
}

fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        out.push(PathBuf::from(p));
    }
    if let Some(p) = option_env!("HRF_ORT_DYLIB") {
        out.push(PathBuf::from(p));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        out.push(dir.join(format!("libonnxruntime.so.{EXPECTED_VERSION}")));
        out.push(dir.join("libonnxruntime.so"));
    }
    // The GPU machines have onnxruntime installed for Python.
    let py = std::process::Command::new("python3")
        .args([
            "-c",
            "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))",
        ])
        .stderr(std::process::Stdio::null())
        .output();
    if let Some(o) = py.ok().filter(|o| o.status.success()) {
        let capi = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("capi");
        if let Ok(entries) = std::fs::read_dir(&capi) {
            let mut libs: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("libonnxruntime.so"))
                })
                .collect();
            libs.sort();
            out.extend(libs.into_iter().rev());
        }
    }
    out
}

/// The library's own version string (`OrtGetApiBase()->GetVersionString()`).
fn library_version(path: &Path) -> Result<String, String> {
    // SAFETY: the library is ONNX Runtime (ort has just loaded it from this path); the symbol has
    // the C signature ONNX Runtime documents, and the returned string is static.
    unsafe {
        let lib = libloading::Library::new(path).map_err(|e| e.to_string())?;
        let get: libloading::Symbol<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase> =
            lib.get(b"OrtGetApiBase").map_err(|e| e.to_string())?;
        let base = get();
        if base.is_null() {
            return Err("OrtGetApiBase returned null".into());
        }
        let v = ((*base).GetVersionString)();
        Ok(std::ffi::CStr::from_ptr(v).to_string_lossy().into_owned())
    }
}

/// Loads ONNX Runtime once per process and builds ort's environment.
pub fn init() -> Result<&'static OnnxRuntime, String> {
    static RT: OnceLock<Result<OnnxRuntime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        let tried = candidates();
        let path = tried.iter().find(|p| p.exists()).cloned().ok_or_else(|| {
            let list: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
            format!(
                "onnxruntime library not found (tried: {}); run ./setup.sh or set ORT_DYLIB_PATH",
                list.join(", ")
            )
        })?;
        let builder = ort::init_from(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let env = builder
            .with_name("hrf")
            .build()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let version = library_version(&path)?;
        Ok(OnnxRuntime { path, version, env })
    })
    .as_ref()
    .map_err(Clone::clone)
}

#[cfg(test)]
mod tests {
    #[test]
    fn loads_the_set_up_library() {
        let rt = super::init().expect("./setup.sh unpacks onnxruntime");
        assert_eq!(rt.version, super::EXPECTED_VERSION);
        assert!(rt.path.exists());
    }
}
