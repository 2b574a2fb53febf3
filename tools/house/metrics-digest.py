#!/usr/bin/env python3
"""Digest of a run's metrics.jsonl with the timing fields (…_s) removed, and of its final
weights: two runs of one pipeline with one seed must print the same two lines.

    tools/house/metrics-digest.py RUN_DIR
"""
import hashlib
import json
import sys
from pathlib import Path


def without_timings(x):
    if isinstance(x, dict):
        return {k: without_timings(v) for k, v in x.items() if not k.endswith("_s")}
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
