#!/usr/bin/env python3
"""Parameter counts of the named Stable Diffusion configs (host/hrf-diffusion/named/), as diffusers
and transformers build them: the UNet2DConditionModel, the CLIPTextModel, and the AutoencoderKL's
decoder part (post_quant_conv + decoder, what hrf builds) and whole. Built on torch's meta
device (shapes only). Writes host/hrf-diffusion/tests/fixtures/named_counts.json.

    .deps/pyref/bin/python tools/parity/make_named_counts.py
"""

import json
import os

import diffusers
import torch
import transformers
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
NAMED = os.path.join(ROOT, "host", "hrf-diffusion", "named")


def config(name, part):
    with open(os.path.join(NAMED, name, f"{part}.json")) as f:
        return {k: v for k, v in json.load(f).items() if not k.startswith("_") and k not in ("architectures", "model_type")}


def count(params):
    return sum(p.numel() for p in params)


def main():
    out = {"diffusers": diffusers.__version__, "transformers": transformers.__version__, "counts": {}}
    for name in sorted(os.listdir(NAMED)):
        with torch.device("meta"):
            unet = UNet2DConditionModel(**config(name, "unet"))
            vae = AutoencoderKL(**config(name, "vae"))
            text = CLIPTextModel(CLIPTextConfig(**config(name, "text_encoder")))
        decoder = [p for n, p in vae.named_parameters() if n.startswith(("decoder.", "post_quant_conv."))]
        out["counts"][name] = {
            "unet": count(unet.parameters()),
            "text_encoder": count(text.parameters()),
            "vae_decoder": count(decoder),
            "vae": count(vae.parameters()),
        }
    path = os.path.join(ROOT, "host", "hrf-diffusion", "tests", "fixtures", "named_counts.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out["counts"], indent=1))


if __name__ == "__main__":
    main()
