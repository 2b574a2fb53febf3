#!/usr/bin/env python3
"""A tiny random AutoencoderKL and its decodings, for hrf's VAE decoder parity test: diffusers'
AutoencoderKL (two levels, block_out_channels [8, 16], one resnet per level, 4 latent channels,
norm_num_groups 4) with random weights from a fixed seed, saved with save_pretrained, and
`decode(z / scaling_factor).sample` for fixed latents z [2, 4, 8, 8] → images [2, 3, 16, 16], as
StableDiffusionPipeline decodes. Writes host/hrf-diffusion/tests/fixtures/vae/.

    .deps/pyref/bin/python tools/parity/make_vae_fixture.py
"""

import json
import os

import diffusers
import torch
from diffusers import AutoencoderKL

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "host", "hrf-diffusion", "tests", "fixtures", "vae")


def main():
    torch.manual_seed(7)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        block_out_channels=[8, 16], layers_per_block=1, latent_channels=4, norm_num_groups=4,
        sample_size=16,
    ).eval()
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    vae.save_pretrained(OUT)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        x = vae.decode(z / vae.config.scaling_factor).sample
    with open(os.path.join(OUT, "decoded.json"), "w") as f:
        json.dump({"diffusers": diffusers.__version__, "torch": torch.__version__,
                   "scaling_factor": vae.config.scaling_factor, "latents": z.tolist(), "images": x.tolist()}, f)
    print(OUT, sorted(os.listdir(OUT)), tuple(x.shape))


if __name__ == "__main__":
    main()
