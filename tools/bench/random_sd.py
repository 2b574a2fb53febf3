#!/usr/bin/env python3
"""Writes a Stable Diffusion pipeline folder with random weights in one of hrf's named
architectures (host/hrf-diffusion/named/NAME/{unet,vae,text_encoder}.json, each citing the
published config.json it mirrors), in the hub's layout (model_index.json, unet/, vae/,
text_encoder/, tokenizer/, scheduler/), for the text-to-image benchmark: hrf (`model.weights:
FOLDER`) and tools/bench/sd_reference.py load the same folder. Weights are stored in fp16 (the
benchmark's frozen weights are bf16 on both sides); the tokenizer is CLIP's BPE vocabulary from
TOKENIZER_DIR (vocab.json + merges.txt, e.g. models/sd-tiny/tokenizer, which set-up writes); the
scheduler is SD 1.x's PNDM config (scaled-linear betas 0.00085 to 0.012), which both sides read
as DDIM.

    python3 tools/bench/random_sd.py sd-1.5 OUT_DIR models/sd-tiny/tokenizer
"""

import json
import os
import shutil
import sys

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

NAMED = os.path.join(os.path.dirname(__file__), "..", "..", "host", "hrf-diffusion", "named")

SCHEDULER = {
    "_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "timestep_spacing": "leading", "trained_betas": None,
}

INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "feature_extractor": [None, None], "image_encoder": [None, None],
    "requires_safety_checker": False, "safety_checker": [None, None],
    "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def config(name, part):
    with open(os.path.join(NAMED, name, f"{part}.json")) as f:
        return {k: v for k, v in json.load(f).items() if not k.startswith("_")}


def main(name, out, tokenizer_dir):
    torch.manual_seed(0)
    os.makedirs(out, exist_ok=True)
    parts = {
        "unet": UNet2DConditionModel(**config(name, "unet")),
        "vae": AutoencoderKL(**config(name, "vae")),
        "text_encoder": CLIPTextModel(CLIPTextConfig(**config(name, "text_encoder"))),
    }
    for part, model in parts.items():
        model.half().save_pretrained(os.path.join(out, part), safe_serialization=True)
        n = sum(p.numel() for p in model.parameters())
        print(f"{name} {part}: {n:,} parameters")
    tok = os.path.join(out, "tokenizer")
    os.makedirs(tok, exist_ok=True)
    for f in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        if os.path.exists(os.path.join(tokenizer_dir, f)):
            shutil.copy(os.path.join(tokenizer_dir, f), tok)
    os.makedirs(os.path.join(out, "scheduler"), exist_ok=True)
    with open(os.path.join(out, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(SCHEDULER, f, indent=2)
    with open(os.path.join(out, "model_index.json"), "w") as f:
        json.dump(INDEX, f, indent=2)
    print(f"→ {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
