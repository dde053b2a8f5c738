"""The served ensemble: every backbone plus the fitted combination, bundled into one folder and
scored in process (what the pyfunc model runs)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from tokenfocus.backbones import META_FILE
from tokenfocus.config import Params


def bundle(params: Params, out: str | Path) -> Path:
    """Copy the ensemble and every backbone it uses into one self-contained folder."""
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(params.stack.out, out / "ensemble")
    slugs = json.loads((out / "ensemble" / "ensemble.json").read_text())["slugs"]
    for slug in slugs:
        src = Path(params.train.out) / slug / "model"
        dest = out / "backbones" / slug
        shutil.copytree(src, dest)
        meta = json.loads((dest / META_FILE).read_text())
        # served as the stack's tables were scored: spatial elements grounded the same way
        meta["grounding"] = dataclasses.asdict(params.score.grounding)
        if (dest / "adapter_config.json").exists():  # LoRA: the base travels too, unless it is a hub id
            base = Path(meta["base"])
            if base.exists():
                shutil.copytree(base, out / "bases" / slug)
                meta["base"] = f"../../bases/{slug}"
        (dest / META_FILE).write_text(json.dumps(meta, indent=1))
    return out


class EnsembleScorer:
    """All backbones plus the fitted combination: the in-process form of the served model."""

    def __init__(self, root: str | Path, *, batch_size: int = 32, threads: int | None = None):
        from tokenfocus.scoring import Scorer
        from tokenfocus.stack import Ensemble

        root = Path(root)
        self.ensemble = Ensemble.load(root / "ensemble")
        self.scorers = {
            s: Scorer.load(root / "backbones" / s, batch_size=batch_size, threads=threads)
            for s in self.ensemble.slugs
        }

    def __call__(self, images, prompts: list[str], elements: list[list[str]]) -> list[dict]:
        """Score pairs with every backbone and combine: one dict per pair."""
        tables = {}
        for slug, scorer in self.scorers.items():
            results = scorer(images, prompts, elements)
            tables[slug] = [
                {
                    "img_path": str(i),
                    "prompt_id": "",
                    "prompt": p,
                    "score": r.score,
                    "distribution": r.distribution,
                    "entropy": r.entropy,
                    "elements": r.elements,
                    "gt_score": None,
                    "gt_elements": {},
                }
                for i, (p, r) in enumerate(zip(prompts, results, strict=True))
            ]
        rows = self.ensemble.combine(tables)
        return [
            {
                "total_score": r["score"],
                "element_scores": r["elements"],
                "backbone_scores": r["backbone_scores"],
                "distribution": r["distribution"],
                "entropy": r["entropy"],
            }
            for r in rows
        ]
