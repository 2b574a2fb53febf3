"""The testbed's ONNX models, trained on the real Fashion-MNIST train split (Debian's IDX files).

    tools/parity/env.sh && .deps/pyref/bin/pip install -r tools/testbed/requirements.txt
    TORCH_THREADS=1 .deps/pyref/bin/python tools/testbed/train_classifiers.py   # ~35 min on 1 core

Writes to models/:
- fmnist-classifier.onnx   reward classifier (prompt alignment, class coverage): outputs
                           `probs` [N, 10] and `features` [N, 64] (penultimate layer)
- fmnist-eval.onnx         independent evaluation classifier (another architecture, another seed):
                           `probs` [N, 10] and `features` [N, 128]; no reward uses it
- aesthetic-head.onnx      LAION-aesthetic-shaped MLP head over L2-normalised reward-classifier
                           features [N, 64] -> `score` [N, 1]; see AESTHETIC below
- testbed-models.json      accuracies, Spearman of the aesthetic head, input conventions
and an ort parity fixture to host/hrf-rewards/tests/fixtures/.

Input convention of both classifiers: 1×32×32 float, the 8-bit image (28×28 padded to 32×32 with
black) mapped by (x/255 − 0.5)/0.5 to [−1, 1] — the diffusion model's own pixel space.
"""

import gzip
import json
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
DATA = "/usr/share/datasets/fashion-mnist"
OUT = os.path.join(ROOT, "models")
FIXTURES = os.path.join(ROOT, "host", "hrf-rewards", "tests", "fixtures")
torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "2")))

# What the aesthetic model prefers: "detail" = the mean gradient magnitude of the 8-bit image
# (|∂x| + |∂y| between neighbouring pixels, averaged, on the 28×28 original scaled to [0, 1]).
# Textured, patterned, high-contrast garments score high; flat or empty images score low.
AESTHETIC = "detail: mean absolute difference between neighbouring pixels (textured, high-contrast garments score high)"


def idx(name):
    with gzip.open(os.path.join(DATA, name)) as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(split):
    p = "train" if split == "train" else "t10k"
    x = idx(f"{p}-images-idx3-ubyte.gz")
    y = idx(f"{p}-labels-idx1-ubyte.gz").astype(np.int64)
    return x, y


def to_input(u8):
    """[N, 28, 28] uint8 -> [N, 1, 32, 32] float in [-1, 1] (black padding)."""
    x = np.pad(u8, ((0, 0), (2, 2), (2, 2))).astype(np.float32) / 255.0
    return torch.from_numpy((x - 0.5) / 0.5).unsqueeze(1)


def detail(u8):
    x = u8.astype(np.float32) / 255.0
    dx = np.abs(np.diff(x, axis=2)).mean(axis=(1, 2))
    dy = np.abs(np.diff(x, axis=1)).mean(axis=(1, 2))
    return dx + dy


class RewardClassifier(nn.Module):
    """Small CNN; its 64-d penultimate layer is the testbed's "CLIP" image feature."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 32, 3, padding=1)
        self.c2 = nn.Conv2d(32, 64, 3, padding=1)
        self.c3 = nn.Conv2d(64, 64, 3, padding=1)
        self.fc = nn.Linear(64 * 4 * 4, 64)
        self.out = nn.Linear(64, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        x = F.max_pool2d(F.relu(self.c3(x)), 2)
        f = F.relu(self.fc(x.flatten(1)))
        return F.softmax(self.out(f), dim=1), f


class EvalClassifier(nn.Module):
    """Another architecture (5×5 kernels, GELU, dropout, average pooling, 128-d features) for evaluation only."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 24, 5, padding=2)
        self.c2 = nn.Conv2d(24, 48, 5, padding=2)
        self.fc = nn.Linear(48 * 8 * 8, 128)
        self.drop = nn.Dropout(0.3)
        self.out = nn.Linear(128, 10)

    def forward(self, x):
        x = F.avg_pool2d(F.gelu(self.c1(x)), 2)
        x = F.avg_pool2d(F.gelu(self.c2(x)), 2)
        f = F.gelu(self.fc(x.flatten(1)))
        return F.softmax(self.out(self.drop(f)), dim=1), f


class AestheticHead(nn.Module):
    """LAION-aesthetic shape: MLP over L2-normalised image features, one scalar out."""

    def __init__(self, dim=64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, 16), nn.GELU(), nn.Linear(16, 1))

    def forward(self, f):
        return self.net(f)


def train_classifier(model, x, y, epochs, seed, lr=2e-3):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (len(x) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(len(x) // 128):
            b = perm[i * 128:(i + 1) * 128]
            xb = x[b]
            # Light augmentation: random horizontal flips (garments are left-right symmetric).
            flip = torch.rand(len(b), generator=g) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            probs, _ = model(xb)
            loss = F.nll_loss(torch.log(probs + 1e-8), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"  epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}", flush=True)
    model.eval()
    return model


@torch.no_grad()
def predict(model, x):
    outs = [model(x[i:i + 1000]) for i in range(0, len(x), 1000)]
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


def spearman(a, b):
    ra = np.argsort(np.argsort(a)).astype(np.float64)
    rb = np.argsort(np.argsort(b)).astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])


def export(model, example, path, inputs, outputs):
    torch.onnx.export(
        model, (example,), path, input_names=inputs, output_names=outputs,
        dynamic_axes={inputs[0]: {0: "batch"}, **{o: {0: "batch"} for o in outputs}},
        opset_version=17, dynamo=False,
    )


def main():
    os.makedirs(OUT, exist_ok=True)
    os.makedirs(FIXTURES, exist_ok=True)
    xtr_u8, ytr = load("train")
    xte_u8, yte = load("test")
    xtr, xte = to_input(xtr_u8), to_input(xte_u8)
    ytr_t = torch.from_numpy(ytr)
    report = {"input": "1x32x32 float: 8-bit image (28x28 padded to 32x32 with black) mapped by (x/255-0.5)/0.5"}

    print("reward classifier", flush=True)
    torch.manual_seed(1)
    rc = train_classifier(RewardClassifier(), xtr, ytr_t, epochs=4, seed=1)
    p, f_te = predict(rc, xte)
    report["fmnist-classifier"] = {"test_accuracy": float((p.argmax(1).numpy() == yte).mean()), "features": 64, "seed": 1}

    print("evaluation classifier", flush=True)
    torch.manual_seed(2)
    ec = train_classifier(EvalClassifier(), xtr, ytr_t, epochs=8, seed=2)
    p2, _ = predict(ec, xte)
    report["fmnist-eval"] = {"test_accuracy": float((p2.argmax(1).numpy() == yte).mean()), "features": 128, "seed": 2}

    print("aesthetic head", flush=True)
    _, f_tr = predict(rc, xtr)
    nf_tr = F.normalize(f_tr, dim=1)
    d_tr = torch.from_numpy(detail(xtr_u8))
    mu, sd = d_tr.mean(), d_tr.std()
    target = (d_tr - mu) / sd  # standardised detail
    torch.manual_seed(3)
    head = AestheticHead()
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(3)
    for epoch in range(30):
        perm = torch.randperm(len(nf_tr), generator=g)
        for i in range(0, len(perm), 256):
            b = perm[i:i + 256]
            loss = F.mse_loss(head(nf_tr[b]).squeeze(1), target[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    head.eval()
    with torch.no_grad():
        s_te = head(F.normalize(f_te, dim=1)).squeeze(1).numpy()
        blank = to_input(np.zeros((1, 28, 28), np.uint8))
        s_blank = head(F.normalize(rc(blank)[1], dim=1)).item()
    d_te = detail(xte_u8)
    report["aesthetic-head"] = {
        "prefers": AESTHETIC,
        "spearman_test_1000": spearman(s_te[:1000], d_te[:1000]),
        "spearman_test_all": spearman(s_te, d_te),
        "blank_image_score": s_blank,
        "test_score_quantiles": {q: float(np.quantile(s_te, q)) for q in (0.0, 0.5, 0.99, 1.0)},
        "chain": "fmnist-classifier.onnx output `features` -> L2-normalise -> aesthetic-head.onnx",
    }

    ex = xte[:2]
    export(rc, ex, os.path.join(OUT, "fmnist-classifier.onnx"), ["image"], ["probs", "features"])
    export(ec, ex, os.path.join(OUT, "fmnist-eval.onnx"), ["image"], ["probs", "features"])
    export(head, F.normalize(f_te[:2], dim=1), os.path.join(OUT, "aesthetic-head.onnx"), ["features"], ["score"])

    # Parity fixture: 16 real test images (8-bit, 32×32 padded) through Python onnxruntime.
    import onnxruntime as ort
    imgs = np.pad(xte_u8[:16], ((0, 0), (2, 2), (2, 2)))
    inp = ((imgs.astype(np.float32) / 255.0 - 0.5) / 0.5)[:, None]
    fixture = {"images_u8": imgs.reshape(16, -1).tolist(), "size": 32}
    for name in ("fmnist-classifier", "fmnist-eval"):
        sess = ort.InferenceSession(os.path.join(OUT, f"{name}.onnx"))
        probs, feats = sess.run(None, {"image": inp})
        fixture[name] = {"probs": probs.tolist(), "features": feats.tolist()}
        with torch.no_grad():
            tp, tf = (rc if name == "fmnist-classifier" else ec)(torch.from_numpy(inp))
        assert np.abs(tp.numpy() - probs).max() < 1e-5 and np.abs(tf.numpy() - feats).max() < 1e-4
    feats = np.asarray(fixture["fmnist-classifier"]["features"], np.float32)
    nfe = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    hs = ort.InferenceSession(os.path.join(OUT, "aesthetic-head.onnx"))
    fixture["aesthetic"] = hs.run(None, {"features": nfe})[0][:, 0].tolist()
    with open(os.path.join(FIXTURES, "onnx_testbed.json"), "w") as f:
        json.dump(fixture, f)
    report["onnxruntime"] = ort.__version__
    report["torch"] = torch.__version__
    with open(os.path.join(OUT, "testbed-models.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
