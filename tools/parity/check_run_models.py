"""Checks that model folders written by `hrf run` (a run's best/ and final/) load in Python
diffusers: UNet2DModel with no missing, unexpected or mismatched keys and every weight equal to the
stored one, DDIMScheduler from the stored scheduler_config.json, and a short DDIM chain that gives
finite images. Run by tests/run.rs."""

import sys

import torch
from diffusers import DDIMScheduler, UNet2DModel
from safetensors.torch import load_file


def check(folder: str) -> bool:
    unet, info = UNet2DModel.from_pretrained(folder, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    stored = load_file(f"{folder}/diffusion_pytorch_model.safetensors")
    loaded = unet.state_dict()
    differing = [k for k, v in stored.items() if k not in loaded or not torch.equal(loaded[k], v)]
    scheduler = DDIMScheduler.from_pretrained(folder)
    scheduler.set_timesteps(5)
    size = unet.config.sample_size
    x = torch.randn(2, unet.config.in_channels, size, size, generator=torch.Generator().manual_seed(0))
    labels = None
    if unet.config.num_class_embeds:
        labels = torch.tensor([0, unet.config.num_class_embeds - 1])
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = unet.eval()(x, t, class_labels=labels).sample
            x = scheduler.step(eps, t, x, eta=0.0).prev_sample
    finite = bool(torch.isfinite(x).all())
    ok = not problems and not differing and finite
    print(
        f"{folder}: loading problems {problems or 'none'}, weights differing {len(differing)}, "
        f"DDIM chain finite {finite} {'ok' if ok else 'FAIL'}"
    )
    return ok


if __name__ == "__main__":
    results = [check(f) for f in sys.argv[1:]]
    sys.exit(0 if results and all(results) else 1)
