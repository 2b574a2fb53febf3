//! `hrf compare RUN...`: finished runs side by side (hrf_report::comparison), with the base model
//! evaluated exactly as the runs' final evaluation was, as the reference; each method's
//! reward–diversity frontier against a reference group (plain DDPO), and its trust-region
//! telemetry.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use hrf_report::comparison::{self, Comparison, Frontier, RunRecord};
use hrf_report::records::{EvalReport, RESOLVED_FILE};

use crate::usage::UsageError;

const BASE_FILE: &str = "base-eval.json";

#[derive(clap::Args)]
pub struct CompareArgs {
    /// Finished run folders. Runs with the same `run.name` are seeds of one configuration: a
    /// row shows their mean ± std.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Where to write comparison.md, comparison.json, the plots and samples.png.
    #[arg(short, long, default_value = "comparison")]
    pub out: PathBuf,
    /// The group (a `run.name`) the others are measured against, e.g. plain DDPO: its reward at
    /// the middle of its run is the level the frontier verdicts match rewards at, and the
    /// 90/90 check measures the share of its reward gain the others reach. Default: the one
    /// group of plain DDPO runs (ddpo-is, kl_coef 0, no training.start), if there is one.
    #[arg(long)]
    pub reference: Option<String>,
    /// Do not evaluate the base model (no gains or ratios to the base).
    #[arg(long)]
    pub no_base: bool,
    /// Allow the runs' native reward plugins when evaluating the base model.
    #[arg(long)]
    pub allow_native: bool,
    /// auto, cpu, cuda or cuda:N (for evaluating the base model)
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// The base model's final-evaluation report, reused from `out/base-eval.json` when it was made
/// with the same evaluation settings; otherwise evaluated now (and its samples kept for the
/// side-by-side grid).
fn base_reference(
    first: &Path,
    out: &Path,
    device: &str,
    allow_native: bool,
) -> anyhow::Result<EvalReport> {
    let resolved_path = first.join(RESOLVED_FILE);
    let resolved = hrf_config::pipeline::read_resolved(&resolved_path).map_err(UsageError::from)?;
    let key = comparison::evaluation_key(&resolved);
    let cache = out.join(BASE_FILE);
    if let Ok(text) = std::fs::read_to_string(&cache) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            // (a cache written by an older hrf spells its paths as the pipeline did)
            if comparison::in_one_spelling(v["key"].clone()) == key {
                if let Ok(r) = serde_json::from_value(v["report"].clone()) {
                    eprintln!("base model: reusing {}", cache.display());
                    return Ok(r);
                }
            }
        }
    }
    let p =
        hrf_config::pipeline::load_with_overrides(&resolved_path, &[]).map_err(UsageError::from)?;
    let dev = hrf_diffusion::device::parse_device(device)
        .map_err(|e| UsageError(format!("--device: {e}")))?;
    eprintln!(
        "base model: evaluating {} samples as {} was evaluated…",
        p.evaluation.final_samples,
        first.display()
    );
    let (report, images) = super::run::evaluate_base(&p, dev, allow_native)?;
    let grid = out.join("base-final.png");
    hrf_data::grid::save_grid(&images[..images.len().min(64)], 8, 2, &grid)
        .map_err(|e| anyhow::anyhow!(e))?;
    let text = serde_json::to_string_pretty(&serde_json::json!({"key": key, "report": report}))?;
    write_atomic(&cache, &(text + "\n"))?;
    Ok(report)
}

fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| tmp.display().to_string())?;
    std::fs::rename(&tmp, path).with_context(|| path.display().to_string())?;
    Ok(())
}

pub fn run(a: CompareArgs) -> anyhow::Result<ExitCode> {
    let runs: Vec<RunRecord> = a
        .runs
        .iter()
        .map(|d| RunRecord::load(d))
        .collect::<Result<_, _>>()
        .map_err(UsageError)?;
    std::fs::create_dir_all(&a.out).with_context(|| a.out.display().to_string())?;
    let base = if a.no_base {
        None
    } else {
        Some(base_reference(
            &a.runs[0],
            &a.out,
            &a.device,
            a.allow_native,
        )?)
    };
    let c = Comparison::new(runs, base).map_err(UsageError)?;
    let reference = match &a.reference {
        Some(r) => Ok(r.clone()),
        None => comparison::default_reference(&c),
    };
    let frontier =
        Frontier::of(&c, reference.as_deref().map_err(Clone::clone)).map_err(UsageError)?;
    if let Some(why) = &frontier.skipped {
        eprintln!("frontier: verdicts at matched reward skipped: {why}");
    }
    let verdicts = match &reference {
        Ok(r) if c.base.is_some() => Some(c.verdicts(r).map_err(UsageError)?),
        Ok(_) => {
            eprintln!("90/90 check skipped: it needs the base model (drop --no-base)");
            None
        }
        Err(_) => None,
    };
    let mut written = comparison::write_plots(&c, &a.out).map_err(|e| anyhow::anyhow!(e))?;
    for (name, chart) in comparison::frontier_charts(&frontier) {
        let path = a.out.join(name);
        hrf_report::chart::save_chart(&chart, &path).map_err(|e| anyhow::anyhow!(e))?;
        written.push(path);
    }

    // Side by side: the base model's samples, then the first run of each group.
    let base_grid = a.out.join("base-final.png");
    let mut panels: Vec<(String, PathBuf)> = Vec::new();
    if c.base.is_some() && base_grid.exists() {
        panels.push(("base model".into(), base_grid));
    }
    for g in &c.groups {
        if let Some(r) = c.runs.iter().find(|r| r.label == g.label) {
            let grid = r.dir.join("samples").join("final.png");
            if grid.exists() {
                panels.push((format!("{} (seed {})", g.label, r.seed), grid));
            }
        }
    }
    if let Some(path) = save_panels(&panels, &a.out.join("samples.png"))? {
        written.push(path);
    }
    // At matched reward: the base model's evaluation during training (epoch 0), then each
    // method's evaluation closest to R_mid.
    let mut matched: Vec<(String, PathBuf)> = Vec::new();
    for m in &frontier.methods {
        if let Some(g) = m.matched.as_ref().filter(|g| g.grid.exists()) {
            let label = format!(
                "{} (seed {}, epoch {}, reward {:.3})",
                m.label, g.seed, g.epoch, g.reward
            );
            matched.push((label, g.grid.clone()));
        }
    }
    let first = frontier.methods.first().and_then(|m| m.curves.first());
    if let Some(grid) = first.map(|s| s.dir.join("samples").join("eval-0000.png")) {
        if !matched.is_empty() && grid.exists() {
            matched.insert(0, ("base model (epoch 0)".into(), grid));
        }
    }
    let matched_name = "samples-at-matched-reward.png";
    let matched_png = save_panels(&matched, &a.out.join(matched_name))?;
    if let Some(path) = &matched_png {
        written.push(path.clone());
    }

    let md = comparison::markdown_report(
        &c,
        verdicts.as_ref(),
        Some(&frontier),
        matched_png.as_ref().map(|_| matched_name),
    );
    write_atomic(&a.out.join("comparison.md"), &md)?;
    let json = serde_json::json!({
        "comparison": c,
        "verdicts": verdicts,
        "frontier": frontier,
        "trust_region": comparison::trust_region(&c),
    });
    write_atomic(
        &a.out.join("comparison.json"),
        &(serde_json::to_string_pretty(&json)? + "\n"),
    )?;
    print!("{md}");
    eprintln!(
        "wrote {} and {}",
        a.out.join("comparison.md").display(),
        written
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

/// Lays `panels` out side by side into `path` (nothing when there are none); the path written.
fn save_panels(panels: &[(String, PathBuf)], path: &Path) -> anyhow::Result<Option<PathBuf>> {
    if panels.is_empty() {
        return Ok(None);
    }
    let refs: Vec<(String, &Path)> = panels
        .iter()
        .map(|(l, p)| (l.clone(), p.as_path()))
        .collect();
    hrf_report::chart::save_panels(&refs, path).map_err(|e| anyhow::anyhow!(e))?;
    Ok(Some(path.to_path_buf()))
}
