//! Every pipeline the repository ships resolves to its recorded snapshot
//! (tests/resolved/): a refactor of the config crate must not change what a pipeline means.
//! After a deliberate change, rewrite the snapshots with `HRF_BLESS=1 cargo test -p hrf-config
//! --test shipped_configs` and review the diff.

use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

fn shipped_pipelines(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut folders = vec![root.join("configs"), root.join("tests/pipelines")];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).expect("readable folder") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                // configs/templates/ name weights a user brings (tests/validate.rs checks them).
                if !path.ends_with("configs/templates") {
                    folders.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The pipeline as validation sees it, with the repository's absolute path written `<repo>`.
fn resolved(root: &Path, file: &Path) -> String {
    let text = hrf_config::read_text(file).expect("readable pipeline");
    let shown = match hrf_config::pipeline_kind(&text) {
        hrf_config::PipelineKind::Pretrain => {
            let p = hrf_config::pretrain_pipeline::load(file)
                .unwrap_or_else(|e| panic!("{} does not validate: {e}", file.display()));
            format!("{p:#?}\n")
        }
        hrf_config::PipelineKind::Run => hrf_config::pipeline::load(file)
            .unwrap_or_else(|e| panic!("{} does not validate: {e}", file.display()))
            .resolved_yaml(),
    };
    shown.replace(&root.display().to_string(), "<repo>")
}

#[test]
fn every_shipped_pipeline_resolves_as_recorded() {
    let root = repo_root();
    let snapshots = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/resolved");
    let bless = std::env::var_os("HRF_BLESS").is_some();
    let files = shipped_pipelines(&root);
    assert!(files.len() >= 20, "found only {} pipelines", files.len());
    let mut differ = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&root).expect("inside the repository");
        let name = rel.to_string_lossy().replace('/', "__");
        let snapshot = snapshots.join(name);
        let now = resolved(&root, file);
        if bless {
            std::fs::create_dir_all(&snapshots).expect("snapshot folder");
            std::fs::write(&snapshot, &now).expect("write snapshot");
            continue;
        }
        match std::fs::read_to_string(&snapshot) {
            Ok(recorded) if recorded == now => {}
            Ok(_) => differ.push(format!(
                "{} resolves differently from {}",
                rel.display(),
                snapshot.display()
            )),
            Err(e) => differ.push(format!(
                "{}: no snapshot {} ({e})",
                rel.display(),
                snapshot.display()
            )),
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}
