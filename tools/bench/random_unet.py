#!/usr/bin/env python3
"""Writes a diffusers UNet2DModel folder with random weights in the architecture of
google/ddpm-celebahq-256 (the model the HRF paper fine-tunes: 6 levels of 128-128-256-256-512-512
channels, attention at 16×16, 256×256 RGB; the values below are its config.json's), with a
DDIM scheduler_config.json of its DDPM schedule (linear betas 1e-4 to 0.02 over 1000 steps,
clip_sample). hrf (`model.weights: FOLDER`) and tools/bench/ddpo_reference.py both load it, so
the benchmark's two sides run the same network.

    python3 tools/bench/random_unet.py OUT_DIR
"""

import json
import os
import sys

import torch
from diffusers import UNet2DModel

CELEBAHQ_256 = dict(
    sample_size=256, in_channels=3, out_channels=3,
    block_out_channels=(128, 128, 256, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
    attention_head_dim=None, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
    norm_eps=1e-6, norm_num_groups=32, act_fn="silu", center_input_sample=False,
    time_embedding_type="positional", mid_block_scale_factor=1,
)

SCHEDULER = {
    "_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear",
    "beta_start": 0.0001, "beta_end": 0.02, "clip_sample": True, "clip_sample_range": 1.0,
    "prediction_type": "epsilon", "set_alpha_to_one": True, "steps_offset": 0,
    "timestep_spacing": "leading",
}


def main(out):
    torch.manual_seed(0)
    unet = UNet2DModel(**CELEBAHQ_256)
    unet.save_pretrained(out, safe_serialization=True)
    with open(os.path.join(out, "scheduler_config.json"), "w") as f:
        json.dump(SCHEDULER, f, indent=2)
    n = sum(p.numel() for p in unet.parameters())
    print(f"ddpm-celebahq-256 architecture, random weights: {n:,} parameters → {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
