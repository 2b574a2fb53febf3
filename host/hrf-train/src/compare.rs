//! `hrf compare`: finished runs side by side. Runs are grouped by their `run.name` (the seeds of
//! one configuration), and each group's final evaluation is summarised as mean ± standard
//! deviation over its runs, against the base model evaluated the same way: a Markdown table, a
//! JSON file, plots (reward and Vendi against epoch and against UNet evaluations, a
//! reward–diversity scatter with the base marked) and the groups' final samples side by side.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hrf_data::plot::{save_chart, Chart, Marker, RefLine, Series, Style, PALETTE};
use serde::Serialize;
use serde_json::Value;

use crate::run::{EvalReport, METRICS_FILE};

/// The pipeline file a run folder keeps, every default written out.
pub const RESOLVED_FILE: &str = "pipeline.resolved.yaml";

/// What must agree between runs (and with the base reference) for their final numbers to be
/// comparable: the model, the evaluation's seeds, size, chain and guidance, and the rewards.
/// Paths are compared in one spelling (`configs/../models/x` is `models/x`): older run folders
/// kept them as the YAML wrote them.
pub fn evaluation_key(resolved: &Value) -> Value {
    let model = resolved["model"]["weights"]
        .as_str()
        .or(resolved["model"]["config"].as_str());
    in_one_spelling(serde_json::json!({
        "model": model,
        "steps": resolved["sampling"]["steps"],
        "evaluation": {
            "seed": resolved["evaluation"]["seed"],
            "eta": resolved["evaluation"]["eta"],
            "guidance": resolved["evaluation"]["guidance"],
            "final_samples": resolved["evaluation"]["final_samples"],
        },
        "rewards": resolved["rewards"],
        "prompts": resolved["prompts"],
    }))
}

/// An evaluation key with every path in one spelling: the model folder (a named config is no
/// path and stays) and the rewards' files. Keys that older versions cached spell paths as the
/// pipeline did; passed through this they compare equal to today's.
pub fn in_one_spelling(mut key: Value) -> Value {
    let one_spelling = |p: &mut String| {
        *p = hrf_config::limits::canonical(Path::new(p.as_str()))
            .to_string_lossy()
            .into_owned();
    };
    if let Some(Value::String(m)) = key.get_mut("model") {
        if Path::new(m.as_str()).is_absolute() {
            one_spelling(m);
        }
    }
    let rewards = key.get_mut("rewards").and_then(Value::as_array_mut);
    for r in rewards
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
    {
        for field in ["path", "dir"] {
            if let Some(Value::String(p)) = r.get_mut(field) {
                one_spelling(p);
            }
        }
        let stages = r.get_mut("stages").and_then(Value::as_array_mut);
        for stage in stages.into_iter().flatten() {
            if let Some(Value::String(p)) = stage.get_mut("model") {
                one_spelling(p);
            }
        }
        let models = r.get_mut("models").and_then(Value::as_object_mut);
        for p in models.into_iter().flat_map(|m| m.values_mut()) {
            if let Value::String(p) = p {
                one_spelling(p);
            }
        }
    }
    key
}

/// One finished run, read back from its folder.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub dir: PathBuf,
    /// `run.name`: the group it belongs to.
    pub label: String,
    pub method: String,
    pub seed: u64,
    pub epochs: u64,
    /// The final evaluation (the larger fixed-seed set).
    pub last: EvalReport,
    /// The evaluations during training (the smaller set), base included, by epoch.
    pub curve: Vec<EvalReport>,
    /// UNet evaluations used up to the end of each epoch (index e: after e + 1 epochs).
    pub cumulative_unet_evals: Vec<u64>,
    /// Images scored by the rewards while training (evaluations not counted).
    pub reward_evals: u64,
    /// Sampling, reward, training and evaluation time summed over the epochs (a resumed run's
    /// pieces add up).
    pub wall_s: f64,
    #[serde(skip)]
    pub key: Value,
}

fn read_json_lines(path: &Path) -> Result<Vec<Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))
        })
        .collect()
}

impl RunRecord {
    /// UNet evaluations of the whole run.
    pub fn unet_evals(&self) -> u64 {
        self.cumulative_unet_evals.last().copied().unwrap_or(0)
    }

    /// Reads a finished run folder (its resolved pipeline and metrics.jsonl).
    pub fn load(dir: &Path) -> Result<Self, String> {
        let resolved_path = dir.join(RESOLVED_FILE);
        let text = std::fs::read_to_string(&resolved_path).map_err(|e| {
            format!(
                "{}: not a run folder ({}: {e})",
                dir.display(),
                RESOLVED_FILE
            )
        })?;
        // YAML (JSON in older run folders, which YAML reads too).
        let resolved: Value =
            hrf_config::parse_yaml(&resolved_path, &text).map_err(|e| e.to_string())?;
        let lines = read_json_lines(&dir.join(METRICS_FILE))?;
        let report = |l: &Value| -> Result<EvalReport, String> {
            serde_json::from_value(l["report"].clone())
                .map_err(|e| format!("{}: {METRICS_FILE}: evaluation: {e}", dir.display()))
        };
        let mut last = None;
        let mut curve = Vec::new();
        let (mut unet_evals, mut reward_evals, mut wall_s) = (0u64, 0u64, 0f64);
        let mut cumulative_unet_evals = Vec::new();
        for l in &lines {
            match l["kind"].as_str() {
                Some("epoch") => {
                    unet_evals += l["unet_evals"].as_u64().unwrap_or(0);
                    reward_evals += l["reward_calls"].as_u64().unwrap_or(0);
                    cumulative_unet_evals.push(unet_evals);
                    wall_s += ["sample_s", "reward_wait_s", "train_s"]
                        .iter()
                        .filter_map(|k| l[*k].as_f64())
                        .sum::<f64>();
                }
                Some("eval") => {
                    let r = report(l)?;
                    wall_s += r.eval_s;
                    curve.push(r);
                }
                Some("final") => {
                    let r = report(l)?;
                    wall_s += r.eval_s;
                    last = Some(r);
                }
                _ => {}
            }
        }
        let last = last.ok_or_else(|| {
            format!(
                "{}: unfinished (no final evaluation in {METRICS_FILE}); finish it with `hrf run --resume {0}`",
                dir.display()
            )
        })?;
        let str_at = |v: &Value| v.as_str().unwrap_or("?").to_string();
        Ok(RunRecord {
            dir: dir.to_path_buf(),
            label: str_at(&resolved["run"]["name"]),
            method: str_at(&resolved["training"]["method"]),
            seed: resolved["run"]["seed"].as_u64().unwrap_or(0),
            epochs: resolved["training"]["epochs"].as_u64().unwrap_or(0),
            last,
            curve,
            cumulative_unet_evals,
            reward_evals,
            wall_s,
            key: evaluation_key(&resolved),
        })
    }
}

/// Mean and sample standard deviation (0 for one value).
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct MeanStd {
    pub mean: f64,
    pub std: f64,
    pub n: usize,
}

impl MeanStd {
    pub fn of(values: &[f64]) -> Self {
        let n = values.len();
        if n == 0 {
            return MeanStd {
                mean: f64::NAN,
                std: f64::NAN,
                n,
            };
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let std = if n > 1 {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        MeanStd { mean, std, n }
    }

    fn show(&self, digits: usize) -> String {
        if !self.mean.is_finite() {
            "–".into()
        } else if self.n > 1 {
            format!("{:.digits$} ± {:.digits$}", self.mean, self.std)
        } else {
            format!("{:.digits$}", self.mean)
        }
    }
}

/// The final numbers of one run, or of the base model.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Finals {
    pub reward: f64,
    pub vendi: f64,
    pub class_entropy: f64,
    pub classes_covered: f64,
    pub fid_like: f64,
    pub is_like: f64,
}

impl Finals {
    pub fn of(r: &EvalReport) -> Self {
        let d = r.diversity.as_ref();
        let nan = f64::NAN;
        Finals {
            reward: r.reward_mean,
            vendi: d.map_or(nan, |d| d.vendi),
            class_entropy: d.map_or(nan, |d| d.class_entropy),
            classes_covered: d.map_or(nan, |d| d.classes_covered as f64),
            fid_like: d.and_then(|d| d.fid_like).unwrap_or(nan),
            is_like: d.map_or(nan, |d| d.is_like),
        }
    }
}

/// A group of runs (one `run.name`): every final number as mean ± std over its runs.
#[derive(Debug, Clone, Serialize)]
pub struct GroupSummary {
    pub label: String,
    pub method: String,
    pub seeds: Vec<u64>,
    pub epochs: Vec<u64>,
    pub reward: MeanStd,
    /// Reward minus the base model's (per run, then averaged).
    pub gain: Option<MeanStd>,
    pub vendi: MeanStd,
    pub vendi_vs_base: Option<MeanStd>,
    pub class_entropy: MeanStd,
    pub entropy_vs_base: Option<MeanStd>,
    pub classes_covered: MeanStd,
    pub fid_like: MeanStd,
    pub is_like: MeanStd,
    pub unet_evals: MeanStd,
    pub reward_evals: MeanStd,
    pub wall_s: MeanStd,
}

/// Runs side by side, grouped, against an optional base reference.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub base: Option<EvalReport>,
    pub groups: Vec<GroupSummary>,
    pub runs: Vec<RunRecord>,
}

impl Comparison {
    /// Groups `runs` by label in the order first seen. Fails when their evaluations differ in
    /// anything that makes the final numbers incomparable.
    pub fn new(runs: Vec<RunRecord>, base: Option<EvalReport>) -> Result<Self, String> {
        let first = runs.first().ok_or("no runs to compare")?;
        for r in &runs[1..] {
            if r.key != first.key {
                return Err(format!(
                    "{} and {} were not evaluated alike (model, sampling.steps, evaluation seed/eta/guidance/final_samples, rewards or prompts differ): their numbers are not comparable",
                    first.dir.display(),
                    r.dir.display()
                ));
            }
        }
        let mut order: Vec<String> = Vec::new();
        let mut members: BTreeMap<String, Vec<&RunRecord>> = BTreeMap::new();
        for r in &runs {
            if !members.contains_key(&r.label) {
                order.push(r.label.clone());
            }
            members.entry(r.label.clone()).or_default().push(r);
        }
        let base_f = base.as_ref().map(Finals::of);
        let groups = order
            .iter()
            .map(|label| {
                let rs = &members[label];
                let f: Vec<Finals> = rs.iter().map(|r| Finals::of(&r.last)).collect();
                let col = |get: &dyn Fn(&Finals) -> f64| {
                    MeanStd::of(&f.iter().map(get).collect::<Vec<_>>())
                };
                let rel = |get: &dyn Fn(&Finals) -> f64, diff: bool| {
                    base_f.map(|b| {
                        col(&|x: &Finals| {
                            if diff {
                                get(x) - get(&b)
                            } else {
                                get(x) / get(&b)
                            }
                        })
                    })
                };
                let methods: Vec<&str> = rs.iter().map(|r| r.method.as_str()).collect();
                GroupSummary {
                    label: label.clone(),
                    method: if methods.iter().all(|m| *m == methods[0]) {
                        methods[0].to_string()
                    } else {
                        methods.join("/")
                    },
                    seeds: rs.iter().map(|r| r.seed).collect(),
                    epochs: rs.iter().map(|r| r.epochs).collect(),
                    reward: col(&|x| x.reward),
                    gain: rel(&|x| x.reward, true),
                    vendi: col(&|x| x.vendi),
                    vendi_vs_base: rel(&|x| x.vendi, false),
                    class_entropy: col(&|x| x.class_entropy),
                    entropy_vs_base: rel(&|x| x.class_entropy, false),
                    classes_covered: col(&|x| x.classes_covered),
                    fid_like: col(&|x| x.fid_like),
                    is_like: col(&|x| x.is_like),
                    unet_evals: MeanStd::of(
                        &rs.iter().map(|r| r.unet_evals() as f64).collect::<Vec<_>>(),
                    ),
                    reward_evals: MeanStd::of(
                        &rs.iter().map(|r| r.reward_evals as f64).collect::<Vec<_>>(),
                    ),
                    wall_s: MeanStd::of(&rs.iter().map(|r| r.wall_s).collect::<Vec<_>>()),
                }
            })
            .collect();
        Ok(Comparison { base, groups, runs })
    }

    pub fn group(&self, label: &str) -> Option<&GroupSummary> {
        self.groups.iter().find(|g| g.label == label)
    }
}

/// How a group measures up against a reference group (plain DDPO) under the claim HRF makes:
/// at least `gain_share` of the reference's reward gain while keeping Vendi and class entropy at
/// least `keep` of the base model's. The claim is only tested when the reference itself lost
/// diversity (Vendi below `collapse` of the base).
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub label: String,
    /// This group's mean gain ÷ the reference's mean gain.
    pub gain_share: f64,
    pub vendi_vs_base: f64,
    pub entropy_vs_base: f64,
    pub meets_target: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verdicts {
    pub reference: String,
    pub reference_vendi_vs_base: f64,
    /// The reference collapsed diversity, so the claim could be tested.
    pub claim_tested: bool,
    pub groups: Vec<Verdict>,
}

pub const GAIN_SHARE: f64 = 0.9;
pub const KEEP: f64 = 0.9;
pub const COLLAPSE: f64 = 0.8;

impl Comparison {
    /// The verdicts against `reference` (needs the base reference).
    pub fn verdicts(&self, reference: &str) -> Result<Verdicts, String> {
        let r = self.group(reference).ok_or_else(|| {
            format!(
                "--reference {reference}: no such group (groups: {})",
                self.groups
                    .iter()
                    .map(|g| g.label.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        let need = |g: &GroupSummary| -> Result<(f64, f64, f64), String> {
            Ok((
                g.gain.ok_or("no base reference")?.mean,
                g.vendi_vs_base.ok_or("no base reference")?.mean,
                g.entropy_vs_base.ok_or("no base reference")?.mean,
            ))
        };
        let (ref_gain, ref_vendi, _) = need(r)?;
        let mut groups = Vec::new();
        for g in self.groups.iter().filter(|g| g.label != reference) {
            let (gain, vendi, entropy) = need(g)?;
            let gain_share = gain / ref_gain;
            groups.push(Verdict {
                label: g.label.clone(),
                gain_share,
                vendi_vs_base: vendi,
                entropy_vs_base: entropy,
                meets_target: gain_share >= GAIN_SHARE && vendi >= KEEP && entropy >= KEEP,
            });
        }
        Ok(Verdicts {
            reference: reference.to_string(),
            reference_vendi_vs_base: ref_vendi,
            claim_tested: ref_vendi < COLLAPSE,
            groups,
        })
    }
}

fn thousands(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let s = format!("{:.0}", v);
    let (sign, digits) = s.split_at(if s.starts_with('-') { 1 } else { 0 });
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

fn counts(m: &MeanStd) -> String {
    if m.n > 1 && m.std > 0.5 {
        format!("{} ± {}", thousands(m.mean), thousands(m.std))
    } else {
        thousands(m.mean)
    }
}

fn ratio(m: &Option<MeanStd>) -> String {
    m.map_or(String::new(), |m| format!(" ({})", m.show(2)))
}

/// The comparison as Markdown: the table, the base model's row, and the verdicts when a
/// reference group is named.
pub fn markdown(c: &Comparison, verdicts: Option<&Verdicts>) -> String {
    let mut s = String::new();
    let n_final = c.runs.first().map_or(0, |r| r.last.samples);
    s += &format!(
        "Final evaluation: {n_final} fixed-seed samples per run; mean ± std over the runs of each row (n = runs). Ratios in brackets are to the base model.\n\n"
    );
    s += "| run | method | n | epochs | final reward | gain over base | Vendi (÷ base) | class entropy (÷ base) | classes | FID-like | IS-like | UNet evals | reward evals | wall time (s) |\n";
    s += "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    if let Some(b) = &c.base {
        let f = Finals::of(b);
        s += &format!(
            "| base model | – | 1 | 0 | {:.4} | – | {:.2} | {:.3} | {:.0} | {:.2} | {:.2} | – | – | – |\n",
            f.reward, f.vendi, f.class_entropy, f.classes_covered, f.fid_like, f.is_like
        );
    }
    for g in &c.groups {
        let epochs: Vec<u64> = {
            let mut e = g.epochs.clone();
            e.dedup();
            e
        };
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {}{} | {}{} | {} | {} | {} | {} | {} | {} |\n",
            g.label,
            g.method,
            g.reward.n,
            epochs
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("/"),
            g.reward.show(4),
            g.gain.map_or("–".into(), |m| m.show(4)),
            g.vendi.show(2),
            ratio(&g.vendi_vs_base),
            g.class_entropy.show(3),
            ratio(&g.entropy_vs_base),
            g.classes_covered.show(1),
            g.fid_like.show(2),
            g.is_like.show(2),
            counts(&g.unet_evals),
            counts(&g.reward_evals),
            g.wall_s.show(0),
        );
    }
    if let Some(v) = verdicts {
        s += &format!(
            "\nAgainst `{}` (target: ≥ {:.0}% of its reward gain with Vendi and class entropy ≥ {:.0}% of the base model's):\n\n",
            v.reference,
            GAIN_SHARE * 100.0,
            KEEP * 100.0
        );
        if !v.claim_tested {
            s += &format!(
                "- **Claim not tested**: `{}` kept {:.0}% of the base model's Vendi (≥ {:.0}%), so it did not collapse diversity under this budget; nothing here shows that a method keeps diversity where DDPO loses it.\n",
                v.reference,
                v.reference_vendi_vs_base * 100.0,
                COLLAPSE * 100.0
            );
        } else {
            s += &format!(
                "- `{}` collapsed diversity: Vendi {:.0}% of the base model's.\n",
                v.reference,
                v.reference_vendi_vs_base * 100.0
            );
        }
        for g in &v.groups {
            s += &format!(
                "- `{}`: {:.0}% of the gain, Vendi {:.0}%, class entropy {:.0}% of the base → target {}.\n",
                g.label,
                g.gain_share * 100.0,
                g.vendi_vs_base * 100.0,
                g.entropy_vs_base * 100.0,
                if g.meets_target { "met" } else { "missed" }
            );
        }
    }
    s
}

/// One point of a run's curve: the epoch of the evaluation, x, the value, and its standard
/// error when the report has one.
type CurvePoint = (u64, f64, f64, Option<f64>);

/// Mean over a group's runs of the value at each epoch where every run has a point (at the
/// runs' mean x: their UNet evaluations by then differ a little), with dot markers and a band:
/// the standard deviation over the runs when there are several, else the one run's standard
/// errors where it has them at every point. Labelled `label` with what the band is.
fn mean_curve(label: &str, curves: &[Vec<CurvePoint>]) -> Series {
    let mut at: BTreeMap<u64, Vec<(f64, f64, Option<f64>)>> = BTreeMap::new();
    for c in curves {
        for &(epoch, x, y, se) in c {
            at.entry(epoch).or_default().push((x, y, se));
        }
    }
    let mut pts: Vec<(f64, MeanStd, Option<f64>)> = at
        .into_values()
        .filter(|ps| ps.len() == curves.len())
        .map(|ps| {
            let x = ps.iter().map(|p| p.0).sum::<f64>() / ps.len() as f64;
            let values: Vec<f64> = ps.iter().map(|p| p.1).collect();
            (x, MeanStd::of(&values), ps[0].2)
        })
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut s = Series::new("", pts.iter().map(|(x, m, _)| (*x, m.mean)).collect())
        .with_marker(Marker::Dot);
    s.label = if curves.len() > 1 {
        s.band = Some(pts.iter().map(|(_, m, _)| m.std).collect());
        format!("{label} ({} runs, ± std)", curves.len())
    } else {
        s.band = pts.iter().map(|p| p.2).collect();
        match s.band {
            Some(_) => format!("{label} (± s.e.)"),
            None => label.to_string(),
        }
    };
    s
}

type Getter = dyn Fn(&EvalReport) -> Option<f64>;

/// Each run's curve of `get` (with `se`, its standard error) over its evaluations during
/// training, or (`last`) its final evaluation alone; x is the epoch, or the UNet evaluations
/// used by then when `by_evals`.
fn curves_of(
    c: &Comparison,
    label: &str,
    get: &Getter,
    se: &Getter,
    by_evals: bool,
    last: bool,
) -> Vec<Vec<CurvePoint>> {
    c.runs
        .iter()
        .filter(|r| r.label == label)
        .map(|r| {
            let evals = match last {
                true => std::slice::from_ref(&r.last),
                false => &r.curve[..],
            };
            evals
                .iter()
                .filter_map(|e| {
                    let x = if by_evals {
                        match e.epoch {
                            0 => 0.0,
                            k => *r.cumulative_unet_evals.get(k as usize - 1)? as f64,
                        }
                    } else {
                        e.epoch as f64
                    };
                    Some((e.epoch, x, get(e)?, se(e)))
                })
                .collect()
        })
        .collect()
}

/// The y axis of a Vendi plot spans at least this fraction of the base model's score, so that
/// a change of a few per cent is drawn as a few per cent of the plot.
const VENDI_MIN_SPAN: f64 = 0.25;

#[allow(clippy::too_many_arguments)]
fn curve_chart(
    c: &Comparison,
    title: &str,
    x_label: &str,
    y_label: &str,
    get: &Getter,
    se: &Getter,
    by_evals: bool,
    min_span: f64,
) -> Chart {
    // Each group: its evaluations during training joined by a line, and its final evaluation
    // (a larger set: Vendi and entropy grow with the set) as a square apart, in its colour.
    let mut series = Vec::new();
    for (i, g) in c.groups.iter().enumerate() {
        let color = Some(PALETTE[i % PALETTE.len()]);
        let curve = mean_curve(&g.label, &curves_of(c, &g.label, get, se, by_evals, false));
        let last = mean_curve("", &curves_of(c, &g.label, get, se, by_evals, true));
        series.push(Series { color, ..curve });
        series.push(Series {
            color,
            label: String::new(),
            ..last.with_marker(Marker::Square)
        });
    }
    let base = c.base.as_ref().and_then(|b| Some((b.samples, get(b)?)));
    Chart {
        title: title.into(),
        x_label: x_label.into(),
        y_label: y_label.into(),
        series,
        style: Style::Lines,
        ref_lines: base
            .map(|(n, y)| RefLine::new(format!("base model ({n} samples)"), y))
            .into_iter()
            .collect(),
        y_min_span: base.map_or(0.0, |(_, y)| min_span * y.abs()),
        ..Chart::default()
    }
}

/// The comparison's charts, by file name: reward.png, vendi.png (against epoch),
/// reward-by-unet-evals.png, reward-vs-diversity.png (each run's final point, the base marked).
/// The curves end in the final evaluation; the base model is a dashed line.
pub fn charts(c: &Comparison) -> Vec<(&'static str, Chart)> {
    let n_curve = c
        .runs
        .iter()
        .flat_map(|r| r.curve.first())
        .map(|e| e.samples)
        .next()
        .unwrap_or(0);
    let n_final = c.runs.first().map_or(0, |r| r.last.samples);
    let reward: &Getter = &|e| Some(e.reward_mean);
    let reward_se: &Getter = &|e| Some(e.reward_sem).filter(|s| s.is_finite());
    let vendi: &Getter = &|e| e.diversity.as_ref().map(|d| d.vendi);
    let none: &Getter = &|_| None;
    let during = format!("{n_curve} samples per evaluation; squares: final, {n_final}");
    let mut charts = vec![
        (
            "reward.png",
            curve_chart(
                c,
                &format!("Reward ({during})"),
                "epoch",
                "mean reward",
                reward,
                reward_se,
                false,
                0.0,
            ),
        ),
        (
            "reward-by-unet-evals.png",
            curve_chart(
                c,
                &format!("Reward against UNet evaluations ({during})"),
                "UNet evaluations",
                "mean reward",
                reward,
                reward_se,
                true,
                0.0,
            ),
        ),
    ];
    if c.runs.iter().any(|r| r.last.diversity.is_some()) {
        charts.push((
            "vendi.png",
            curve_chart(
                c,
                &format!("Vendi score ({during})"),
                "epoch",
                "Vendi",
                vendi,
                none,
                false,
                VENDI_MIN_SPAN,
            ),
        ));
        let series = c
            .groups
            .iter()
            .map(|g| {
                let runs: Vec<&RunRecord> = c.runs.iter().filter(|r| r.label == g.label).collect();
                Series::new(
                    g.label.clone(),
                    runs.iter()
                        .map(|r| Finals::of(&r.last))
                        .map(|f| (f.vendi, f.reward))
                        .collect(),
                )
                .with_band(runs.iter().map(|r| r.last.reward_sem).collect())
            })
            .collect();
        let markers = c
            .base
            .as_ref()
            .map(Finals::of)
            .map(|b| vec![(b.vendi, b.reward, "base model".to_string())])
            .unwrap_or_default();
        charts.push((
            "reward-vs-diversity.png",
            Chart {
                title: format!(
                    "Final reward ± s.e. against diversity (one point per run, {n_final} samples)"
                ),
                x_label: "Vendi score".into(),
                y_label: "mean reward".into(),
                series,
                style: Style::Points,
                markers,
                ..Chart::default()
            },
        ));
    }
    charts
}

/// Writes `charts(c)` into `out` and returns the paths written.
pub fn write_plots(c: &Comparison, out: &Path) -> Result<Vec<PathBuf>, String> {
    let mut written = Vec::new();
    for (name, chart) in charts(c) {
        let path = out.join(name);
        save_chart(&chart, &path)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Diversity;

    fn report(epoch: u64, reward: f64, vendi: f64, entropy: f64, samples: usize) -> EvalReport {
        EvalReport {
            epoch,
            samples,
            reward_mean: reward,
            reward_sem: 0.0,
            reward_components: BTreeMap::new(),
            reward_trajectory: vec![],
            diversity: Some(Diversity {
                samples,
                vendi,
                class_entropy: entropy,
                classes_covered: 10,
                class_histogram: vec![],
                is_like: 2.0,
                fid_like: Some(1.0),
            }),
            per_prompt_vendi: None,
            class_accuracy: None,
            sample_rewards: vec![],
            eval_s: 1.0,
        }
    }

    fn run(label: &str, seed: u64, reward: f64, vendi: f64) -> RunRecord {
        RunRecord {
            dir: PathBuf::from(format!("runs/{label}-{seed}")),
            label: label.into(),
            method: "ddpo-is".into(),
            seed,
            epochs: 2,
            last: report(2, reward, vendi, 2.0, 1000),
            curve: vec![
                report(0, 0.0, 10.0, 2.0, 128),
                report(1, reward / 2.0, vendi, 2.0, 128),
            ],
            cumulative_unet_evals: vec![100, 200],
            reward_evals: 64,
            wall_s: 10.0,
            key: serde_json::json!({"same": true}),
        }
    }

    #[test]
    fn groups_average_over_seeds_against_the_base() {
        let runs = vec![
            run("ddpo", 0, 1.0, 5.0),
            run("hrf", 0, 0.9, 9.0),
            run("ddpo", 1, 3.0, 7.0),
        ];
        let base = report(2, 0.0, 10.0, 2.0, 1000);
        let c = Comparison::new(runs, Some(base)).unwrap();
        assert_eq!(
            c.groups
                .iter()
                .map(|g| g.label.as_str())
                .collect::<Vec<_>>(),
            ["ddpo", "hrf"]
        );
        let d = c.group("ddpo").unwrap();
        assert_eq!(d.reward.n, 2);
        assert!((d.reward.mean - 2.0).abs() < 1e-12);
        assert!((d.reward.std - 2f64.sqrt()).abs() < 1e-12);
        assert!((d.vendi_vs_base.unwrap().mean - 0.6).abs() < 1e-12);
        assert!((d.gain.unwrap().mean - 2.0).abs() < 1e-12);
        let v = c.verdicts("ddpo").unwrap();
        assert!(v.claim_tested, "DDPO kept 60% of Vendi: collapsed");
        assert_eq!(v.groups.len(), 1);
        assert!((v.groups[0].gain_share - 0.45).abs() < 1e-12);
        assert!(!v.groups[0].meets_target, "45% of the gain is short of 90%");
        let md = markdown(&c, Some(&v));
        assert!(
            md.contains("| ddpo | ddpo-is | 2 | 2 | 2.0000 ± 1.4142 |"),
            "{md}"
        );
        assert!(md.contains("target missed"), "{md}");
        assert!(c.verdicts("nope").unwrap_err().contains("ddpo, hrf"));
    }

    #[test]
    fn a_reference_that_kept_its_diversity_leaves_the_claim_untested() {
        let runs = vec![run("ddpo", 0, 1.0, 9.5), run("hrf", 0, 1.0, 9.5)];
        let c = Comparison::new(runs, Some(report(2, 0.0, 10.0, 2.0, 1000))).unwrap();
        let v = c.verdicts("ddpo").unwrap();
        assert!(!v.claim_tested);
        assert!(v.groups[0].meets_target);
        assert!(markdown(&c, Some(&v)).contains("Claim not tested"));
    }

    #[test]
    fn runs_evaluated_differently_are_refused() {
        let mut b = run("hrf", 0, 1.0, 5.0);
        b.key = serde_json::json!({"same": false});
        let e = Comparison::new(vec![run("ddpo", 0, 1.0, 5.0), b], None).unwrap_err();
        assert!(e.contains("not comparable"), "{e}");
    }

    #[test]
    fn paths_spelled_differently_give_the_same_key() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let resolved = |model: &Path, stage: &Path| {
            serde_json::json!({
                "model": {"weights": model, "device": "cpu"},
                "sampling": {"steps": 5},
                "evaluation": {"seed": 1, "eta": 0.0, "guidance": 1.0, "final_samples": 8},
                "rewards": [{"kind": "onnx", "name": "s", "stages": [{"model": stage}]}],
            })
        };
        let a = resolved(
            &repo.join("configs/../models/testbed"),
            &repo.join("configs/../models/aesthetic-head.onnx"),
        );
        let b = resolved(
            &repo.join("models/testbed"),
            &repo.join("models/./aesthetic-head.onnx"),
        );
        assert_ne!(a, b);
        assert_eq!(evaluation_key(&a), evaluation_key(&b));
        let other = resolved(
            &repo.join("models/testbed-wide"),
            &repo.join("models/aesthetic-head.onnx"),
        );
        assert_ne!(evaluation_key(&a), evaluation_key(&other));
        let named = serde_json::json!({"model": {"config": "testbed"}});
        assert_eq!(evaluation_key(&named)["model"], "testbed");
        // A key cached by an older hrf, paths as the pipeline spelled them, matches today's.
        let mut cached = evaluation_key(&b);
        cached["model"] = repo
            .join("configs/../models/testbed")
            .to_string_lossy()
            .into();
        assert_ne!(cached, evaluation_key(&b));
        assert_eq!(in_one_spelling(cached), evaluation_key(&b));
    }

    #[test]
    fn curves_average_where_every_run_has_a_point() {
        let s = mean_curve(
            "g",
            &[
                vec![(0, 0.0, 1.0, Some(0.5)), (1, 10.0, 2.0, Some(0.5))],
                vec![(0, 0.0, 3.0, None)],
            ],
        );
        assert_eq!(s.points, vec![(0.0, 2.0)]);
        assert_eq!(s.band, Some(vec![2f64.sqrt()]), "several runs: their std");
        assert_eq!(
            (s.label.as_str(), s.marker),
            ("g (2 runs, ± std)", Some(Marker::Dot))
        );
        let one = mean_curve(
            "g",
            &[vec![(0, 0.0, 1.0, Some(0.5)), (1, 10.0, 2.0, Some(0.25))]],
        );
        assert_eq!(
            one.band,
            Some(vec![0.5, 0.25]),
            "one run: its standard errors"
        );
        assert_eq!(one.label, "g (± s.e.)");
        let bare = mean_curve("g", &[vec![(0, 0.0, 1.0, Some(0.5)), (1, 10.0, 2.0, None)]]);
        // Runs whose UNet evaluations differ a little meet at their epochs, at the mean x.
        let apart = mean_curve(
            "g",
            &[
                vec![(0, 0.0, 1.0, None), (1, 100.0, 2.0, None)],
                vec![(0, 0.0, 3.0, None), (1, 110.0, 4.0, None)],
            ],
        );
        assert_eq!(apart.points, vec![(0.0, 2.0), (105.0, 3.0)]);
        assert_eq!((bare.band, bare.label.as_str()), (None, "g"));
        assert_eq!(thousands(1234567.0), "1,234,567");
        assert_eq!(thousands(-999.0), "-999");
    }

    #[test]
    fn the_curves_show_the_final_evaluation_against_the_base_line() {
        let mut runs = vec![
            run("ddpo", 0, 1.0, 5.0),
            run("ddpo", 1, 3.0, 7.0),
            run("hrf", 0, 0.9, 9.0),
        ];
        runs[2].last.reward_sem = 0.05;
        runs[2].curve[0].reward_sem = 0.1;
        runs[2].curve[1].reward_sem = 0.1;
        let c = Comparison::new(runs, Some(report(2, 0.25, 10.0, 2.0, 1000))).unwrap();
        let charts = charts(&c);
        let names: Vec<&str> = charts.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "reward.png",
                "reward-by-unet-evals.png",
                "vendi.png",
                "reward-vs-diversity.png"
            ]
        );
        let get = |name: &str| &charts.iter().find(|(n, _)| *n == name).unwrap().1;
        let reward = get("reward.png");
        let [ddpo, ddpo_final, hrf, hrf_final] = &reward.series[..] else {
            panic!("{:?}", reward.series)
        };
        assert_eq!(ddpo.points, [(0.0, 0.0), (1.0, 1.0)]);
        assert_eq!(ddpo.band, Some(vec![0.0, 2f64.sqrt() / 2.0]));
        assert_eq!(ddpo.marker, Some(Marker::Dot));
        assert_eq!(
            ddpo_final.points,
            [(2.0, 2.0)],
            "epoch 2: the final, mean of 1 and 3"
        );
        assert_eq!(ddpo_final.band, Some(vec![2f64.sqrt()]));
        assert_eq!(ddpo_final.marker, Some(Marker::Square));
        assert_eq!(
            ddpo_final.label, "",
            "explained by the title, not the legend"
        );
        assert_eq!(
            (ddpo.color, ddpo_final.color),
            (Some(PALETTE[0]), Some(PALETTE[0]))
        );
        assert_eq!(
            (hrf.color, hrf_final.color),
            (Some(PALETTE[1]), Some(PALETTE[1]))
        );
        assert_eq!(hrf.points, [(0.0, 0.0), (1.0, 0.45)]);
        assert_eq!(hrf.band, Some(vec![0.1, 0.1]), "one run: ± its s.e.");
        assert_eq!(hrf.label, "hrf (± s.e.)");
        assert_eq!(hrf_final.points, [(2.0, 0.9)]);
        assert_eq!(hrf_final.band, Some(vec![0.05]));
        assert_eq!(
            reward.ref_lines,
            [RefLine::new("base model (1000 samples)", 0.25)]
        );
        assert!(
            reward.title.contains("squares: final, 1000"),
            "{}",
            reward.title
        );
        let by_evals = get("reward-by-unet-evals.png");
        let xs: Vec<f64> = by_evals.series[0].points.iter().map(|p| p.0).collect();
        assert_eq!(xs, [0.0, 100.0]);
        assert_eq!(
            by_evals.series[1].points[0].0, 200.0,
            "the final, after 2 epochs"
        );
        let vendi = get("vendi.png");
        assert_eq!(vendi.series[3].points, [(2.0, 9.0)]);
        assert_eq!(
            vendi.series[2].band, None,
            "no Vendi uncertainty in a report"
        );
        assert_eq!(vendi.ref_lines[0].y, 10.0);
        assert_eq!(vendi.y_min_span, VENDI_MIN_SPAN * 10.0);
        let scatter = get("reward-vs-diversity.png");
        assert_eq!(scatter.series[1].band, Some(vec![0.05]));
        for (name, chart) in &charts {
            let texts = [&chart.title, &chart.x_label, &chart.y_label]
                .into_iter()
                .chain(chart.series.iter().map(|s| &s.label))
                .chain(chart.ref_lines.iter().map(|r| &r.label));
            for t in texts {
                assert!(t.chars().all(hrf_data::plot::has_glyph), "{name}: {t:?}");
            }
            hrf_data::plot::render_chart(chart).unwrap();
        }
        let no_base = Comparison::new(vec![run("ddpo", 0, 1.0, 5.0)], None).unwrap();
        assert!(super::charts(&no_base)
            .iter()
            .all(|(_, ch)| ch.ref_lines.is_empty()));
    }
}
