#!/usr/bin/env python3
"""Digest of a run's metrics.jsonl with the timing fields (…_s) removed, and of its final
weights: two runs of one pipeline with one seed must print the same two lines.

    tools/house/metrics-digest.py RUN_DIR [--drop FIELD,FIELD...]

--drop leaves further fields out (e.g. fields a newer version adds to every record), so that a
run of the newer binary can be compared with a digest of the older one.
"""
import hashlib
import json
import sys
from pathlib import Path


DROP = set()
if "--drop" in sys.argv:
    DROP = set(sys.argv[sys.argv.index("--drop") + 1].split(","))


def without_timings(x):
    if isinstance(x, dict):
        return {k: without_timings(v) for k, v in x.items() if not k.endswith("_s") and k not in DROP}
    if isinstance(x, list):
        return [without_timings(v) for v in x]
    return x


run = Path(sys.argv[1])
h = hashlib.sha256()
for line in (run / "metrics.jsonl").read_text().splitlines():
    h.update(json.dumps(without_timings(json.loads(line)), sort_keys=True).encode() + b"\n")
print(f"metrics.jsonl (timings aside) sha256 {h.hexdigest()}")
weights = run / "final" / "diffusion_pytorch_model.safetensors"
print(f"final weights sha256 {hashlib.sha256(weights.read_bytes()).hexdigest()}")
