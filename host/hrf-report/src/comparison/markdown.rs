//! A comparison as Markdown: the table of groups, the base model's row, the frontier section,
//! the 90/90 check of the final evaluation and the trust-region table.

use super::{
    frontier_markdown, trust_markdown, trust_region, Comparison, Finals, Frontier, MeanStd,
    Verdicts, COLLAPSE, GAIN_SHARE, KEEP,
};

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

/// The comparison as Markdown: the table, the base model's row, and the 90/90 check when a
/// reference group is named.
pub fn markdown(c: &Comparison, verdicts: Option<&Verdicts>) -> String {
    let mut s = table(c);
    s += &guards(c);
    if let Some(v) = verdicts {
        s += &check_90(v);
    }
    s
}

/// comparison.md in full: the table, the frontier section (`matched_png`: the side-by-side
/// samples at matched reward, if written), the 90/90 check and the trust-region table.
pub fn markdown_report(
    c: &Comparison,
    verdicts: Option<&Verdicts>,
    frontier: Option<&Frontier>,
    matched_png: Option<&str>,
) -> String {
    let mut s = table(c);
    s += &guards(c);
    if let Some(f) = frontier {
        s += "\n";
        s += &frontier_markdown(f, matched_png);
    }
    if let Some(v) = verdicts {
        s += &check_90(v);
    }
    s += "\n";
    s += &trust_markdown(&trust_region(c));
    s
}

fn table(c: &Comparison) -> String {
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
    s
}

/// The runs whose guards acted (docs/GUARDS.md), one line per stop or rollback; empty when
/// none did.
fn guards(c: &Comparison) -> String {
    let acted: Vec<_> = c.runs.iter().filter(|r| !r.guard.is_empty()).collect();
    if acted.is_empty() {
        return String::new();
    }
    let mut s = "\nGuards that acted (the run's metrics.jsonl has every check):\n\n| run | folder | what fired |\n|---|---|---|\n".to_string();
    for r in acted {
        let what: Vec<String> = r.guard.iter().map(|e| e.describe()).collect();
        s += &format!(
            "| {} | {} | {} |\n",
            r.label,
            r.dir.display(),
            what.join("; ")
        );
    }
    s
}

/// The 90/90 check of the final evaluation against the reference group.
fn check_90(v: &Verdicts) -> String {
    let mut s = String::new();
    s += &format!(
        "\n90/90 check of the final evaluation against `{}` (target: ≥ {:.0}% of its reward gain with Vendi and class entropy ≥ {:.0}% of the base model's):\n\n",
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
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_written_with_thousands_separators() {
        assert_eq!(thousands(1234567.0), "1,234,567");
        assert_eq!(thousands(-999.0), "-999");
    }
}
