#!/usr/bin/env python3
"""Tiny random UNet2DConditionModels and their outputs, for hrf's parity test: diffusers'
UNet2DConditionModel with a cross-attention and a plain level (block_out_channels [16, 32],
one resnet per level, cross_attention_dim 16), once as SD 1.x builds it (attention_head_dim 4
read as heads, conv projections) and once as SD 2.x (per-level heads [2, 4], linear
projections); random weights from a fixed seed, saved with save_pretrained, and the noise
prediction for fixed latents [2, 4, 8, 8], timesteps [10, 700] and text states [2, 7, 16].
Writes host/hrf-diffusion/tests/fixtures/unet-cond/.

    .deps/pyref/bin/python tools/parity/make_unet_cond_fixture.py
"""

import json
import os

import diffusers
import torch
from diffusers import UNet2DConditionModel

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "host", "hrf-diffusion", "tests", "fixtures", "unet-cond")


def main():
    common = dict(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=[16, 32], down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], cross_attention_dim=16, norm_num_groups=8,
    )
    variants = {
        "sd1": dict(attention_head_dim=4),
        "sd2": dict(attention_head_dim=[2, 4], use_linear_projection=True),
    }
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([10, 700])
    ctx = torch.randn(2, 7, 16, generator=g)
    report = {"diffusers": diffusers.__version__, "torch": torch.__version__,
              "x": x.tolist(), "t": t.tolist(), "context": ctx.tolist(), "outputs": {}}
    for i, (name, extra) in enumerate(variants.items()):
        torch.manual_seed(11 + i)
        unet = UNet2DConditionModel(**common, **extra).eval()
        with torch.no_grad():
            for p in unet.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        unet.save_pretrained(os.path.join(OUT, name))
        with torch.no_grad():
            report["outputs"][name] = unet(x, t, encoder_hidden_states=ctx).sample.tolist()
    with open(os.path.join(OUT, "outputs.json"), "w") as f:
        json.dump(report, f)
    print(OUT, sorted(os.listdir(OUT)))


if __name__ == "__main__":
    main()
