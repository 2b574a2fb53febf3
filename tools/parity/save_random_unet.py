#!/usr/bin/env python3
"""Saves a randomly initialised UNet2DConditionModel of a named Stable Diffusion config
(host/hrf-diffusion/named/NAME/unet.json) with diffusers' `save_pretrained`, in fp16 as the hub's
`variant="fp16"` files are (`diffusion_pytorch_model.fp16.safetensors`): what a user's SD folder
holds, for the key-set test in host/hrf-diffusion/tests/named_configs.rs (ignored by default:
1.7 GB written, about a minute on 2 cores).

    .deps/pyref/bin/python tools/parity/save_random_unet.py sd-1.5 /tmp/sd-1.5-unet
"""

import json
import os
import sys

import torch
from diffusers import UNet2DConditionModel

NAMED = os.path.join(os.path.dirname(__file__), "..", "..", "host", "hrf-diffusion", "named")


def main(name, out):
    with open(os.path.join(NAMED, name, "unet.json")) as f:
        config = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**config).half()
    unet.save_pretrained(out, variant="fp16", safe_serialization=True)
    keys = sorted(unet.state_dict())
    with open(os.path.join(out, "keys.json"), "w") as f:
        json.dump({"parameters": sum(p.numel() for p in unet.parameters()), "keys": keys}, f)
    print(f"{name}: {len(keys)} tensors → {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
