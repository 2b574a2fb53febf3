//! The run's plots (`plots/*.png`), redrawn from metrics.jsonl after every epoch so that a
//! resumed run draws exactly what an uninterrupted one would.

use std::path::Path;

use hrf_data::plot::{save_chart, Chart, Series, Style};

/// Draws reward and diversity against epoch from `dir/metrics.jsonl`.
pub fn write_run_plots(dir: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(dir.join(crate::run::METRICS_FILE))
        .map_err(|e| format!("metrics.jsonl: {e}"))?;
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let num = |v: &serde_json::Value, key: &str| v.get(key).and_then(|x| x.as_f64());
    let train: Vec<(f64, f64)> = lines
        .iter()
        .filter(|l| l["kind"] == "epoch")
        // Epoch e's samples come from the weights after e epochs.
        .filter_map(|l| Some((num(l, "epoch")?, num(l, "reward_mean")?)))
        .collect();
    let evals: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["kind"] == "eval" || l["kind"] == "final")
        .map(|l| &l["report"])
        .collect();
    let eval_points = |key: &dyn Fn(&serde_json::Value) -> Option<f64>| -> Vec<(f64, f64)> {
        evals
            .iter()
            .filter_map(|r| Some((num(r, "epoch")?, key(r)?)))
            .collect()
    };
    let mut eval_reward = Series::new("evaluation ± s.e.", eval_points(&|r| num(r, "reward_mean")));
    eval_reward.band = Some(
        evals
            .iter()
            .filter(|r| num(r, "epoch").is_some() && num(r, "reward_mean").is_some())
            .map(|r| num(r, "reward_sem").unwrap_or(0.0))
            .collect(),
    );
    save_chart(
        &Chart {
            title: "Reward".into(),
            x_label: "epoch".into(),
            y_label: "mean reward".into(),
            series: vec![Series::new("training samples", train), eval_reward],
            style: Style::Lines,
            markers: vec![],
        },
        &dir.join("plots").join("reward.png"),
    )?;
    let vendi = eval_points(&|r| r["diversity"]["vendi"].as_f64());
    if !vendi.is_empty() {
        save_chart(
            &Chart {
                title: "Diversity (evaluation classifier features)".into(),
                x_label: "epoch".into(),
                y_label: "Vendi score".into(),
                series: vec![Series::new("Vendi", vendi)],
                style: Style::Lines,
                markers: vec![],
            },
            &dir.join("plots").join("diversity.png"),
        )?;
        let entropy = eval_points(&|r| r["diversity"]["class_entropy"].as_f64());
        save_chart(
            &Chart {
                title: "Class coverage".into(),
                x_label: "epoch".into(),
                y_label: "class entropy (nats)".into(),
                series: vec![Series::new("class entropy", entropy)],
                style: Style::Lines,
                markers: vec![],
            },
            &dir.join("plots").join("class-entropy.png"),
        )?;
    }
    Ok(())
}
