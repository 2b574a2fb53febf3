"""Reference advantages for hrf-train, computed the way ddpo-pytorch computes them (numpy):
its per-prompt stat tracker (deque of the last `buffer_size` rewards per prompt, appended before
standardising, whole-batch statistics while a prompt has fewer than `min_count`), and plain
whole-epoch standardisation.

    .deps/pyref/bin/python tools/parity/make_ddpo_fixtures.py
"""

import json
import os
from collections import deque

import numpy as np

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "host", "hrf-train", "tests", "fixtures")


class Tracker:
    def __init__(self, buffer_size, min_count):
        self.buffer_size, self.min_count, self.stats = buffer_size, min_count, {}

    def update(self, prompts, rewards):
        prompts, rewards = np.array(prompts), np.array(rewards, dtype=np.float64)
        advantages = np.empty_like(rewards)
        for prompt in np.unique(prompts):
            r = rewards[prompts == prompt]
            buf = self.stats.setdefault(prompt, deque(maxlen=self.buffer_size))
            buf.extend(r)
            if len(buf) < self.min_count:
                mean, std = np.mean(rewards), np.std(rewards) + 1e-6
            else:
                mean, std = np.mean(buf), np.std(buf) + 1e-6
            advantages[prompts == prompt] = (r - mean) / std
        return advantages


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(0)
    classes = ["a photo of a sneaker", "a photo of a bag", "a photo of a coat", "a photo of a shirt"]
    tracker = Tracker(buffer_size=6, min_count=4)
    epochs = []
    for _ in range(4):
        prompts = [classes[i] for i in rng.integers(0, 4, size=10)]
        rewards = (rng.normal(size=10) * 3 + 1).round(4)
        epochs.append({
            "prompts": prompts,
            "rewards": rewards.tolist(),
            "per_prompt": tracker.update(prompts, rewards).tolist(),
            "epoch": ((rewards - rewards.mean()) / (rewards.std() + 1e-8)).tolist(),
        })
    with open(os.path.join(OUT, "advantages.json"), "w") as f:
        json.dump({"buffer_size": 6, "min_count": 4, "epochs": epochs}, f, indent=1)
    print("wrote", len(epochs), "epochs")


if __name__ == "__main__":
    main()
