#!/usr/bin/env python3
"""How far diffusers' own bfloat16 UNet and CLIP text encoder move a guided noise prediction from
fp32 on the tiny pipeline: the scale against which host/hrf-train/tests/sd_tiny.rs judges hrf's
`model.dtype: bf16` (README "Precision").

    .deps/pyref/bin/python tools/parity/check_bf16_drift.py [models/sd-tiny]
"""

import sys

import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextModel


def guided(unet, text_encoder, x, t, ids, kind, guidance=3.0):
    states = text_encoder(ids).last_hidden_state
    eps = unet(torch.cat([x, x]).to(kind), t, states).sample.float()
    n = x.shape[0]
    return eps[:n] + guidance * (eps[n:] - eps[:n])


def main(folder="models/sd-tiny"):
    unet = UNet2DConditionModel.from_pretrained(f"{folder}/unet", torch_dtype=torch.float32)
    text_encoder = CLIPTextModel.from_pretrained(f"{folder}/text_encoder", torch_dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 4, 16, 16, generator=g)
    # Rows 0..3 the unconditional branch, 4..7 the prompts (random token ids).
    ids = torch.randint(0, 1000, (8, 77), generator=g)
    t = torch.full((8,), 501)
    with torch.no_grad():
        fp32 = guided(unet, text_encoder, x, t, ids, torch.float32)
        bf16 = guided(unet.to(torch.bfloat16), text_encoder.to(torch.bfloat16), x, t, ids, torch.bfloat16)
    rel = ((bf16 - fp32).abs().max() / fp32.abs().max()).item()
    print(f"diffusers bf16 vs fp32, guided noise prediction (guidance 3): {rel:.1e} of its largest value")


if __name__ == "__main__":
    main(*sys.argv[1:])
