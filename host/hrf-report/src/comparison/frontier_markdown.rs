//! The frontier verdicts as Markdown: the "Frontier" section of comparison.md.

use super::Frontier;
use crate::frontier::Interval;

fn interval(i: &Option<Interval>, digits: usize) -> String {
    i.map_or("—".into(), |i| i.show(digits))
}

/// The "Frontier" section: per group, its diversity ÷ base at the reference's mid-run reward
/// R_mid and the reward it reaches while keeping Vendi ≥ the floor, with where to see samples
/// at the matched reward (`matched_png`: the side-by-side image, when one was written).
pub fn frontier_markdown(f: &Frontier, matched_png: Option<&str>) -> String {
    let pct = |x: f64| format!("{:.0}%", x * 100.0);
    let mut s = String::from("## Frontier\n\n");
    s += &format!(
        "Each seed's evaluations in epoch order form a curve of reward against diversity ÷ the base model evaluated on the same seeds (its epoch-0 evaluation; for the final evaluation, the base model evaluated as it was). Means over seeds, with the bootstrap {} percentile interval over seeds in brackets ({} resamples, fixed seed).\n\n",
        pct(f.coverage),
        f.bootstrap_resamples
    );
    match (&f.reference, f.r_mid) {
        (Some(r), Some(level)) => {
            s += &format!(
                "R_mid = {level:.4}: `{r}`'s reward at the middle of its run (epochs ÷ 2, linear between the evaluations around it), mean over its {} seeds. \"At R_mid\": where a seed's reward first reaches R_mid (linear along its curve); seeds that never reach it are left out and counted.\n\n",
                f.r_mid_seeds
            );
            if let Some(b) = f.base_reward.filter(|b| level <= *b) {
                s += &format!(
                    "Note: R_mid is not above the base model's reward ({b:.4}): `{r}` had not gained reward by the middle of its run, so curves start at or above R_mid and their diversity there is the base model's.\n\n"
                );
            }
        }
        _ => {
            s += &format!(
                "Verdicts at matched reward skipped: {}.\n\n",
                f.skipped.as_deref().unwrap_or("no reference")
            );
        }
    }
    s += &format!(
        "\"Reward at Vendi ≥ {}\": the best reward a seed reaches before its Vendi first drops below {} of the base model's (linear to the crossing).\n\n",
        pct(f.vendi_floor),
        pct(f.vendi_floor)
    );
    s += &format!(
        "| method | seeds | R_mid | Vendi ÷ base at R_mid | class entropy ÷ base at R_mid | reward at Vendi ≥ {} |\n",
        pct(f.vendi_floor)
    );
    s += "|---|---|---|---|---|---|\n";
    let r_mid = f.r_mid.map_or("—".into(), |r| format!("{r:.4}"));
    for m in &f.methods {
        let seeds = m.curves.len();
        let reached = |i: &Option<Interval>, n: usize| match f.r_mid {
            Some(_) => format!("{} (reached {n}/{seeds})", interval(i, 3)),
            None => "—".into(),
        };
        let floor_n = m.reward_at_vendi_floor.map_or(0, |i| i.n);
        let floor = match floor_n {
            n if n == seeds => interval(&m.reward_at_vendi_floor, 4),
            n => format!(
                "{} ({n}/{seeds} seeds)",
                interval(&m.reward_at_vendi_floor, 4)
            ),
        };
        s += &format!(
            "| {}{} | {} | {} | {} | {} | {} |\n",
            m.label,
            if m.reference { " (reference)" } else { "" },
            seeds,
            r_mid,
            reached(&m.vendi_at_r_mid, m.vendi_reached),
            reached(&m.entropy_at_r_mid, m.entropy_reached),
            floor,
        );
    }
    let matched: Vec<String> = f
        .methods
        .iter()
        .filter_map(|m| {
            let g = m.matched.as_ref()?;
            Some(format!(
                "- `{}`: seed {}, {} (reward {:.4}): {}\n",
                m.label,
                g.seed,
                match g.final_eval {
                    true => format!("final evaluation, epoch {}", g.epoch),
                    false => format!("epoch {}", g.epoch),
                },
                g.reward,
                g.grid.display()
            ))
        })
        .collect();
    if !matched.is_empty() {
        s += "\nSamples at matched reward (each method's first seed, the evaluation whose reward is closest to R_mid)";
        s += &match matched_png {
            Some(p) => format!(", side by side in {p}:\n\n"),
            None => ":\n\n".into(),
        };
        s += &matched.concat();
    }
    s
}
