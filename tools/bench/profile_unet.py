"""Where a UNet's forward + backward spends its time on the CPU, by torch's profiler.

    .deps/pyref/bin/python tools/bench/profile_unet.py [MODEL_DIR] [--batch 32] [--threads 1]

MODEL_DIR is a diffusers UNet2DModel folder (default models/testbed). Prints the share of
self CPU time by kind of kernel over 3 profiled forward + backward passes (after 2 warm-up
passes), and then the fused scaled_dot_product_attention against an explicit softmax(QK^T)V
at the shape of each of the model's attention layers, forward + backward, in ms per call.
diffusers' UNet calls the same libtorch kernels that hrf's does, so the shares are hrf's too.
"""

import argparse
import time

import torch
from diffusers import UNet2DModel
from torch.profiler import ProfilerActivity, profile

KINDS = {
    "convolution": ("convolution",),
    "attention": ("scaled_dot_product",),
    "group norm": ("group_norm",),
    "matrix products": ("aten::mm", "aten::addmm", "aten::bmm"),
    "SiLU": ("silu",),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default="models/testbed")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = UNet2DModel.from_pretrained(args.model).train()
    cfg = net.config
    n = args.batch
    x = torch.randn(n, cfg.in_channels, cfg.sample_size, cfg.sample_size)
    t = torch.randint(0, 1000, (n,))
    labels = torch.full((n,), cfg.num_class_embeds - 1) if cfg.num_class_embeds else None

    def pass_():
        net(x, t, class_labels=labels).sample.sum().backward()

    for _ in range(2):
        pass_()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            pass_()
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in events)
    print(f"{args.model}: forward + backward, batch {n}, {args.threads} thread(s); "
          f"self CPU time {total / 3e3:.1f} ms per pass")
    for kind, keys in KINDS.items():
        share = sum(e.self_cpu_time_total for e in events if any(k in e.key for k in keys))
        print(f"  {kind:<16} {100 * share / total:5.1f}%")

    shapes = set()
    hooks = [m.register_forward_pre_hook(
        lambda mod, inp: shapes.add((inp[0].shape[-2] * inp[0].shape[-1], mod.heads,
                                     inp[0].shape[1] // mod.heads)))
        for m in net.modules() if type(m).__name__ == "Attention"]
    with torch.no_grad():
        net(x, t, class_labels=labels)
    for h in hooks:
        h.remove()
    fused = torch.nn.functional.scaled_dot_product_attention

    def explicit(q, k, v):
        a = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1)
        return a @ v

    for tokens, heads, dim in sorted(shapes):
        q, k, v = (torch.randn(n, heads, tokens, dim, requires_grad=True) for _ in range(3))
        times = {}
        for name, f in (("fused", fused), ("explicit", explicit)):
            for _ in range(3):
                f(q, k, v).sum().backward()
            start = time.perf_counter()
            for _ in range(20):
                f(q, k, v).sum().backward()
            times[name] = (time.perf_counter() - start) / 20 * 1e3
        print(f"  attention {tokens} tokens × {heads} heads × {dim}: fused {times['fused']:.2f} ms, "
              f"explicit {times['explicit']:.2f} ms per forward + backward "
              f"({times['explicit'] / times['fused']:.2f}×)")


if __name__ == "__main__":
    main()
