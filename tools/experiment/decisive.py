#!/usr/bin/env python3
"""The decisive HRF experiment (tools/experiment/README.md, "The decisive experiment"): a
per-method learning-rate sweep on seeds used nowhere else, the lr chosen by a rule fixed before
the final runs, then every method × task × seed under two protocols, judged by `hrf compare`'s
reward–diversity frontiers. Uses only the `hrf` binary and the Python standard library.

    python3 tools/experiment/decisive.py plan   --grid cpu          # what would run, and in what order
    python3 tools/experiment/decisive.py sweep  --grid cpu [--jobs 2]
    python3 tools/experiment/decisive.py choose --grid cpu          # applies the rule → choices.json
    python3 tools/experiment/decisive.py run    --grid cpu [--jobs 2] [--minutes M]
    python3 tools/experiment/decisive.py report --grid cpu

Every step is resumable: a run whose results are in experiments/decisive/<grid>/ is done and
skipped. `--minutes M` stops starting runs after M minutes and stops unfinished ones at the
deadline (their folders are dropped), so a GPU session can run the grid part by part
(tools/experiment/gpu-part.sh): each part packs the results it finished, the next part goes on.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HRF = os.environ.get("HRF", str(REPO / "target" / "release" / "hrf"))
CONFIGS = REPO / "configs" / "experiment" / "decisive"
RESULTS = REPO / "experiments" / "decisive"
TASKS = ["compressibility", "aesthetic"]

# HRF's methods run one optimiser step per anchor group: their train batch is the group.
HRF_AUTHORS = ["training.preset=authors", "training.batch_size=5"]
METHODS = {
    "ddpo": ["training.method=ddpo-is"],
    "ddpo-kl-0.1": ["training.method=ddpo-is", "training.kl_coef=0.1"],
    "ddpo-kl-1": ["training.method=ddpo-is", "training.kl_coef=1.0"],
    "ddpo-group": ["training.method=ddpo-is", "advantages.mode=group", "advantages.group_size=5"],
    "ddpo-uniform": ["training.method=ddpo-is", "training.start=uniform"],
    "hrf": ["training.method=hrf", *HRF_AUTHORS],
    "hrf-no-f": ["training.method=hrf", *HRF_AUTHORS, "training.hrf.clip_scale=off"],
    "hrf-d": ["training.method=hrf-d", *HRF_AUTHORS],
}
# The KL coefficients share DDPO's lr (the term only adds to DDPO's loss); the other methods
# each take the sweep's choice.
SHARES_LR = {"ddpo-kl-0.1": "ddpo", "ddpo-kl-1": "ddpo"}
# On a grid that sweeps only some methods (`sweep_methods`), the others take the lr of the
# method they vary: DDPO's variants DDPO's, HRF's HRF's.
LR_FROM = {"ddpo-group": "ddpo", "ddpo-uniform": "ddpo", "hrf-no-f": "hrf", "hrf-d": "hrf"}
# The three rates and two above them: on the reduced grid's first DDPO sweep runs
# (compressibility), 1e-4 moved the policy by a median approx-KL of only 9e-7, so the three
# alone could not find where the trust region ends (added before any final run).
SWEEP_LRS = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3]
SWEEP_SEEDS = [100]
# The rule, fixed before any final run: the largest swept lr whose median approx-KL over the
# run's epochs is ≤ 0.01 and whose final reward is above the base model's; if none rises, the
# smallest lr.
KL_LIMIT = 0.01

# The grids. `reduced` names a grid as such in every table it makes.
GRIDS = {
    "gpu": {
        "reduced": False,
        "seeds": [0, 1, 2, 3, 4],
        "sets": [],  # the config as written: 40 steps, 60 samples, 40 epochs, 512-sample evaluations
        "jobs": 16,
    },
    "cpu": {
        "reduced": True,
        "seeds": [0, 1],
        "sets": [
            "sampling.steps=20",
            "sampling.batch_size=15",
            "training.epochs=10",
            "evaluation.every=5",
            "evaluation.samples=128",
            "evaluation.final_samples=256",
        ],
        # One at a time: two runs side by side on 2 cores took over 10 min for 3 epochs each,
        # against about 2.5 min for a whole run alone.
        "jobs": 1,
        # Reduced: only DDPO and HRF are swept; the variants take their parent's lr (LR_FROM).
        "sweep_methods": ["ddpo", "hrf"],
        # Reduced: the equal-UNet-evaluations protocol only for HRF's methods (whose budget
        # per epoch differs most from DDPO's), on the first seed.
        "unet_methods": ["hrf", "hrf-no-f", "hrf-d"],
        "unet_seeds": [0],
    },
    # Seconds per run: for checking this script, never reported.
    "smoke": {
        "reduced": True,
        "seeds": [0],
        "sets": [
            "sampling.steps=10",
            "sampling.batch_size=5",
            "training.epochs=2",
            "evaluation.every=1",
            "evaluation.samples=16",
            "evaluation.final_samples=16",
            "evaluation.batch_size=16",
        ],
        "jobs": 2,
    },
}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Run:
    """One hrf run: where it trains, where its results are kept, and its command."""

    def __init__(self, grid, stage, task, method, seed, sets, tag=""):
        self.grid, self.stage, self.task, self.method, self.seed = grid, stage, task, method, seed
        self.rel = Path(grid) / stage / task / f"{method}{tag}-s{seed}"
        self.sets = GRIDS[grid]["sets"] + METHODS[method] + sets + [
            f"run.name={method}",
            f"run.seed={seed}",
        ]

    @property
    def work(self):
        return REPO / "runs" / "experiment" / "decisive" / self.rel

    @property
    def kept(self):
        return RESULTS / self.rel

    def done(self):
        return (self.kept / "summary.json").exists()

    def command(self):
        cmd = [HRF, "run", str(CONFIGS / f"{self.task}.yaml"), "--run-dir", str(self.work), "-q"]
        for s in self.sets:
            cmd += ["--set", s]
        return cmd

    def __str__(self):
        return str(self.rel)


KEEP = ["pipeline.yaml", "pipeline.resolved.yaml", "metrics.jsonl", "summary.json"]


def keep_results(run):
    """Copies what `hrf compare` reads into experiments/, with the final sample grid; the
    evaluation grids (for `hrf compare`'s samples at matched reward, which shows each method's
    first seed) only for the final runs' first seed, so that the results of a whole grid stay
    a few MiB (the device tool carries the tree in 64 MiB)."""
    for name in KEEP:
        (run.kept / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run.work / name, run.kept / name)
    grids = [run.work / "samples" / "final.png"]
    if run.stage != "sweep" and run.seed == GRIDS[run.grid]["seeds"][0]:
        grids += sorted((run.work / "samples").glob("eval-*.png"))
    for grid in grids:
        if grid.exists():
            (run.kept / "samples").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(grid, run.kept / "samples" / grid.name)


def execute(runs, jobs, minutes):
    """Runs the pending `runs`, `jobs` at a time; with `minutes`, starts none after the deadline
    minus a margin and stops those still running at the deadline (their folders are dropped)."""
    pending = [r for r in runs if not r.done()]
    deadline = time.time() + 60 * minutes if minutes else None
    running = []
    failed = []
    while pending or running:
        now = time.time()
        while pending and len(running) < jobs and (deadline is None or now < deadline - 60):
            run = pending.pop(0)
            shutil.rmtree(run.work, ignore_errors=True)
            run.work.parent.mkdir(parents=True, exist_ok=True)
            out = open(run.work.parent / f"{run.work.name}.log", "w")
            proc = subprocess.Popen(run.command(), stdout=out, stderr=subprocess.STDOUT)
            running.append((run, proc, out, now))
            log(f"start {run}")
        if deadline is not None and now >= deadline:
            for run, proc, out, _ in running:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                out.close()
                shutil.rmtree(run.work, ignore_errors=True)
                log(f"stopped at the deadline: {run}")
            running = []
            break
        if deadline is not None and not running and now >= deadline - 60:
            break
        time.sleep(2)
        for item in list(running):
            run, proc, out, started = item
            if proc.poll() is None:
                continue
            out.close()
            running.remove(item)
            if proc.returncode == 0:
                keep_results(run)
                log(f"done {run} in {time.time() - started:.0f} s")
            else:
                failed.append(run)
                log(f"FAILED {run} (exit {proc.returncode}): see {run.work.parent / (run.work.name + '.log')}")
    left = [r for r in runs if not r.done()]
    log(f"{len(runs) - len(left)} of {len(runs)} runs done, {len(left)} left, {len(failed)} failed")
    return not failed


def records(run_dir, kind):
    """The run's metrics.jsonl lines of `kind`: "epoch" lines as written, "eval" (the base
    model's and the training evaluations) and "final" as their reports."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    found = [j for j in map(json.loads, filter(None, lines)) if j.get("kind") == kind]
    return found if kind == "epoch" else [j["report"] for j in found]


def swept(grid):
    """The methods the grid sweeps; the others share an lr (SHARES_LR, LR_FROM)."""
    only = GRIDS[grid].get("sweep_methods")
    return [m for m in METHODS if m not in SHARES_LR and (only is None or m in only)]


def sweep_runs(grid):
    return [
        Run(grid, "sweep", task, method, seed, [f"training.optimizer.lr={lr:g}"], tag=f"-lr{lr:g}")
        for task in TASKS
        for method in swept(grid)
        for lr in SWEEP_LRS
        for seed in SWEEP_SEEDS
    ]


def sweep_lr(run):
    return float(next(s for s in run.sets if s.startswith("training.optimizer.lr=")).split("=")[1])


def choose(grid):
    """Applies the rule to the finished sweep: the lr per method, with the evidence."""
    rows, choices = [], {}
    for method in swept(grid):
        candidates = []
        for lr in SWEEP_LRS:
            kls, rises, evidence = [], [], []
            for run in sweep_runs(grid):
                if run.method != method or sweep_lr(run) != lr:
                    continue
                if not run.done():
                    sys.exit(f"{run}: the sweep is not finished")
                epochs = records(run.kept, "epoch")
                evals = records(run.kept, "eval")
                kl = statistics.median(e["approx_kl"] for e in epochs)
                clipfrac = statistics.median(e["clipfrac"] for e in epochs)
                # The final evaluation's reward against the base model's; Vendi of the last
                # training evaluation against the base's, on sets of one size.
                base, last = evals[0], evals[-1]
                final = records(run.kept, "final")[0]
                vendi = last["diversity"]["vendi"] / base["diversity"]["vendi"]
                kls.append(kl)
                rises.append(final["reward_mean"] > base["reward_mean"])
                evidence.append((run.task, kl, clipfrac, final["reward_mean"] - base["reward_mean"], vendi,
                                 statistics.median(e["grad_clipped_share"] for e in epochs)))
            ok = max(kls) <= KL_LIMIT and all(rises)
            candidates.append((lr, ok))
            for task, kl, clipfrac, gain, vendi, clipped in evidence:
                rows.append(f"| {method} | {lr:g} | {task} | {kl:.2e} | {clipfrac:.3f} | {clipped:.2f} | {gain:+.4f} | {vendi:.2f} |")
        good = [lr for lr, ok in candidates if ok]
        choices[method] = max(good) if good else min(SWEEP_LRS)
    for method in METHODS:
        if method not in choices:
            choices[method] = choices[SHARES_LR.get(method) or LR_FROM[method]]
    out = RESULTS / grid
    out.mkdir(parents=True, exist_ok=True)
    (out / "choices.json").write_text(json.dumps({"lr": choices, "rule": RULE}, indent=1) + "\n")
    table = ["| method | lr | task | median approx-KL | median clipfrac | grad-clipped share | final − base reward | Vendi ÷ base (last training evaluation) |",
             "|---|---|---|---|---|---|---|---|", *rows]
    (out / "sweep.md").write_text("\n".join(table) + "\n\nChosen: " +
                                  ", ".join(f"{m} {lr:g}" for m, lr in choices.items()) + "\n")
    print("\n".join(table))
    print("chosen:", choices)


RULE = (f"per method, the largest lr of {SWEEP_LRS} whose median approx-KL over the epochs is ≤ {KL_LIMIT} "
        "on every task and whose final reward is above the base model's on every task; if none, the smallest")


def chosen(grid):
    path = RESULTS / grid / "choices.json"
    if not path.exists():
        sys.exit(f"{path} missing: run `sweep` then `choose` first")
    return json.loads(path.read_text())["lr"]


def epochs_of(grid):
    sets = dict(s.split("=", 1) for s in GRIDS[grid]["sets"])
    if "training.epochs" in sets:
        return int(sets["training.epochs"])
    for line in (CONFIGS / "compressibility.yaml").read_text().splitlines():
        if line.strip().startswith("epochs:"):
            return int(line.split(":")[1].split("#")[0])
    raise SystemExit("no training.epochs in the experiment config")


def final_runs(grid, protocol):
    """Equal epochs and samples; or equal UNet evaluations (epochs × DDPO's evaluations per
    epoch ÷ the method's, measured on its equal-epochs seed-0 run)."""
    lrs, g = chosen(grid), GRIDS[grid]
    runs = []
    for task in TASKS:
        for method in METHODS:
            sets = [f"training.optimizer.lr={lrs[method]:g}"]
            seeds = g["seeds"]
            if protocol == "equal-unet-evals":
                if serves_both(grid, task, method):
                    continue  # its equal-epochs runs serve both protocols
                if method not in g.get("unet_methods", METHODS):
                    continue
                seeds = g.get("unet_seeds", seeds)
                sets.append(f"training.epochs={equal_eval_epochs(grid, task, method)}")
            runs += [Run(grid, protocol, task, method, seed, sets) for seed in seeds]
    return runs


def serves_both(grid, task, method):
    """DDPO, and a method whose equal-UNet-evaluation budget is the equal-epochs one (DDPO with
    group advantages spends what DDPO spends): their equal-epochs runs serve both protocols."""
    return method == "ddpo" or equal_eval_epochs(grid, task, method) == epochs_of(grid)


def unet_evals_per_epoch(run_dir):
    e = records(run_dir, "epoch")
    return sum(x["unet_evals"] for x in e) / len(e)


def equal_eval_epochs(grid, task, method):
    ddpo = Run(grid, "equal-epochs", task, "ddpo", GRIDS[grid]["seeds"][0], [])
    mine = Run(grid, "equal-epochs", task, method, GRIDS[grid]["seeds"][0], [])
    for r in (ddpo, mine):
        if not r.done():
            return None
    return max(1, round(epochs_of(grid) * unet_evals_per_epoch(ddpo.kept) / unet_evals_per_epoch(mine.kept)))


def plan(grid):
    sweep = sweep_runs(grid)
    print(f"grid {grid}{' (reduced)' if GRIDS[grid]['reduced'] else ''}: "
          f"{len(sweep)} sweep runs ({sum(r.done() for r in sweep)} done)")
    if (RESULTS / grid / "choices.json").exists():
        for protocol in ["equal-epochs", "equal-unet-evals"]:
            runs = [r for r in final_runs(grid, protocol)]
            print(f"  {protocol}: {len(runs)} runs ({sum(r.done() for r in runs)} done)")
    else:
        print("  final runs: after `choose`")
    print(f"  rule: {RULE}")


def report(grid):
    out = RESULTS / grid
    lines = [f"# Decisive experiment, {grid} grid{' (REDUCED: fewer epochs, seeds and evaluation samples)' if GRIDS[grid]['reduced'] else ''}", ""]
    for protocol in ["equal-epochs", "equal-unet-evals"]:
        for task in TASKS:
            runs = [r for r in final_runs(grid, protocol) if r.task == task and r.done()]
            if protocol == "equal-unet-evals":
                runs += [r for r in final_runs(grid, "equal-epochs")
                         if r.task == task and r.done() and serves_both(grid, task, r.method)]
            if not runs:
                continue
            cmp_dir = out / "comparisons" / protocol / task
            # Paths relative to the repository, so that the committed Markdown names them so.
            rel = [str(r.kept.relative_to(REPO)) for r in runs]
            cmd = [HRF, "compare", *rel, "-o", str(cmp_dir.relative_to(REPO)), "--reference", "ddpo"]
            log(" ".join(cmd[1:3]) + f" … → {cmp_dir}")
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=REPO)
            lines += [f"## {task}, {protocol}", "", (cmp_dir / "comparison.md").read_text(), ""]
    (out / "RESULTS.md").write_text("\n".join(lines))
    log(f"wrote {out / 'RESULTS.md'}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["plan", "sweep", "choose", "run", "report"])
    ap.add_argument("--grid", choices=sorted(GRIDS), required=True)
    ap.add_argument("--jobs", type=int, help="runs at once (default: the grid's)")
    ap.add_argument("--minutes", type=float, help="stop starting runs, and stop running ones, after this long")
    ap.add_argument("--methods", help="comma-separated subset of the methods (for checking the script)")
    args = ap.parse_args()
    if args.methods:
        keep = args.methods.split(",")
        unknown = [m for m in keep if m not in METHODS]
        if unknown:
            sys.exit(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
        for m in list(METHODS):
            if m not in keep:
                del METHODS[m]
        for m in list(SHARES_LR):
            if m not in keep:
                del SHARES_LR[m]
    jobs = args.jobs or GRIDS[args.grid]["jobs"]
    if args.step == "plan":
        plan(args.grid)
    elif args.step == "sweep":
        sys.exit(0 if execute(sweep_runs(args.grid), jobs, args.minutes) else 1)
    elif args.step == "choose":
        choose(args.grid)
    elif args.step == "run":
        t0 = time.time()
        ok = execute(final_runs(args.grid, "equal-epochs"), jobs, args.minutes)
        left = None if args.minutes is None else args.minutes - (time.time() - t0) / 60
        if ok and (left is None or left > 2):
            runs = [r for r in final_runs(args.grid, "equal-unet-evals") if "training.epochs=None" not in r.sets]
            if len(runs) < len(final_runs(args.grid, "equal-unet-evals")):
                log("equal-unet-evals: some methods wait for their equal-epochs seed-0 run")
            ok = execute(runs, jobs, left)
        sys.exit(0 if ok else 1)
    elif args.step == "report":
        report(args.grid)


if __name__ == "__main__":
    main()
