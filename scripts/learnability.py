"""How much of SynthMuse's score can be learned at all, apart from any LVLM: eval/learnability.json.

Usage: python scripts/learnability.py [--steps 3000] [--eval-every 500]

The tiny backbones settle at test SRCC ~0.17 (docs/results.md). This script asks whether that is
their architecture's fault or the task's, with two probes trained on the same train split and
measured on the same val/test splits (docs/tiny-backbones.md discusses the figures):

1. Gradient boosting on measured quantities: what the prompt asks for (groups, counts, sizes,
   colours) and what the image holds (foreground area, connected blobs, which prompt colours
   appear). "text" uses the prompt's features only; "text+image" adds the two image totals; "all"
   adds the colour-presence and count/area mismatch features. This shows the signal is there.
2. A small convolutional network plus a two-layer text encoder whose tokens attend over the
   image cells, trained with MSE on the human score: an architecture built for this task, with a
   tower that learns shapes at 64 px. This shows how much gradient descent gets out of 2,800 noisy
   labelled pairs within a CPU budget. It is a probe, never a backbone: backbones are
   transformers' own classes.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tokenfocus.env import apply_env  # noqa: E402

apply_env()  # before torch loads: the kernels' dispatch is read once
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from scipy import ndimage  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402
from torch import nn  # noqa: E402

from tokenfocus.config import load_params  # noqa: E402
from tokenfocus.images import load_images  # noqa: E402
from tokenfocus.predictions import split_records  # noqa: E402
from tokenfocus.render import COLORS, COUNTS, SIZES  # noqa: E402

SPLITS = ("train", "val", "test")
PALETTE = np.array(list(COLORS.values()), dtype=float)
NUMBER = {w: n for n, w in COUNTS.items()}


def features(record, img: np.ndarray) -> tuple[list[float], list[float], list[float]]:
    """(prompt features, image totals, mismatch features) of one pair; ``img`` is HxWx3 in 0..255."""

    def first_words(category: str) -> list[str]:  # "red circles (color)" -> "red"
        return [e.text.split()[0] for e in record.elements if e.category == category]

    colors = first_words("color")
    counts = [NUMBER.get(w, 1) for w in first_words("counting")]
    sizes = first_words("attribute")
    area = sum(c * SIZES.get(s, 0.1) ** 2 for c, s in zip(counts, sizes, strict=False))
    fg = np.abs(img - img[0, 0]).sum(-1) > 60  # the corner pixel is the plain background
    _, blobs = ndimage.label(fg)
    near = ((img[fg][:, None, :] - PALETTE[None]) ** 2).sum(-1).argmin(1)
    share = np.bincount(near, minlength=len(PALETTE)) / fg.size
    present = [share[list(COLORS).index(c)] > 0.002 for c in colors if c in COLORS]
    text = [len(colors), len(record.elements), sum(counts), area]
    image = [float(fg.mean()), float(blobs)]
    mismatch = [float(np.mean(present)) if present else 1.0, blobs - sum(counts), fg.mean() - 3 * area]
    return text, image, mismatch


def srcc(a, b) -> float:
    return round(float(spearmanr(a, b).statistic), 4)


def boosting(data: dict) -> dict:
    """Test and val SRCC of gradient boosting on growing feature sets."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    def rows(split: str, width: int) -> np.ndarray:
        return np.array([sum(f[:width], []) for f in data[split]["features"]], dtype=float)

    out = {}
    for name, width in (("text", 1), ("text+image", 2), ("all", 3)):
        model = HistGradientBoostingRegressor(max_iter=200, random_state=0)
        model.fit(rows("train", width), data["train"]["y"])
        out[name] = {s: srcc(model.predict(rows(s, width)), data[s]["y"]) for s in ("val", "test")}
    return out


class ProbeNet(nn.Module):
    """Three conv layers (64 px -> 8x8 cells) and a text encoder whose tokens attend to the cells."""

    def __init__(self, vocab: int, width: int = 64):
        super().__init__()
        layers, c_in = [], 3
        for c_out in (32, 64, width):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c_out
        self.cnn = nn.Sequential(*layers)
        self.embed = nn.Embedding(vocab, width, padding_idx=0)
        layer = nn.TransformerEncoderLayer(width, 4, 4 * width, dropout=0.0, batch_first=True)
        self.text = nn.TransformerEncoder(layer, 2)
        self.head = nn.Sequential(nn.Linear(2 * width, width), nn.ReLU(), nn.Linear(width, 1))
        self.scale = width**-0.5

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        cells = self.cnn(images).flatten(2).transpose(1, 2)  # (B, 64 cells, width)
        mask = tokens > 0
        words = self.text(self.embed(tokens), src_key_padding_mask=~mask)
        seen = torch.softmax(words @ cells.transpose(1, 2) * self.scale, -1) @ cells
        pooled = (seen * words * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return self.head(torch.cat([pooled, cells.mean(1)], -1)).squeeze(-1) + 3.0


def network(data: dict, steps: int, eval_every: int, seed: int) -> list[dict]:
    """Train :class:`ProbeNet` on the train split's scores; val/test SRCC every ``eval_every`` steps."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    vocab: dict[str, int] = {}

    def tensors(split):
        ids = [
            [vocab.setdefault(w, len(vocab) + 1) for w in re.findall(r"[a-z]+", t)]
            for t in data[split]["text"]
        ]
        tok = torch.zeros(len(ids), max(map(len, ids)), dtype=torch.long)
        for i, row in enumerate(ids):
            tok[i, : len(row)] = torch.tensor(row)
        img = torch.tensor(np.stack(data[split]["pixels"]) / 255.0, dtype=torch.float32).permute(0, 3, 1, 2)
        return img, tok, torch.tensor(data[split]["y"], dtype=torch.float32)

    sets = {s: tensors(s) for s in SPLITS}
    model = ProbeNet(len(vocab) + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    img, tok, y = sets["train"]
    history, cpu, t0 = [], 0.0, time.process_time()
    for step in range(1, steps + 1):
        idx = torch.as_tensor(rng.choice(len(y), 32))
        loss = F.mse_loss(model(img[idx], tok[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % eval_every == 0 or step == steps:
            cpu += time.process_time() - t0  # training time only: evaluation is not counted
            with torch.no_grad():
                row = {s: srcc(model(sets[s][0], sets[s][1]), sets[s][2]) for s in ("val", "test")}
            history.append({"step": step, "train_cpu_minutes": round(cpu / 60, 2), **row})
            print(history[-1], flush=True)
            t0 = time.process_time()
    return history


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="eval/learnability.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    params = load_params()
    data = {}
    for split in SPLITS:
        records = split_records(params, split)
        images = load_images(Path(params.validate.data) / "images", [r.img_path for r in records])
        pixels = [np.asarray(images[r.img_path], dtype=float) for r in records]
        data[split] = {
            "y": [r.total_score for r in records],
            "text": [" ; ".join(r.element_score).lower() for r in records],
            "pixels": pixels,
            "features": [list(features(r, p)) for r, p in zip(records, pixels, strict=True)],
        }
    result = {"boosting": boosting(data)}
    print(result, flush=True)
    result["network"] = network(data, args.steps, args.eval_every, args.seed)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
