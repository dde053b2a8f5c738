"""A fine-tuned backbone's weights moved back toward its base (WiSE-FT), scored on every split.

Robust fine-tuning (Wortsman et al., 2022): the weights ``(1 - alpha) * base + alpha * tuned``
often keep the fine-tuned model's in-distribution score and the base's robustness off it. Here
the base is the pre-trained tiny base the backbone was fine-tuned from. A LoRA folder keeps its
adapter and scales it (``lora_alpha`` times ``alpha``: the same interpolation, exactly); a fully
fine-tuned folder gets every tensor interpolated. The scored tables land beside the pipeline's
own, in ``OUT/scores/<slug>``, for a stack to be fitted on (docs/styles.md, "WiSE-FT").

    .venv/bin/python scripts/wise_ft.py fastvlm_gemma 0.5 /tmp/wise   # after `make run`
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tokenfocus.env import apply_env  # noqa: E402

apply_env()

ADAPTER = "adapter_config.json"
WEIGHTS = "model.safetensors"


def read_weights(folder: Path) -> dict:
    """Every tensor of a folder's safetensors files (one file or shards)."""
    from safetensors.torch import load_file

    out: dict = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def interpolate(tuned: Path, base: Path, alpha: float, out: Path) -> Path:
    """Write ``tuned``'s folder to ``out`` with its weights at ``alpha`` of the way from ``base``.

    Args:
        tuned: a fine-tuned model folder: a LoRA adapter (``adapter_config.json``) or full weights.
        base: the folder it was fine-tuned from (read only for full weights).
        alpha: 0 is the base, 1 the fine-tuned model; above 1 goes further than fine-tuning went.
        out: the new folder (replaced where it exists).

    Raises:
        ValueError: a tensor of ``tuned`` that ``base`` lacks or holds in another shape (named).
    """
    from safetensors.torch import save_file

    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(tuned, out)
    if (tuned / ADAPTER).exists():  # LoRA: the delta is scaling * B @ A, scaling = lora_alpha / r
        cfg = json.loads((tuned / ADAPTER).read_text())
        cfg["lora_alpha"] = cfg["lora_alpha"] * alpha
        (out / ADAPTER).write_text(json.dumps(cfg, indent=2))
        return out
    base_w, mixed = read_weights(base), {}
    for name, w in read_weights(tuned).items():
        b = base_w.get(name)
        if b is None or b.shape != w.shape:
            found = "missing" if b is None else f"of shape {tuple(b.shape)}"
            raise ValueError(f"{tuned}: tensor {name} {tuple(w.shape)} is {found} in the base {base}")
        mixed[name] = ((1 - alpha) * b.to(w.dtype) + alpha * w).contiguous()
    for f in out.glob("*.safetensors"):
        f.unlink()
    save_file(mixed, out / WEIGHTS, metadata={"format": "pt"})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("slug")
    ap.add_argument("alpha", type=float)
    ap.add_argument("out", type=Path)
    args = ap.parse_args()
    from tokenfocus.backbones import META_FILE
    from tokenfocus.config import load_params
    from tokenfocus.predictions import score_backbone, scored_splits
    from tokenfocus.stages import read_metrics

    params = load_params(ROOT / "params.yaml")
    tuned = Path(params.train.out) / args.slug / "model"
    meta = read_metrics(tuned / META_FILE)
    if "base" not in meta:
        sys.exit(f"{args.slug}: {tuned / META_FILE} records no base to move toward; run `make run` first")
    base = Path(meta["base"])
    model = interpolate(tuned, base, args.alpha, args.out / "models" / args.slug)
    metrics = score_backbone(
        args.slug, params, splits=scored_splits(params), model_dir=model, out=args.out / "scores" / args.slug
    )
    print(json.dumps({split: round(m.get("final", float("nan")), 4) for split, m in metrics.items()}))


if __name__ == "__main__":
    main()
