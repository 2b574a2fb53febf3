"""Reference advantages for hrf-train, computed the way ddpo-pytorch computes them (numpy):
its per-prompt stat tracker (deque of the last `buffer_size` rewards per prompt, appended before
standardising, whole-batch statistics while a prompt has fewer than `min_count`), and plain
whole-epoch standardisation.

    .deps/pyref/bin/python tools/parity/make_ddpo_fixtures.py [--window-only | --authors-only]
"""

import json
import os
import sys
from collections import deque

import numpy as np

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "host", "hrf-train", "tests", "fixtures")


class Tracker:
    def __init__(self, buffer_size, min_count):
        self.buffer_size, self.min_count, self.stats = buffer_size, min_count, {}

    def update(self, prompts, rewards):
        prompts, rewards = np.array(prompts), np.array(rewards, dtype=np.float64)
        advantages = np.empty_like(rewards)
        for prompt in np.unique(prompts):
            r = rewards[prompts == prompt]
            buf = self.stats.setdefault(prompt, deque(maxlen=self.buffer_size))
            buf.extend(r)
            if len(buf) < self.min_count:
                mean, std = np.mean(rewards), np.std(rewards) + 1e-6
            else:
                mean, std = np.mean(buf), np.std(buf) + 1e-6
            advantages[prompts == prompt] = (r - mean) / std
        return advantages


def ppo_fixture():
    """The clipped PPO loss of ddpo-pytorch on one batch of stored DDIM steps of a tiny UNet, with
    its gradient on two named parameters. Samples sit at different steps (as in HRF batches)."""
    import math

    import torch
    from diffusers import DDIMScheduler, UNet2DModel
    from safetensors.torch import save_file

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=8, norm_num_groups=4, num_class_embeds=3,
    )
    folder = os.path.join(OUT, "ppo_unet")
    unet.save_pretrained(folder, safe_serialization=True)
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True)
    n = 10
    sched.set_timesteps(n)
    g = torch.Generator().manual_seed(1)
    steps = torch.tensor([0, 3, 5, 8])
    b = len(steps)
    x = torch.randn(b, 1, 8, 8, generator=g)
    labels = torch.tensor([0, 2, 1, 2])
    z = torch.randn(b, 1, 8, 8, generator=g)
    t = sched.timesteps[steps]

    def step_stats(out):
        """Per-sample DDIM mean and σ at η = 1 (ddpo-pytorch's ddim_step_with_logprob)."""
        ratio = sched.config.num_train_timesteps // n
        a_t = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
        prev_t = t - ratio
        a_prev = torch.where(prev_t >= 0, sched.alphas_cumprod[prev_t.clamp(min=0)], sched.final_alpha_cumprod).view(-1, 1, 1, 1)
        x0 = ((x - (1 - a_t) ** 0.5 * out) / a_t**0.5).clamp(-1, 1)
        var = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
        std = var**0.5
        mean = a_prev**0.5 * x0 + (1 - a_prev - std**2) ** 0.5 * out
        return mean, std

    with torch.no_grad():
        mean, std = step_stats(unet(x, t, class_labels=labels).sample)
        prev = mean + std * z

    def log_prob(mean, std):
        lp = -((prev.detach() - mean) ** 2) / (2 * std**2) - torch.log(std) - math.log(math.sqrt(2 * math.pi))
        return lp.mean(dim=(1, 2, 3))

    with torch.no_grad():
        old = log_prob(mean, std) + torch.tensor([0.08, -0.01, 0.002, -0.12])
    adv = torch.tensor([1.5, -0.7, 2.0, -2.5])
    clip_range = 0.05
    mean, std = step_stats(unet(x, t, class_labels=labels).sample)
    lp = log_prob(mean, std)
    ratio = torch.exp(lp - old)
    loss = torch.mean(torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)))
    loss.backward()
    names = ["conv_in.weight", "down_blocks.1.attentions.0.to_q.weight"]
    params = dict(unet.named_parameters())
    save_file({
        "sample": x, "prev": prev, "steps": steps, "class_labels": labels, "old_log_prob": old,
        "advantages": adv, "log_prob": lp.detach(), "ratio": ratio.detach(), "loss": loss.detach().reshape(1),
        **{f"grad.{k}": params[k].grad.contiguous() for k in names},
    }, os.path.join(OUT, "ppo_step.safetensors"))
    print("ppo loss", loss.item(), "ratios", ratio.tolist(),
          "clipfrac", (torch.abs(ratio - 1) > clip_range).float().mean().item())


def ddim_step_stats(sched, ratio_t, x, t, out):
    """DDIM's step mean and sigma at eta = 1 for noise prediction `out` at x_t (ddpo-pytorch's
    ddim_step_with_logprob; x0 clipped to [-1, 1])."""
    import torch

    a_t = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    prev_t = t - ratio_t
    a_prev = torch.where(prev_t >= 0, sched.alphas_cumprod[prev_t.clamp(min=0)], sched.final_alpha_cumprod).view(-1, 1, 1, 1)
    x0 = ((x - (1 - a_t) ** 0.5 * out) / a_t**0.5).clamp(-1, 1)
    std = ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
    return a_prev**0.5 * x0 + (1 - a_prev - std**2) ** 0.5 * out, std


def log_prob(prev, mean, std):
    """The Gaussian log-density of `prev`, averaged over the non-batch dimensions."""
    import math

    import torch

    lp = -((prev - mean) ** 2) / (2 * std**2) - torch.log(std) - math.log(math.sqrt(2 * math.pi))
    return lp.mean(dim=(1, 2, 3))


def window_fixture():
    """HRF's window loss on one train batch (docs/ALGORITHM.md §3.4), written from the paper's
    formulas: rows start at k = 0, 4, 7 of a 10-step chain (step 9 is degenerate, so
    N_train(k) = 9, 5, 2 and f = N_train(k)/9); advantages clipped to ±2.5·f and the ratio to
    1 ± 0.05·f; each row trains its own steps; the batch objective is
    Σ_rows Σ_steps w_r·ℓ_r(step) / R with w_r = 1 (sum, the authors) or 1/K_r (mean). Saves both
    objectives with the gradient of each on two named parameters of the ppo_unet fixture."""
    import math

    import torch
    from diffusers import DDIMScheduler, UNet2DModel
    from safetensors.torch import save_file

    unet = UNet2DModel.from_pretrained(os.path.join(OUT, "ppo_unet"))
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True)
    n = 10
    sched.set_timesteps(n)
    ratio_t = sched.config.num_train_timesteps // n
    starts = [0, 4, 7]
    steps = [[5, 0, 2, 8], [4, 6], [8, 7]]  # each row's trained steps, in slot order
    n_train = {k: sum(1 for i in range(k, n) if sched.timesteps[i] - ratio_t >= 0) for k in starts}
    f = torch.tensor([n_train[k] / n_train[0] for k in starts])
    g = torch.Generator().manual_seed(2)
    r = len(starts)
    latents = torch.randn(r, n + 1, 1, 8, 8, generator=g)
    labels = torch.tensor([1, 0, 2])
    adv_raw = torch.tensor([3.0, -1.9, 1.2])
    adv = torch.maximum(torch.minimum(adv_raw, 2.5 * f), -2.5 * f)
    clip = 0.05 * f

    def step_stats(x, t, out):
        return ddim_step_stats(sched, ratio_t, x, t, out)

    # The stored transitions: x_{i+1} drawn from the policy at x_i; old log-probs perturbed so
    # that some ratios leave their (scaled) clip range.
    old = torch.zeros(r, n)
    with torch.no_grad():
        for row in range(r):
            for i in steps[row]:
                x = latents[row, i : i + 1]
                t = sched.timesteps[i : i + 1]
                mean, std = step_stats(x, t, unet(x, t, class_labels=labels[row : row + 1]).sample)
                latents[row, i + 1] = (mean + std * torch.randn(1, 1, 8, 8, generator=g))[0]
        for row in range(r):
            for i in steps[row]:
                x = latents[row, i : i + 1]
                t = sched.timesteps[i : i + 1]
                mean, std = step_stats(x, t, unet(x, t, class_labels=labels[row : row + 1]).sample)
                old[row, i] = log_prob(latents[row, i + 1 : i + 2], mean, std)[0] + 0.03 * (i % 3 - 1)

    out = {"latents": latents, "old_log_probs": old, "class_labels": labels, "advantages": adv,
           "clip": clip, "starts": torch.tensor(starts), "f": f}
    for reduction in ["sum", "mean"]:
        unet.zero_grad()
        total = 0.0
        for row in range(r):
            w = 1.0 if reduction == "sum" else 1.0 / len(steps[row])
            for i in steps[row]:
                x = latents[row, i : i + 1]
                t = sched.timesteps[i : i + 1]
                mean, std = step_stats(x, t, unet(x, t, class_labels=labels[row : row + 1]).sample)
                lp = log_prob(latents[row, i + 1 : i + 2], mean, std)
                rho = torch.exp(lp - old[row, i])
                loss = torch.maximum(-adv[row] * rho, -adv[row] * torch.clamp(rho, 1 - clip[row], 1 + clip[row]))
                total = total + w * loss.sum() / r
        total.backward()
        params = dict(unet.named_parameters())
        out[f"{reduction}.objective"] = total.detach().reshape(1)
        for k in ["conv_in.weight", "down_blocks.1.attentions.0.to_q.weight"]:
            out[f"{reduction}.grad.{k}"] = params[k].grad.clone().contiguous()
        print("window objective", reduction, total.item())
    save_file(out, os.path.join(OUT, "window_step.safetensors"))


def authors_group_fixture():
    """One optimiser step of the HRF authors' training loop (alcazar90/ddpo-celebahq, branch
    jbarcelo_branch, `compute_loss_new_modified_cliped_ratio`), written here from its formulas:
    one train batch is one anchor group, all members starting at the same k; every step
    i = k..N-1 of the window is trained (timestep_fraction 1); f = len(range(k, N)) / N (every
    step of the chain counted); advantages clipped to +-2.5*f and the ratio to 1 +- eps*f; per
    step the loss is the batch mean of max(-A*rho, -A*clip(rho)), backpropagated step by step,
    so the step's gradient is that of the sum over steps. The chain's last step (sigma = 0 for
    this scheduler) has no finite log-density and is left out, as hrf leaves it out. Saves the
    objective and its gradient on two named parameters of the ppo_unet fixture."""
    import math

    import torch
    from diffusers import DDIMScheduler, UNet2DModel
    from safetensors.torch import save_file

    unet = UNet2DModel.from_pretrained(os.path.join(OUT, "ppo_unet"))
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True)
    n = 10
    sched.set_timesteps(n)
    ratio_t = sched.config.num_train_timesteps // n
    k, members = 4, 3
    f = len(range(k, n)) / n
    window = [i for i in range(k, n) if sched.timesteps[i] - ratio_t >= 0]
    g = torch.Generator().manual_seed(3)
    latents = torch.randn(members, n + 1, 1, 8, 8, generator=g)
    labels = torch.tensor([2, 2, 2])
    adv_raw = torch.tensor([2.1, -0.4, -1.7])
    adv = torch.clamp(adv_raw, -2.5 * f, 2.5 * f)
    eps = 0.02
    clip_lo, clip_hi = 1.0 - eps * f, 1.0 + eps * f

    def step_stats(x, t, out):
        return ddim_step_stats(sched, ratio_t, x, t, out)

    # The members' stored transitions, rolled by the policy from k; old log-probs perturbed so
    # that some ratios leave 1 +- eps*f.
    old = torch.zeros(members, n)
    with torch.no_grad():
        for i in window:
            t = sched.timesteps[i].repeat(members)
            mean, std = step_stats(latents[:, i], t, unet(latents[:, i], t, class_labels=labels).sample)
            latents[:, i + 1] = mean + std * torch.randn(members, 1, 8, 8, generator=g)
        for i in window:
            t = sched.timesteps[i].repeat(members)
            mean, std = step_stats(latents[:, i], t, unet(latents[:, i], t, class_labels=labels).sample)
            old[:, i] = log_prob(latents[:, i + 1], mean, std) + 0.02 * torch.tensor([1.0, -1.0, 0.5]) * (i % 2)

    unet.zero_grad()
    total = 0.0
    for i in window:
        t = sched.timesteps[i].repeat(members)
        mean, std = step_stats(latents[:, i], t, unet(latents[:, i], t, class_labels=labels).sample)
        rho = torch.exp(log_prob(latents[:, i + 1], mean, std) - old[:, i])
        loss = torch.max(-adv * rho, -adv * torch.clip(rho, clip_lo, clip_hi)).mean()
        loss.backward()
        total += loss.item()
    params = dict(unet.named_parameters())
    out = {"latents": latents, "old_log_probs": old, "class_labels": labels,
           "raw_advantages": adv_raw, "advantages": adv, "start": torch.tensor([k]),
           "f": torch.tensor([f], dtype=torch.float64), "clip_range": torch.tensor([eps], dtype=torch.float64),
           "objective": torch.tensor([total], dtype=torch.float64)}
    for name in ["conv_in.weight", "down_blocks.1.attentions.0.to_q.weight"]:
        out[f"grad.{name}"] = params[name].grad.clone().contiguous()
    save_file(out, os.path.join(OUT, "authors_group_step.safetensors"))
    print("authors group objective", total, "f", f, "window", window)


def main():
    os.makedirs(OUT, exist_ok=True)
    if "--authors-only" in sys.argv:
        authors_group_fixture()
        return
    if "--window-only" not in sys.argv:
        ppo_fixture()
    window_fixture()
    authors_group_fixture()
    if "--window-only" in sys.argv:
        return
    rng = np.random.default_rng(0)
    classes = ["a photo of a sneaker", "a photo of a bag", "a photo of a coat", "a photo of a shirt"]
    tracker = Tracker(buffer_size=6, min_count=4)
    epochs = []
    for _ in range(4):
        prompts = [classes[i] for i in rng.integers(0, 4, size=10)]
        rewards = (rng.normal(size=10) * 3 + 1).round(4)
        epochs.append({
            "prompts": prompts,
            "rewards": rewards.tolist(),
            "per_prompt": tracker.update(prompts, rewards).tolist(),
            "epoch": ((rewards - rewards.mean()) / (rewards.std() + 1e-8)).tolist(),
        })
    with open(os.path.join(OUT, "advantages.json"), "w") as f:
        json.dump({"buffer_size": 6, "min_count": 4, "epochs": epochs}, f, indent=1)
    print("wrote", len(epochs), "epochs")


if __name__ == "__main__":
    main()
