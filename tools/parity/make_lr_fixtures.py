"""Reference learning-rate schedules for hrf-config's `OptimizerSettings::lr_at`, from torch's own
schedulers: a linear warm-up (`LinearLR(start_factor, 1.0, total_iters=W)`) followed, for
`cosine`, by `CosineAnnealingLR(T_max=epochs - W, eta_min=min_lr)` through `SequentialLR`
(milestone W). The rate of epoch e is the optimiser's lr after e scheduler steps.

    .deps/pyref/bin/python tools/parity/make_lr_fixtures.py
"""

import json
import os
import warnings

import torch

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "host", "hrf-config", "tests", "fixtures")

CASES = [
    {"schedule": "cosine", "lr": 1e-4, "epochs": 10, "warmup_epochs": 0, "warmup_start_factor": 0.1, "min_lr": 0.0},
    {"schedule": "cosine", "lr": 6e-7, "epochs": 30, "warmup_epochs": 3, "warmup_start_factor": 0.15, "min_lr": 9e-9},
    {"schedule": "cosine", "lr": 3e-5, "epochs": 7, "warmup_epochs": 1, "warmup_start_factor": 1 / 3, "min_lr": 3e-6},
    {"schedule": "constant", "lr": 5e-6, "epochs": 8, "warmup_epochs": 2, "warmup_start_factor": 0.1, "min_lr": None},
    {"schedule": "constant", "lr": 1e-4, "epochs": 5, "warmup_epochs": 0, "warmup_start_factor": 0.1, "min_lr": None},
]


def rates(case):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=case["lr"])
    w, epochs = case["warmup_epochs"], case["epochs"]
    parts = []
    if w > 0:
        parts.append(torch.optim.lr_scheduler.LinearLR(opt, start_factor=case["warmup_start_factor"], end_factor=1.0, total_iters=w))
    if case["schedule"] == "cosine":
        parts.append(torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs - w, eta_min=case["min_lr"]))
    if not parts:
        sched = None
    elif len(parts) == 1:
        sched = parts[0]
    else:
        sched = torch.optim.lr_scheduler.SequentialLR(opt, parts, milestones=[w])
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if sched is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sched.step()
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    cases = [dict(case, rates=rates(case)) for case in CASES]
    with open(os.path.join(OUT, "lr_schedules.json"), "w") as f:
        json.dump({"torch": torch.__version__, "cases": cases}, f, indent=1)
    for c in cases:
        print(c["schedule"], c["warmup_epochs"], [f"{r:.3g}" for r in c["rates"]])


if __name__ == "__main__":
    main()
