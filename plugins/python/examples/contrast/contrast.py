"""The reward itself, plain Python (no hrf imports): an image's contrast, the population standard
deviation of its bytes divided by 255. CPython runs this module directly to check the plugin."""

import math


def contrast(data: bytes) -> float:
    n = len(data)
    if n == 0:
        return 0.0
    mean = sum(data) / n
    return math.sqrt(sum((b - mean) ** 2 for b in data) / n) / 255.0
