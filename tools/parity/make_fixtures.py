"""Reference values from Python diffusers + torch for hrf-diffusion's parity tests.

Builds small random UNet2DModels with diffusers, records inputs and outputs, and records DDIM
trajectories (diffusers' DDIMScheduler.step with given noise) with their log-probabilities by the
ddpo-pytorch formula. The Rust tests compare against these files without Python.

    tools/parity/env.sh                      # once: a venv with torch 2.11 + diffusers
    .deps/pyref/bin/python tools/parity/make_fixtures.py

Degenerate steps follow docs/ALGORITHM.md §1.3: a step whose σ at η = 1 is below SIGMA_MIN gets
log-prob 0 and is marked untrainable.
"""

import json
import math
import os
import sys

import torch
from diffusers import DDIMScheduler, UNet2DModel
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "host", "hrf-diffusion", "tests", "fixtures")
SIGMA_MIN = 1e-4

# Each model exercises something: the testbed shape (class embedding incl. the null class, one
# attention block, multi-head), a shrunken ddpm-celebahq (6 levels, google's conventions:
# downsample padding 0, flip_sin_to_cos False, freq_shift 1, head dim = channels), and a model with
# attention at every level, a mid-block scale factor and an odd time-embedding width.
MODELS = {
    "testbed": dict(
        sample_size=32, in_channels=1, out_channels=1,
        block_out_channels=(16, 32, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=8, norm_num_groups=8, num_class_embeds=11,
    ),
    "celebahq_small": dict(
        sample_size=64, in_channels=3, out_channels=3,
        block_out_channels=(8, 8, 16, 16, 16, 16), layers_per_block=1,
        down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
        attention_head_dim=None, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
        norm_eps=1e-6, norm_num_groups=4,
    ),
    "attn_everywhere": dict(
        sample_size=16, in_channels=2, out_channels=2,
        block_out_channels=(16, 24), layers_per_block=2,
        down_block_types=("AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D"),
        attention_head_dim=8, norm_num_groups=4, mid_block_scale_factor=1.4142135,
        num_class_embeds=5, time_embedding_dim=36,
    ),
}

# Scheduler cases: google/ddpm-* (DDPM config read by DDIM), and the other code paths.
SCHEDULERS = {
    "ddpm_linear_clip": dict(cfg=dict(beta_schedule="linear", clip_sample=True, set_alpha_to_one=True), steps=10),
    "no_alpha_to_one": dict(cfg=dict(beta_schedule="linear", clip_sample=True, set_alpha_to_one=False), steps=8),
    "scaled_linear_v_trailing": dict(
        cfg=dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                 prediction_type="v_prediction", timestep_spacing="trailing", set_alpha_to_one=False),
        steps=8),
    "cosine_sample_offset": dict(
        cfg=dict(beta_schedule="squaredcos_cap_v2", clip_sample=True, clip_sample_range=0.8,
                 prediction_type="sample", steps_offset=1, timestep_spacing="leading"),
        steps=12),
    "linspace": dict(cfg=dict(beta_schedule="linear", clip_sample=False, timestep_spacing="linspace"), steps=7),
}


def magnify(unet: UNet2DModel, gen: torch.Generator) -> None:
    """Random init gives tiny outputs; perturb every parameter so each path contributes and the
    output has real magnitude (std > 0.1), or a near-zero model could pass the test."""
    with torch.no_grad():
        for name, p in unet.named_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
            if name.startswith("conv_out."):
                p.mul_(4.0)


def make_unet(name: str, cfg: dict, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    unet = UNet2DModel(**cfg).eval()
    magnify(unet, gen)
    folder = os.path.join(OUT, f"unet_{name}")
    unet.save_pretrained(folder, safe_serialization=True)
    if name == "celebahq_small":
        # The google/ddpm-* checkpoints predate diffusers' attention rename: keep a copy with the
        # old names (query/key/value/proj_attn) so the loader's renaming is tested too.
        legacy = {}
        for k, v in unet.state_dict().items():
            for new, old in ((".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."), (".to_out.0.", ".proj_attn.")):
                k = k.replace(new, old)
            legacy[k] = v.contiguous()
        save_file(legacy, os.path.join(folder, "legacy.safetensors"))
    c, s = cfg["in_channels"], cfg["sample_size"]
    b = 3
    x = torch.randn(b, c, s, s, generator=gen)
    t = torch.tensor([999, 500, 3])  # one timestep per sample, all different
    inputs = {"sample": x, "timesteps": t}
    if cfg.get("num_class_embeds"):
        null = cfg["num_class_embeds"] - 1
        inputs["class_labels"] = torch.tensor([0, 2, null])  # the last is the null class
    with torch.no_grad():
        out = unet(x, t, class_labels=inputs.get("class_labels")).sample
    assert out.std() > 0.1, f"{name}: output std {out.std():.3f} too small for a meaningful test"
    save_file({**inputs, "output": out.contiguous()}, os.path.join(folder, "io.safetensors"))
    print(f"unet_{name}: {sum(p.numel() for p in unet.parameters())} params, output std {out.std():.3f}")


def ddpo_log_prob(prev, mean, std):
    """ddpo-pytorch's ddim_step_with_logprob log-density, averaged over non-batch dims."""
    lp = -((prev.detach() - mean) ** 2) / (2 * std**2) - torch.log(std) - torch.log(torch.sqrt(2 * torch.as_tensor(math.pi)))
    return lp.mean(dim=tuple(range(1, lp.ndim)))


def make_trajectory(name: str, spec: dict, seed: int, unet: UNet2DModel = None, class_labels=None) -> None:
    gen = torch.Generator().manual_seed(seed)
    sched = DDIMScheduler(num_train_timesteps=1000, **spec["cfg"])
    n = spec["steps"]
    sched.set_timesteps(n)
    shape = (2, 1, 32, 32) if unet is not None else (2, 3, 8, 8)
    record = {}
    meta = {"scheduler": dict(sched.config), "steps": n, "timesteps": sched.timesteps.tolist(), "runs": []}
    for eta in (0.0, 1.0):
        x = torch.randn(shape, generator=gen)
        xs, outs, zs, prevs, lps, stds, mask = [], [], [], [], [], [], []
        for i, t in enumerate(sched.timesteps):
            if unet is not None:
                with torch.no_grad():
                    out = unet(x, t.repeat(shape[0]), class_labels=class_labels).sample
            else:
                out = torch.randn(shape, generator=gen)  # any model output: the scheduler is under test
            z = torch.randn(shape, generator=gen)
            prev = sched.step(out, t, x, eta=eta, variance_noise=z).prev_sample
            # The mean and σ, recomputed here from diffusers' own quantities for the log-prob.
            prev_t = t - sched.config.num_train_timesteps // n
            a_t = sched.alphas_cumprod[t]
            a_prev = sched.alphas_cumprod[prev_t] if prev_t >= 0 else sched.final_alpha_cumprod
            var1 = sched._get_variance(t, prev_t)
            std = eta * var1**0.5
            mean = prev - std * z
            if eta > 0 and var1**0.5 >= SIGMA_MIN:
                lp = ddpo_log_prob(prev, mean, torch.as_tensor(std))
                mask.append(1)
            else:
                lp = torch.zeros(shape[0])
                mask.append(0)
            xs.append(x); outs.append(out); zs.append(z); prevs.append(prev); lps.append(lp)
            stds.append(torch.tensor(float(std)))
            x = prev
        tag = f"eta{int(eta)}"
        record[f"{tag}.sample"] = torch.stack(xs)
        record[f"{tag}.model_output"] = torch.stack(outs)
        record[f"{tag}.noise"] = torch.stack(zs)
        record[f"{tag}.prev"] = torch.stack(prevs)
        record[f"{tag}.log_prob"] = torch.stack(lps)
        record[f"{tag}.std"] = torch.stack(stds)
        record[f"{tag}.trainable"] = torch.tensor(mask)
        # q(x_t | x0) at one timestep per sample.
    x0 = torch.randn(shape, generator=gen).clamp(-1, 1)
    noise = torch.randn(shape, generator=gen)
    tq = torch.tensor([sched.timesteps[1].item(), sched.timesteps[-2].item()])
    record["add_noise.x0"] = x0
    record["add_noise.noise"] = noise
    record["add_noise.timesteps"] = tq
    record["add_noise.noisy"] = sched.add_noise(x0, noise, tq)
    record["alphas_cumprod"] = sched.alphas_cumprod.clone()
    save_file({k: v.contiguous() for k, v in record.items()}, os.path.join(OUT, f"ddim_{name}.safetensors"))
    meta["scheduler"] = {k: v for k, v in meta["scheduler"].items() if not k.startswith("_") and k != "trained_betas"}
    with open(os.path.join(OUT, f"ddim_{name}.json"), "w") as f:
        json.dump(meta, f, indent=1, default=str)
    print(f"ddim_{name}: {n} steps, trainable mask eta1 {record['eta1.trainable'].tolist()}")


def main() -> int:
    torch.use_deterministic_algorithms(True)
    os.makedirs(OUT, exist_ok=True)
    for i, (name, cfg) in enumerate(MODELS.items()):
        make_unet(name, cfg, seed=100 + i)
    for i, (name, spec) in enumerate(SCHEDULERS.items()):
        make_trajectory(name, spec, seed=200 + i)
    # A whole trajectory driven by the testbed-shaped UNet (conditional, incl. the null class).
    unet = UNet2DModel.from_pretrained(os.path.join(OUT, "unet_testbed")).eval()
    make_trajectory("unet_testbed", SCHEDULERS["ddpm_linear_clip"], seed=300, unet=unet,
                    class_labels=torch.tensor([4, 10]))
    print("torch", torch.__version__, "diffusers", __import__("diffusers").__version__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
