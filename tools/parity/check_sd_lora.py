"""Checks a LoRA trained by `hrf run` on a Stable Diffusion pipeline with Python diffusers + peft:

1. `pipe.load_lora_weights(LORA_DIR)` reads hrf's `pytorch_lora_weights.safetensors` with no
   unexpected or missing keys (diffusers' own warnings are captured and fail the check; the
   adapter peft builds must hold exactly the file's tensors, with the file's values), and with the
   file's rank / alpha;
2. the adapted pipeline, from the initial latents hrf sampled from (`hrf sample --tensors`), makes
   the images hrf made, within 1e-4 (max abs, [0, 1] scale);
3. `hrf export --merge`'s folder loads with `StableDiffusionPipeline.from_pretrained` (no missing
   or unexpected key) and makes the same images, within 1e-4.

Usage: check_sd_lora.py BASE_DIR LORA_DIR MERGED_DIR TENSORS PROMPT GUIDANCE STEPS
Run by tests/text_to_image.rs; prints one line per check and exits 1 on any failure.
"""

import logging
import sys

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file

TOL = 1e-4


class Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def pipeline(folder):
    # fp32 throughout (the tiny pipeline keeps its text encoder in fp16 on disk).
    pipe = StableDiffusionPipeline.from_pretrained(
        folder, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False
    )
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def images(pipe, latents, prompt, guidance, steps):
    with torch.no_grad():
        return pipe(
            prompt=[prompt] * latents.shape[0], latents=latents.clone(), num_inference_steps=steps,
            guidance_scale=guidance, eta=0.0, output_type="pt",
        ).images


def main(base, lora_dir, merged_dir, tensors, prompt, guidance, steps):
    guidance, steps = float(guidance), int(steps)
    io = load_file(tensors)
    latents, want = io["latents"], io["images"]
    failures = 0

    def report(name, ok, detail):
        nonlocal failures
        failures += not ok
        print(f"{name}: {detail} {'ok' if ok else 'FAIL'}")

    warnings = Warnings()
    for name in ["diffusers", "peft"]:
        logging.getLogger(name).addHandler(warnings)

    pipe = pipeline(base)
    lora_file = f"{lora_dir}/pytorch_lora_weights.safetensors"
    pipe.load_lora_weights(lora_dir, adapter_name="hrf")
    file = load_file(lora_file)
    with safe_open(lora_file, "pt") as f:
        meta = f.metadata() or {}
    loaded = get_peft_model_state_dict(pipe.unet, adapter_name="hrf")
    keys = {k.removeprefix("unet.") for k in file}
    extra, missing = sorted(keys - set(loaded)), sorted(set(loaded) - keys)
    diff = max((file["unet." + k] - loaded[k].float()).abs().max().item() for k in keys & set(loaded))
    problems = [w for w in warnings.lines if "unexpected keys" in w.lower() or "missing keys" in w.lower()]
    config = pipe.unet.peft_config["hrf"]
    report(
        "load_lora_weights",
        not extra and not missing and not problems and diff == 0.0 and "lora_adapter_metadata" in meta,
        f"{len(keys)} tensors, rank {config.r}, alpha {config.lora_alpha}, "
        f"not loaded {extra or 'none'}, not in file {missing or 'none'}, warnings {problems or 'none'}, "
        f"value difference {diff:.1e},",
    )
    got = images(pipe, latents, prompt, guidance, steps)
    err = (got - want).abs().max().item()
    report("LoRA pipeline image", err <= TOL, f"max abs error against hrf {err:.2e}")

    merged = pipeline(merged_dir)
    _, info = type(merged.unet).from_pretrained(f"{merged_dir}/unet", output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    report("merged from_pretrained", not problems, f"UNet loading problems {problems or 'none'}")
    err = (images(merged, latents, prompt, guidance, steps) - want).abs().max().item()
    report("merged pipeline image", err <= TOL, f"max abs error against hrf {err:.2e}")
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) != 8:
        print(__doc__)
        sys.exit(2)
    sys.exit(main(*sys.argv[1:]))
