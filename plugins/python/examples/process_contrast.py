"""Example `process` reward: the contrast of plugins/python/examples/contrast, served by a
long-lived CPython process (where torch, numpy or a VLM client could be imported as well).

    rewards:
      - kind: process
        command: [python3, plugins/python/examples/process_contrast.py]
        trust: native          # and `hrf run --allow-native`
        timeout_s: 30
"""

import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(here), os.path.join(here, "contrast")]

import hrf_process  # noqa: E402
from contrast import contrast  # noqa: E402


def score(samples, config):
    scale = float(config.get("scale", 1.0))
    return [scale * contrast(s.data) for s in samples]


hrf_process.serve(score, name="contrast-process", version="0.1.0")
