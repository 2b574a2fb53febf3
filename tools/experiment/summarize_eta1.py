#!/usr/bin/env python3
"""Table of the eta-1 re-evaluation (tools/experiment/reevaluate_eta1.sh): per task, each method's
final reward, gain over the base model, and Vendi / class entropy as a share of the base
model's, with the HRF claim's verdict against DDPO. Writes RESULTS.md beside the JSON files."""

import json
from pathlib import Path

root = Path(__file__).resolve().parents[2] / "experiments" / "hrf-vs-ddpo" / "eta0-seed0" / "eta1-reevaluation"
rows = ["| task | method | reward | gain over base | Vendi (÷ base) | class entropy (÷ base) | classes | FID-like | share of DDPO's gain | target |",
        "|---|---|---|---|---|---|---|---|---|---|"]
for task, reward in [("compressibility", "jpeg-compressibility"), ("aesthetic", "aesthetic")]:
    base_path = root / f"{task}-base.json"
    if not base_path.exists():
        continue
    base = json.loads(base_path.read_text())["unconditional"]
    rb = base["rewards"][reward]
    rows.append(f"| {task} | base model | {rb:.4f} | – | {base['vendi']:.2f} | {base['class_entropy']:.3f} | "
                f"{base['classes_covered']} | {base['fid_like']:.1f} | – | – |")
    ddpo_gain = None
    for m in ["ddpo", "ddpo-kl", "hrf", "hrf-d"]:
        p = root / f"{task}-{m}-s0.json"
        if not p.exists():
            continue
        u = json.loads(p.read_text())["unconditional"]
        r = u["rewards"][reward]
        gain = r - rb
        vr, er = u["vendi"] / base["vendi"], u["class_entropy"] / base["class_entropy"]
        if m == "ddpo":
            ddpo_gain = gain
            share, verdict = "–", ("reference: collapsed" if vr < 0.8 else "reference: did not collapse (claim not tested)")
        else:
            s = gain / ddpo_gain if ddpo_gain else float("nan")
            share = f"{s:.0%}"
            verdict = "met" if s >= 0.9 and vr >= 0.9 and er >= 0.9 else "missed"
        rows.append(f"| {task} | {m} | {r:.4f} | {gain:+.4f} | {u['vendi']:.2f} ({vr:.2f}) | "
                    f"{u['class_entropy']:.3f} ({er:.2f}) | {u['classes_covered']} | {u['fid_like']:.1f} | {share} | {verdict} |")
text = ("# Seed 0, equal epochs, re-evaluated at η = 1\n\n"
        "1,000 fixed-seed unconditional samples, 20 DDIM steps, η = 1 (the training η), by `hrf eval "
        "--unconditional-only` (tools/experiment/reevaluate_eta1.sh). One seed: no spread.\n\n"
        + "\n".join(rows) + "\n")
(root / "RESULTS.md").write_text(text)
print(text)
