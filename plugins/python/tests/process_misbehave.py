"""Test fixture for the `process` kind: misbehaves on batches whose first sample's metadata has
"misbehave": true, as config.mode says: `hang` (never answers), `exit` (dies), `raise`
(an exception: an error reply), `nan`. Otherwise scores the mean byte / 255."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import hrf_process  # noqa: E402


def score(samples, config):
    flagged = bool(samples) and (samples[0].metadata or {}).get("misbehave") is True
    mode = config.get("mode", "ok") if flagged else "ok"
    if mode == "hang":
        time.sleep(3600)
    if mode == "exit":
        os._exit(3)
    if mode == "raise":
        raise RuntimeError("asked to fail")
    if mode == "nan":
        return [float("nan")] * len(samples)
    print("scoring", len(samples), "samples")  # goes to stderr, not the protocol
    return [sum(s.data) / len(s.data) / 255.0 for s in samples]


hrf_process.serve(score, name="process-misbehave", version="0.1.0")
