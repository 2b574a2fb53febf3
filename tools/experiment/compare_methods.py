#!/usr/bin/env python3
"""The HRF-vs-DDPO experiment (issue 5): does HRF / HRF-D keep the reward of DDPO while keeping
the diversity DDPO loses?

    python3 tools/experiment/compare_methods.py pilot  [--tasks ...] [--set KEY=VALUE ...]
    python3 tools/experiment/compare_methods.py run    [--full] [--seeds 0 1 2] [--tasks ...]
    python3 tools/experiment/compare_methods.py report [--update-readme]

`pilot` trains plain DDPO once per task (seed 0) with the committed config plus any --set
overrides and says whether it collapsed diversity (final Vendi < 80% of the base model's): the
budget is raised until it does. `run` trains DDPO, DDPO + KL-to-base, HRF and HRF-D × tasks ×
seeds under two protocols:

  equal-epochs      every method the same epochs and samples per epoch (the paper's protocol);
  equal-unet-evals  every method the UNet evaluations DDPO used (HRF-D's candidate rollouts and
                    the KL term's base-model passes counted): epochs = DDPO's evaluations ÷ the
                    method's evaluations per epoch, measured in the equal-epochs runs. DDPO's
                    runs are shared by both protocols.

Runs already finished are kept (the experiment resumes where it stopped; an interrupted run is
resumed with `hrf run --resume`). Runs live under --runs (runs/experiment/hrf-vs-ddpo, not
committed); each finished run's small files (pipeline, metrics.jsonl, summary, final sample grid)
are copied to --out (experiments/hrf-vs-ddpo, committed), from which `report` runs `hrf compare`
per task and protocol and writes RESULTS.md (and, with --update-readme, the README's results
section). Only the Python standard
library is used; `hrf` is target/release/hrf unless HRF_BIN says otherwise.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "experiment"
HRF = os.environ.get("HRF_BIN", str(REPO / "target" / "release" / "hrf"))

# Shared by every method; the methods differ only in these overrides.
KL_COEF = 1.0
METHODS = {
    "ddpo": ["training.method=ddpo-is"],
    "ddpo-kl": ["training.method=ddpo-is", f"training.kl_coef={KL_COEF}"],
    "hrf": ["training.method=hrf"],
    # CPU settings: candidate starts 0, 4, 8, 12, 16 (stride 4) × 2 noise copies per anchor.
    "hrf-d": ["training.method=hrf-d", "training.hrf.stride=4", "training.hrf.copies=2"],
}
# --full (a GPU machine or a long background run): all four tasks, candidate starts every
# second step with 4 copies, twice the samples per epoch and twice the epochs.
FULL_METHODS = dict(METHODS, **{
    "hrf-d": ["training.method=hrf-d", "training.hrf.stride=2", "training.hrf.copies=4"],
})
FULL_SETS = ["training.epochs=24", "sampling.batches_per_epoch=4"]
TASKS = ["compressibility", "aesthetic"]
FULL_TASKS = ["compressibility", "incompressibility", "aesthetic", "prompt-alignment"]
PROTOCOLS = ["equal-epochs", "equal-unet-evals"]


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def config_for(task):
    path = CONFIGS / f"{task}.yaml"
    if not path.exists():
        sys.exit(f"{path}: no experiment config for task {task!r}")
    return path


def finished(run_dir):
    return (run_dir / "summary.json").exists()


def train(args, rel, method_sets, name, seed, extra):
    """Trains one run into args.runs/rel unless it is finished (resuming a started one), and
    keeps its small files in args.out/rel."""
    run_dir, kept = args.runs / rel, args.out / rel
    task = rel.parts[-2]
    if not finished(run_dir):
        train_dir(task, method_sets, name, seed, run_dir, extra)
    if not finished(kept):
        keep_small_files(run_dir, kept)
    return kept


def train_dir(task, method_sets, name, seed, run_dir, extra):
    if finished(run_dir):
        return
    if (run_dir / "pipeline.resolved.yaml").exists():
        cmd = [HRF, "run", "--resume", str(run_dir), "-q"]
        if not any((run_dir / "checkpoints").glob("*")):
            # Stopped before its first checkpoint: start it again.
            subprocess.run(["rm", "-rf", str(run_dir)], check=True)
            return train_dir(task, method_sets, name, seed, run_dir, extra)
    else:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        sets = method_sets + [f"run.name={name}", f"run.seed={seed}"] + extra
        cmd = [HRF, "run", str(config_for(task)), "--run-dir", str(run_dir), "-q"]
        for s in sets:
            cmd += ["--set", s]
    log(f"{task} {name} seed {seed}: {' '.join(cmd[1:])}")
    t0 = time.time()
    with open(run_dir.parent / f"{run_dir.name}.log", "a") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        sys.exit(f"{run_dir}: hrf run exited with {rc} (log: {run_dir.parent / (run_dir.name + '.log')})")
    log(f"  done in {time.time() - t0:.0f} s")


KEEP = ["pipeline.yaml", "pipeline.resolved.yaml", "metrics.jsonl", "summary.json", "samples/final.png"]


def keep_small_files(run_dir, dest):
    """Copies what `hrf compare` reads (and the run's final grid) into the committed results."""
    for name in KEEP:
        src = run_dir / name
        if src.exists():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(src.read_bytes())


def epoch_lines(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [j for j in map(json.loads, filter(None, lines)) if j.get("kind") == "epoch"]


def unet_evals(run_dir):
    return sum(l["unet_evals"] for l in epoch_lines(run_dir))


def compare(run_dirs, out, reference="ddpo"):
    cmd = [HRF, "compare", *map(str, run_dirs), "-o", str(out), "--reference", reference]
    log(f"compare → {out}")
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "comparison.json").read_text())


def pilot(args):
    for task in args.tasks:
        tag = "-".join(s.replace("training.", "").replace("optimizer.", "").replace("=", "")
                       for s in args.set) or "committed"
        run_dir = train(args, Path("pilot") / task / f"ddpo-{tag}", METHODS["ddpo"], "ddpo", 0, args.set)
        c = compare([run_dir], args.out / "pilot" / task / f"comparison-{tag}")
        g = c["comparison"]["groups"][0]
        base = c["comparison"]["base"]
        ratio = g["vendi_vs_base"]["mean"]
        log(f"pilot {task} [{tag}]: reward {base['reward_mean']:.4f} → {g['reward']['mean']:.4f}, "
            f"Vendi {base['diversity']['vendi']:.2f} → {g['vendi']['mean']:.2f} ({ratio:.0%} of base): "
            + ("reward FELL: unstable (lower the learning rate)" if g["gain"]["mean"] <= 0
               else "collapsed" if ratio < 0.8 else "NOT collapsed (raise the budget)"))


def equal_eval_epochs(args, methods, task):
    """Epochs per method that spend the UNet evaluations DDPO spent, from the first seed's
    equal-epochs runs; decided once and kept in equal-unet-evals/<task>-epochs.json."""
    path = args.out / "equal-unet-evals" / f"{task}-epochs.json"
    if path.exists():
        return json.loads(path.read_text())["epochs"]
    seed = args.seeds[0]
    runs = args.out / "equal-epochs" / task
    ddpo_evals = unet_evals(runs / f"ddpo-s{seed}")
    budgets = {}
    for name in methods:
        if name != "ddpo":
            d = runs / f"{name}-s{seed}"
            budgets[name] = max(1, round(ddpo_evals * len(epoch_lines(d)) / unet_evals(d)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"seed": seed, "ddpo_unet_evals": ddpo_evals, "epochs": budgets},
                               indent=2) + "\n")
    log(f"{task}: equal-UNet-evaluation epochs {budgets} (DDPO used {ddpo_evals} with seed {seed})")
    return budgets


def run(args):
    methods = FULL_METHODS if args.full else METHODS
    extra = FULL_SETS if args.full else []
    started = time.time()
    # Seeds outermost, both protocols per seed: a stopped experiment has whole seeds, and
    # running it again continues where it stopped.
    for seed in args.seeds:
        for task in args.tasks:
            for name, sets in methods.items():
                train(args, Path("equal-epochs") / task / f"{name}-s{seed}", sets, name, seed, extra)
            for name, epochs in equal_eval_epochs(args, methods, task).items():
                train(args, Path("equal-unet-evals") / task / f"{name}-s{seed}", methods[name],
                      name, seed, extra + [f"training.epochs={epochs}"])
        report(args)
    (args.out / "timing.json").write_text(json.dumps({
        "last_run_s": time.time() - started,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
    }, indent=2) + "\n")
    report(args)


def fmt(ms, digits):
    if ms is None or ms["mean"] is None:
        return "–"
    return f"{ms['mean']:.{digits}f} ± {ms['std']:.{digits}f}" if ms["n"] > 1 else f"{ms['mean']:.{digits}f}"


def report(args):
    root = args.out
    methods = FULL_METHODS if args.full else METHODS
    sections = []
    summary_rows = []
    for protocol in PROTOCOLS:
        for task in args.tasks:
            dirs = []
            for name in methods:
                src = "equal-epochs" if (protocol == "equal-epochs" or name == "ddpo") else protocol
                dirs += [root / src / task / f"{name}-s{s}" for s in args.seeds
                         if finished(root / src / task / f"{name}-s{s}")]
            if not dirs:
                continue
            out = root / "comparisons" / protocol / task
            c = compare(dirs, out)
            md = (out / "comparison.md").read_text()
            rel = os.path.relpath(out, REPO)
            sections.append(f"### {task}, {protocol}\n\n{md}\n![samples]({rel}/samples.png)\n")
            v = c["verdicts"]
            for g in c["comparison"]["groups"]:
                verdict = next((x for x in v["groups"] if x["label"] == g["label"]), None)
                summary_rows.append(
                    f"| {task} | {protocol} | {g['label']} | {len(g['seeds'])} | {fmt(g['gain'], 4)} | "
                    f"{fmt(g['vendi_vs_base'], 2)} | {fmt(g['entropy_vs_base'], 2)} | "
                    + (f"{verdict['gain_share']:.0%} | {'met' if verdict['meets_target'] else 'missed'}"
                       if verdict else f"reference ({'collapsed' if v['claim_tested'] else 'did not collapse: claim not tested'})")
                    + " |")
    timing = root / "timing.json"
    t = json.loads(timing.read_text()) if timing.exists() else {}
    head = ("| task | protocol | method | seeds | reward gain over base | Vendi ÷ base | class entropy ÷ base | "
            "share of DDPO's gain | target |\n|---|---|---|---|---|---|---|---|---|\n")
    table = head + "\n".join(summary_rows) + "\n"
    text = ("# HRF vs DDPO on the testbed\n\n"
            f"Made by `python3 tools/experiment/compare_methods.py run{' --full' if args.full else ''}` "
            f"(seeds {' '.join(map(str, args.seeds))}; {t.get('machine', 'machine not recorded')}; "
            f"last invocation {t.get('last_run_s', float('nan')) / 60:.0f} min). Target: ≥ 90% of DDPO's reward gain "
            "with Vendi and class entropy ≥ 90% of the base model's; tested only where DDPO's Vendi fell below 80% "
            "of the base model's. Mean ± std over seeds.\n\n" + table + "\n" + "\n".join(sections))
    (root / "RESULTS.md").write_text(text)
    log(f"wrote {root / 'RESULTS.md'}")
    if args.update_readme:
        readme = REPO / "README.md"
        s = readme.read_text()
        begin, end = "<!-- experiment:begin -->", "<!-- experiment:end -->"
        if begin not in s or end not in s:
            sys.exit(f"{readme}: no {begin} … {end} markers")
        rel = os.path.relpath(root / "RESULTS.md", REPO)
        block = (f"{begin}\n{table}\nPer-task tables, plots and sample grids: [{rel}]({rel}).\n{end}")
        s = s[: s.index(begin)] + block + s[s.index(end) + len(end):]
        readme.write_text(s)
        log(f"updated {readme}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["pilot", "run", "report"])
    ap.add_argument("--out", type=Path,
                    help="results (committed): comparisons, RESULTS.md, each run's small files")
    ap.add_argument("--runs", type=Path,
                    help="the run folders (checkpoints, models; not committed)")
    ap.add_argument("--tasks", nargs="+")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--full", action="store_true", help="all four tasks, larger settings")
    ap.add_argument("--set", action="append", default=[], help="pilot: an override, as for hrf run")
    ap.add_argument("--update-readme", action="store_true")
    args = ap.parse_args()
    args.tasks = args.tasks or (FULL_TASKS if args.full else TASKS)
    name = "hrf-vs-ddpo-full" if args.full else "hrf-vs-ddpo"
    args.out = (args.out or REPO / "experiments" / name).resolve()
    args.runs = (args.runs or REPO / "runs" / "experiment" / name).resolve()
    {"pilot": pilot, "run": run, "report": report}[args.stage](args)


if __name__ == "__main__":
    main()
