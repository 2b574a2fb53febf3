#!/usr/bin/env python3
"""The reference side of the text-to-image benchmark (tools/bench/ddpo_epoch.sh --text-to-image):
one DDPO-IS epoch with LoRA on a Stable Diffusion folder the way ddpo-pytorch runs it, in PyTorch
+ diffusers + peft, on the same folder hrf trains (tools/bench/random_sd.py writes an SD-1.5-shaped
one with random weights).

The recipe (ddpo-pytorch's config/base.py, as docs/ALGORITHM.md describes it): the UNet, VAE and
text encoder frozen in `--dtype` (bf16 by default), rank-`--rank` LoRA (peft, alpha = rank,
Gaussian init) on to_q, to_k, to_v and to_out.0 kept in fp32 with AdamW (lr 3e-4, weight decay
1e-4); prompts from `--prompts`, one drawn per sample, encoded once; classifier-free guidance
`--guidance` against the empty prompt; `--samples` trajectories of `--steps` DDIM steps at eta 1
sampled under no_grad in batches of `--batch`, each step's log-probability kept, the final latents
decoded by the VAE (part of sampling time, as hrf's decode is); a stand-in reward (the negative
mean pixel); advantages standardised over the epoch; one inner epoch: shuffled train batches of
`--train-batch`, for every trainable step a guided forward pass with gradients, the PPO-clipped
loss and one backward pass, then the gradient clipped to norm 1 and one AdamW step.
`--autocast bf16` runs every UNet forward under torch.autocast to bfloat16 (hrf's
training.precision: bf16); ddpo-pytorch's accelerate mixed precision does the same.

Prints the last of `--epochs` epochs' timing as one JSON line, with the guided UNet's FLOPs per
sample step (torch's FlopCounterMode: a forward over the 2 rows of guidance, and a forward +
backward) and, on CUDA, torch's peak memory. Written from the formulas, not from ddpo-pytorch's code.
"""

import argparse
import os
import sys
import time

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from peft import LoraConfig
from transformers import CLIPTextModel, CLIPTokenizer

sys.path.insert(0, os.path.dirname(__file__))
from ddpo_reference import ddim_step, report, train_inner_epoch, unet_flops  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a Stable Diffusion folder (model_index.json, unet/, vae/, ...)")
    ap.add_argument("--prompts", default=os.path.join(os.path.dirname(__file__), "..", "..", "configs", "sd-tiny-prompts.txt"))
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8, help="sampling batch size")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--train-batch", type=int, default=4)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--dtype", choices=list(DTYPES), default="bf16", help="the frozen weights' precision")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--clip-range", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--autocast", choices=["fp32", "bf16"], default="fp32")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    frozen = DTYPES[args.dtype]
    unet = UNet2DConditionModel.from_pretrained(args.model, subfolder="unet").to(dev, frozen)
    vae = AutoencoderKL.from_pretrained(args.model, subfolder="vae").to(dev, frozen)
    text = CLIPTextModel.from_pretrained(args.model, subfolder="text_encoder").to(dev, frozen)
    tok = CLIPTokenizer.from_pretrained(args.model, subfolder="tokenizer")
    for m in (unet, vae, text):
        m.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    lora = [p for p in unet.parameters() if p.requires_grad]
    for p in lora:
        p.data = p.data.float()
    opt = torch.optim.AdamW(lora, lr=args.lr, betas=(0.9, 0.999), weight_decay=1e-4, eps=1e-8)
    sched = DDIMScheduler.from_pretrained(args.model, subfolder="scheduler")
    sched.set_timesteps(args.steps)
    sched.alphas_cumprod = sched.alphas_cumprod.to(dev)
    sched.final_alpha_cumprod = sched.final_alpha_cumprod.to(dev)
    timesteps = [int(t) for t in sched.timesteps]
    prompts = [l.strip() for l in open(args.prompts) if l.strip()]

    with torch.no_grad():
        ids = tok([""] + prompts, padding="max_length", max_length=tok.model_max_length,
                  truncation=True, return_tensors="pt").input_ids.to(dev)
        embeds = text(ids)[0]
    null, states = embeds[:1], embeds[1:]
    size = unet.config.sample_size
    shape = (unet.config.in_channels, size, size)
    net = torch.compile(unet) if args.compile else unet
    bf16 = args.autocast == "bf16"

    def guided(x, tt, which, net=net):
        """ε̂ with guidance: one batch of [unconditional; conditional] rows, as the pipeline runs it."""
        b = x.shape[0]
        ctx = torch.cat([null.expand(b, -1, -1), states[which]])
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            out = net(torch.cat([x, x]).to(frozen), torch.cat([tt, tt]).to(dev), ctx).sample
        u, c = out.float().chunk(2)
        return u + args.guidance * (c - u)

    x1 = torch.randn((1, *shape), device=dev)
    t1 = torch.full((1,), 500, dtype=torch.long)
    w1 = torch.zeros(1, dtype=torch.long, device=dev)
    flops = unet_flops(lambda: guided(x1, t1, w1, net=unet))
    opt.zero_grad(set_to_none=True)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    for epoch in range(args.epochs):
        sync()
        t0 = time.perf_counter()
        lats, lps, which_all, rewards, trainable = [], [], [], [], None
        with torch.no_grad():
            for _ in range(args.samples // args.batch):
                which = torch.randint(len(prompts), (args.batch,), generator=gen).to(dev)
                x = torch.randn((args.batch, *shape), generator=gen).to(dev)
                traj, logp, ok_steps = [x], [], []
                for t in timesteps:
                    tt = torch.full((args.batch,), t, dtype=torch.long)
                    x, lp, ok = ddim_step(sched, guided(x, tt, which), tt, x, 1.0, generator=gen)
                    traj.append(x)
                    logp.append(lp)
                    ok_steps.append(bool(ok.all()))
                images = vae.decode((x / vae.config.scaling_factor).to(frozen)).sample.float()
                rewards.append(-images.mean(dim=(1, 2, 3)))
                lats.append(torch.stack(traj, 1))
                lps.append(torch.stack(logp, 1))
                which_all.append(which)
                trainable = [i for i, ok in enumerate(ok_steps) if ok]
        lats, lps, which_all, r = torch.cat(lats), torch.cat(lps), torch.cat(which_all), torch.cat(rewards)
        sync()
        sample_s = time.perf_counter() - t0

        adv = (r - r.mean()) / (r.std(unbiased=False) + 1e-8)
        sync()
        t1 = time.perf_counter()
        train_inner_epoch(lambda x, tt, rows: guided(x, tt, which_all[rows.to(dev)]), sched, lats,
                          lps, adv, trainable, timesteps, lora, opt, gen, args)
        sync()
        train_s = time.perf_counter() - t1
        if epoch == args.epochs - 1:
            report("reference-sd-compiled" if args.compile else "reference-sd-eager", args, dev,
                   sample_s, train_s, flops, len(trainable), frozen_dtype=args.dtype)


if __name__ == "__main__":
    main()
