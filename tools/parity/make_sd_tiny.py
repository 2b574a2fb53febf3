#!/usr/bin/env python3
"""A tiny random Stable Diffusion 1.x pipeline and its reference outputs, for hrf's text-to-image
parity tests and the configs/sd-tiny-*.yaml runs.

The pipeline (models/sd-tiny, saved with StableDiffusionPipeline.save_pretrained) has SD 1.x's
architecture at toy size: a UNet2DConditionModel with two levels (block_out_channels [32, 64],
CrossAttnDownBlock2D + DownBlock2D, cross_attention_dim 32, 16×16 latents), a two-level
AutoencoderKL (4 latent channels, 32×32 RGB images), a 3-layer CLIPTextModel (hidden 32,
quick_gelu, the real 49,408-token vocabulary; weights stored in fp16 to keep the folder small),
the real CLIP BPE tokenizer (vocab.json + merges.txt from tools/parity/clip_vocab.py, padding with
<|endoftext|> as SD 1.x does) and SD 1.x's PNDM scheduler config. Weights are random from fixed
seeds, each rounded to fp16 so the fp16 text encoder and any fp16 export read the same numbers.

The references (host/hrf-diffusion/tests/fixtures/sd-tiny/outputs.json), all fp32 on CPU:
- token ids and last_hidden_state of the text encoder for the prompts below;
- the UNet's noise prediction at two timesteps, conditional and with classifier-free guidance
  (weight 7.5, the empty prompt as the unconditional branch);
- the VAE decode of fixed latents (pipeline post-processing: /scaling_factor, then [0, 1]);
- whole 10-step DDIM samples (DDIMScheduler.from_config of the pipeline's scheduler, as
  ddpo-pytorch builds it, eta 0) from fixed initial latents, final latents and images
  (output_type "np"): in fp32 with guidance 1 (none), guidance 1.5 with the empty negative prompt
  (the pipeline's default) and guidance 1.5 with a negative prompt; in fp64 with guidance 7.5 and
  the negative prompt. The random tiny model amplifies rounding under strong guidance: diffusers'
  own fp32 sample is 1.3e-3 from its fp64 one at guidance 7.5 (3.5e-5 at 1.5; recorded as
  diffusers_fp32_vs_fp64), so a 1e-4 fp32 comparison is only meaningful at low guidance.

The vocabulary files are not committed (setup.sh writes them into models/sd-tiny/tokenizer).

    .deps/pyref/bin/python tools/parity/make_sd_tiny.py .deps/clip-vocab
"""

import json
import os
import shutil
import sys

import diffusers
import torch
import transformers
from diffusers import AutoencoderKL, DDIMScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
MODEL = os.path.join(ROOT, "models", "sd-tiny")
FIXTURE = os.path.join(ROOT, "host", "hrf-diffusion", "tests", "fixtures", "sd-tiny")
PROMPTS = ["a photo of a cat", "an astronaut riding a horse, 4k, trending!"]
NEGATIVE = "blurry, low quality"
VOCAB_FILES = ["vocab.json", "merges.txt"]


def spread(model, seed, std):
    """Random weights with some spread (the default initialisations make near-identity blocks),
    rounded to fp16-representable values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            p.add_(torch.randn(p.shape, generator=g) * std)
            p.copy_(p.half().float())


def build(vocab_dir):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=[32, 64], down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], cross_attention_dim=32,
        attention_head_dim=4, norm_num_groups=8,
    ).eval()
    spread(unet, 1, 0.02)
    torch.manual_seed(2)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[32, 64],
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        layers_per_block=1, norm_num_groups=8, sample_size=32,
    ).eval()
    spread(vae, 3, 0.02)
    torch.manual_seed(4)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, projection_dim=32,
    )).eval()
    spread(text, 5, 0.3)
    tokenizer = CLIPTokenizer(vocab=os.path.join(vocab_dir, "vocab.json"), merges=os.path.join(vocab_dir, "merges.txt"),
                              pad_token="<|endoftext|>", model_max_length=77)
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1,
    )
    return StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def save(pipe, vocab_dir):
    if os.path.exists(MODEL):
        shutil.rmtree(MODEL)
    pipe.save_pretrained(MODEL, safe_serialization=True)
    # The text encoder in fp16 (its 49,408 × 32 embedding is most of the folder); the values
    # are fp16-representable already, so nothing changes.
    te = os.path.join(MODEL, "text_encoder")
    pipe.text_encoder.half().save_pretrained(te, safe_serialization=True)
    pipe.text_encoder.float()
    # A hub SD folder's tokenizer/ holds vocab.json + merges.txt (transformers 5 writes
    # tokenizer.json instead): keep the hub layout, which both libraries read.
    tok = os.path.join(MODEL, "tokenizer")
    for name in os.listdir(tok):
        if name not in ["tokenizer_config.json", "special_tokens_map.json"]:
            os.remove(os.path.join(tok, name))
    for name in VOCAB_FILES:
        shutil.copy(os.path.join(vocab_dir, name), os.path.join(tok, name))


def references(pipe):
    g = torch.Generator().manual_seed(7)
    latents = torch.randn(2, 4, 16, 16, generator=g)
    t = torch.tensor([801, 41])
    tok = pipe.tokenizer
    texts = PROMPTS + [NEGATIVE, ""]
    ids = tok(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        states = pipe.text_encoder(ids)[0]
        cond = pipe.unet(latents, t, encoder_hidden_states=states[:2]).sample
        uncond = pipe.unet(latents, t, encoder_hidden_states=states[[3, 3]]).sample
        guided = uncond + 7.5 * (cond - uncond)
        sf = pipe.vae.config.scaling_factor
        decoded = (pipe.vae.decode(latents / sf).sample / 2 + 0.5).clamp(0, 1)
    ddim = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.scheduler = ddim
    pipe64 = StableDiffusionPipeline.from_pretrained(MODEL, torch_dtype=torch.float32, safety_checker=None).to(torch.float64)
    pipe64.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    negative = dict(negative_prompt=[NEGATIVE] * len(PROMPTS))
    samples = {}
    for name, p, dtype, kwargs in [
        ("cfg1", pipe, torch.float32, dict(guidance_scale=1.0)),
        ("cfg1.5", pipe, torch.float32, dict(guidance_scale=1.5)),
        ("cfg1.5-negative", pipe, torch.float32, dict(guidance_scale=1.5, **negative)),
        ("cfg7.5-negative-fp64", pipe64, torch.float64, dict(guidance_scale=7.5, **negative)),
    ]:
        common = dict(prompt=PROMPTS, latents=latents.clone().to(dtype), num_inference_steps=10, eta=0.0, **kwargs)
        with torch.no_grad():
            final = p(output_type="latent", **common).images
            images = p(output_type="np", **common).images
        samples[name] = {"guidance": kwargs["guidance_scale"], "negative": NEGATIVE if "negative_prompt" in kwargs else "",
                         "dtype": str(dtype).removeprefix("torch."), "latents": final.tolist(), "images_hwc": images.tolist()}
    # How far diffusers' own fp32 sample is from its fp64 one, by guidance: the random tiny model
    # amplifies rounding at high guidance, so fp32 parity is checked at guidance ≤ 1.5 and the
    # guidance-7.5 chain in fp64.
    sensitivity = {}
    for g in [1.5, 2.0, 7.5]:
        common = dict(prompt=PROMPTS, num_inference_steps=10, eta=0.0, guidance_scale=g, output_type="latent", **negative)
        with torch.no_grad():
            a = pipe(latents=latents.clone(), **common).images.double()
            b = pipe64(latents=latents.clone().double(), **common).images
        sensitivity[str(g)] = (a - b).abs().max().item()
    return {
        "diffusers": diffusers.__version__, "transformers": transformers.__version__, "torch": torch.__version__,
        "prompts": PROMPTS, "negative": NEGATIVE, "texts": texts, "ids": ids.tolist(), "text_states": states.tolist(),
        "latents": latents.tolist(), "t": t.tolist(), "unet_cond": cond.tolist(), "unet_guided_7.5": guided.tolist(),
        "vae_decoded": decoded.tolist(), "timesteps": [int(x) for x in ddim.timesteps], "samples": samples,
        "diffusers_fp32_vs_fp64": sensitivity,
    }


def main():
    pipe = build(sys.argv[1])
    save(pipe, sys.argv[1])
    # The references come from the folder as saved, read back the way a user loads it.
    expected = pipe.tokenizer(PROMPTS + [NEGATIVE], padding="max_length", max_length=77, truncation=True).input_ids
    pipe = StableDiffusionPipeline.from_pretrained(MODEL, torch_dtype=torch.float32, safety_checker=None)
    got = pipe.tokenizer(PROMPTS + [NEGATIVE], padding="max_length", max_length=77, truncation=True).input_ids
    assert got == expected and got[0][0] == 49406, "the saved tokenizer reads back different ids"
    report = references(pipe)
    os.makedirs(FIXTURE, exist_ok=True)
    with open(os.path.join(FIXTURE, "outputs.json"), "w") as f:
        json.dump(report, f)
    sizes = {d: sum(os.path.getsize(os.path.join(MODEL, d, n)) for n in os.listdir(os.path.join(MODEL, d)))
             for d in sorted(os.listdir(MODEL)) if os.path.isdir(os.path.join(MODEL, d))}
    print(MODEL, sizes, "timesteps", report["timesteps"])


if __name__ == "__main__":
    main()
