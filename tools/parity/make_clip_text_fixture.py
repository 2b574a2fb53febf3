#!/usr/bin/env python3
"""Tiny random CLIP text encoders and their outputs, for hrf's CLIPTextModel parity test: two
transformers CLIPTextModels (hidden 32, 3 layers, 4 heads, a 1,000-token vocabulary, 77
positions; one with quick_gelu as SD 1.x's OpenAI CLIP, one with gelu as SD 2.x's OpenCLIP),
random weights from a fixed seed, saved with save_pretrained, and last_hidden_state for a few id
sequences (padded to 77 as pipelines pass them). Writes host/hrf-diffusion/tests/fixtures/clip-text/.

    .deps/pyref/bin/python -m pip install transformers==5.23.0
    .deps/pyref/bin/python tools/parity/make_clip_text_fixture.py
"""

import json
import os

import torch
import transformers
from transformers import CLIPTextConfig, CLIPTextModel

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
OUT = os.path.join(ROOT, "host", "hrf-diffusion", "tests", "fixtures", "clip-text")


def main():
    ids = [
        [998, 1, 2, 3, 999] + [999] * 72,
        [998] + list(range(10, 85)) + [999],
        [998, 999] + [0] * 75,
    ]
    report = {"transformers": transformers.__version__, "torch": torch.__version__, "ids": ids, "models": {}}
    for i, act in enumerate(["quick_gelu", "gelu"]):
        torch.manual_seed(100 + i)
        cfg = CLIPTextConfig(
            vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=3,
            num_attention_heads=4, max_position_embeddings=77, hidden_act=act,
            bos_token_id=998, eos_token_id=999, pad_token_id=999,
        )
        model = CLIPTextModel(cfg).eval()
        # Random weights with some spread (the defaults draw tiny ones).
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.3)
        folder = os.path.join(OUT, act)
        model.save_pretrained(folder)
        with torch.no_grad():
            h = model(torch.tensor(ids)).last_hidden_state
        report["models"][act] = {"last_hidden_state": h.tolist()}
    with open(os.path.join(OUT, "outputs.json"), "w") as f:
        json.dump(report, f)
    print(OUT, {k: os.listdir(os.path.join(OUT, k)) for k in report["models"]})


if __name__ == "__main__":
    main()
