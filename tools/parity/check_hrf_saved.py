"""Checks folders written by hrf with Python diffusers: each `DIR/<name>/` must load as a
UNet2DModel with no missing, unexpected or mismatched keys, and reproduce the outputs hrf stored in
its io.safetensors within 1e-4. Run by hrf-diffusion's parity test."""

import os
import sys

import torch
from diffusers import DDIMScheduler, UNet2DModel
from safetensors.torch import load_file

TOL = 1e-4


def main(root: str) -> int:
    failures = 0
    names = sorted(n for n in os.listdir(root) if os.path.isfile(os.path.join(root, n, "config.json")))
    if not names:
        print(f"no model folders under {root}")
        return 1
    for name in names:
        folder = os.path.join(root, name)
        unet, info = UNet2DModel.from_pretrained(folder, output_loading_info=True)
        DDIMScheduler.from_pretrained(folder)  # the scheduler_config.json hrf wrote
        problems = {k: v for k, v in info.items() if v}
        io = load_file(os.path.join(folder, "io.safetensors"))
        with torch.no_grad():
            out = unet.eval()(io["sample"], io["timesteps"], class_labels=io.get("class_labels")).sample
        err = (out - io["output"]).abs().max().item()
        ok = not problems and err <= TOL
        failures += not ok
        print(f"{name}: loading problems {problems or 'none'}, max abs error {err:.2e} {'ok' if ok else 'FAIL'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
