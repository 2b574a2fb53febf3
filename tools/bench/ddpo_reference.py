#!/usr/bin/env python3
"""The reference side of tools/bench/ddpo_epoch.sh: DDPO-IS epochs the way ddpo-pytorch runs them,
in eager PyTorch + diffusers (or with torch.compile), on the same diffusers folder hrf trains.

The epoch: `--samples` trajectories of `--steps` DDIM steps at eta 1 sampled under no_grad in
batches of `--batch`, each step's log-probability kept (the mean over C×H×W of the Gaussian
log-density, as ddpo-pytorch computes it); rewards (the negative mean pixel: a stand-in as cheap
as hrf's JPEG reward, which runs on its own thread and is not in hrf's sampling or training
time); advantages standardised over the epoch; then one inner epoch: the samples shuffled, cut
into train batches of `--train-batch`, and for every trainable step of the batch (the σ = 0 last
step is skipped, as hrf skips it) a forward pass with gradients, the PPO-clipped loss and one
backward pass; after the batch's steps the gradient is clipped to norm 1 and AdamW takes one
step. The timing of the last of `--epochs` epochs is printed as one JSON line (the first one
pays for torch.compile's compilation and the allocator's warm-up, on both sides), with the
UNet's FLOPs per image (torch's FlopCounterMode: a forward, and a forward + backward) and, on
CUDA, torch's peak allocated and reserved memory. `--autocast bf16` runs the UNet's forward
passes under torch.autocast to bfloat16, as hrf's `training.precision: bf16` does.

Written from the formulas of docs/ALGORITHM.md §1–§2, not from ddpo-pytorch's code.
"""

import argparse
import json
import math
import time

import torch
from diffusers import DDIMScheduler, UNet2DModel


def ddim_step(sched, eps, t, x, eta, prev_sample=None, generator=None):
    """One DDIM step with its log-probability, each row at its own timestep `t` (a [B] tensor):
    (x_{t-1}, log p(x_{t-1} | x_t) per row, whether each row's σ is large enough to train)."""
    ratio = sched.config.num_train_timesteps // sched.num_inference_steps
    t = t.to(sched.alphas_cumprod.device)
    prev_t = t - ratio
    view = (-1,) + (1,) * (x.ndim - 1)
    a_t = sched.alphas_cumprod[t].view(view)
    a_prev = torch.where(
        prev_t >= 0, sched.alphas_cumprod[prev_t.clamp(min=0)], sched.final_alpha_cumprod
    ).view(view)
    x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    if sched.config.clip_sample:
        r = sched.config.clip_sample_range
        x0 = x0.clamp(-r, r)
    var = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    sigma = eta * var.clamp(min=0).sqrt()
    mean = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
    if prev_sample is None:
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        prev_sample = mean + sigma * noise
    ok = sigma.flatten() >= 1e-4
    safe = torch.where(sigma >= 1e-4, sigma, torch.ones_like(sigma))
    lp = -((prev_sample.detach() - mean) ** 2) / (2 * safe**2) - safe.log() - 0.5 * math.log(2 * math.pi)
    lp = lp.mean(dim=tuple(range(1, lp.ndim))) * ok
    return prev_sample, lp, ok


def unet_flops(run):
    """FLOPs of `run()` (a model call) by torch's FlopCounterMode: (a forward under no_grad, a
    forward + backward of its sum). Run it on the plain (uncompiled) module; zero the gradients
    afterwards."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
        with torch.no_grad():
            run()
    fwd = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc:
        run().sum().backward()
    return fwd, fc.get_total_flops()


def train_inner_epoch(eps_of, sched, lats, lps, adv, trainable, timesteps, params, opt, gen, args):
    """One inner epoch, ddpo-pytorch's way: the samples shuffled and cut into train batches, each
    sample its own order of its trainable steps; per step a forward pass with gradients
    (`eps_of(x, t, rows)`), the PPO-clipped loss and one backward pass; per batch the gradient
    clipped to norm 1 and one AdamW step."""
    order = torch.randperm(args.samples, generator=gen)
    ts = torch.tensor(timesteps, dtype=torch.long)
    k = len(trainable)
    for b in range(0, args.samples, args.train_batch):
        idx = order[b : b + args.train_batch]
        perms = torch.stack([torch.tensor(trainable)[torch.randperm(k, generator=gen)] for _ in idx])
        for j in range(k):
            step = perms[:, j]
            x, x_prev = lats[idx, step], lats[idx, step + 1]
            _, lp, _ = ddim_step(sched, eps_of(x, ts[step], idx), ts[step], x, 1.0, prev_sample=x_prev)
            ratio = torch.exp(lp - lps[idx, step])
            a = adv[idx].clamp(-5, 5)
            loss = torch.maximum(-a * ratio, -a * ratio.clamp(1 - args.clip_range, 1 + args.clip_range)).mean()
            (loss / k).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)


def report(side, args, dev, sample_s, train_s, flops, trained_steps, **extra):
    """Prints the epoch's JSON line: timings, the UNet's FLOPs, torch's peak memory on CUDA."""
    peak = {}
    if dev.type == "cuda":
        peak = {"torch_peak_allocated_mib": torch.cuda.max_memory_allocated(dev) / 2**20,
                "torch_peak_reserved_mib": torch.cuda.max_memory_reserved(dev) / 2**20}
    print(json.dumps({
        "side": side + ("-bf16" if args.autocast == "bf16" else ""),
        "sample_s": sample_s, "train_s": train_s, "epoch_s": sample_s + train_s,
        "fwd_flops_per_image": flops[0], "fwd_bwd_flops_per_image": flops[1], **peak,
        "samples": args.samples, "steps": args.steps, "trained_steps": trained_steps,
        "train_batch": args.train_batch, "threads": args.threads, **extra,
        "torch": torch.__version__,
    }))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a diffusers UNet2DModel folder with scheduler_config.json")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16, help="sampling batch size")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--clip-range", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--autocast", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: the UNet's forward passes under torch.autocast(dtype=torch.bfloat16), "
                         "its output and everything after it in fp32 (hrf's training.precision: bf16)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    unet = UNet2DModel.from_pretrained(args.model).to(dev).float()
    sched = DDIMScheduler.from_pretrained(args.model)
    sched.set_timesteps(args.steps)
    sched.alphas_cumprod = sched.alphas_cumprod.to(dev)
    sched.final_alpha_cumprod = sched.final_alpha_cumprod.to(dev)
    timesteps = [int(t) for t in sched.timesteps]
    cfg = unet.config
    shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size)
    null = cfg.num_class_embeds - 1 if cfg.num_class_embeds else None
    net = torch.compile(unet) if args.compile else unet
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, betas=(0.9, 0.999), weight_decay=1e-4, eps=1e-8)

    bf16 = args.autocast == "bf16"

    def model(x, tt, net=net):
        labels = None if null is None else torch.full((x.shape[0],), null, dtype=torch.long, device=dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            out = net(x, tt.to(dev), class_labels=labels).sample
        return out.float()

    # The UNet's FLOPs per image, on the plain module: a forward (sampling), forward + backward.
    x1 = torch.randn((1, *shape), device=dev)
    t1 = torch.full((1,), 500, dtype=torch.long)
    flops = unet_flops(lambda: model(x1, t1, net=unet))
    opt.zero_grad(set_to_none=True)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    for epoch in range(args.epochs):
        # 1. Sampling, under no_grad, every step's latent and log-prob kept.
        sync()
        t0 = time.perf_counter()
        lats, lps, trainable = [], [], None
        with torch.no_grad():
            unet.eval()
            for _ in range(args.samples // args.batch):
                x = torch.randn((args.batch, *shape), generator=gen).to(dev)
                traj, logp, train_steps = [x], [], []
                for t in timesteps:
                    tt = torch.full((args.batch,), t, dtype=torch.long)
                    x, lp, ok = ddim_step(sched, model(x, tt), tt, x, 1.0, generator=gen)
                    traj.append(x)
                    logp.append(lp)
                    train_steps.append(bool(ok.all()))
                lats.append(torch.stack(traj, 1))
                lps.append(torch.stack(logp, 1))
                trainable = [i for i, ok in enumerate(train_steps) if ok]
        lats, lps = torch.cat(lats), torch.cat(lps)
        sync()
        sample_s = time.perf_counter() - t0

        # 2. Rewards and advantages (standardised over the epoch).
        r = -lats[:, -1].mean(dim=tuple(range(1, lats.ndim - 1)))
        adv = (r - r.mean()) / (r.std(unbiased=False) + 1e-8)

        # 3. One inner epoch: shuffled samples, train batches, a backward pass per trained step,
        #    one clipped AdamW step per batch.
        sync()
        t1 = time.perf_counter()
        unet.train()
        train_inner_epoch(lambda x, tt, rows: model(x, tt), sched, lats, lps, adv, trainable,
                          timesteps, list(unet.parameters()), opt, gen, args)
        sync()
        train_s = time.perf_counter() - t1
        if epoch == args.epochs - 1:
            report("reference-compiled" if args.compile else "reference-eager", args, dev,
                   sample_s, train_s, flops, len(trainable))


if __name__ == "__main__":
    main()
