"""The served ensemble: a pyfunc model from code, registration, aliases and promotion.

The model is code of this package (``tokenfocus/serving_model.py``, models-from-code), not a
pickle of live objects. Its artifacts are the ensemble folder (JSON + skops) and one folder per
backbone (safetensors + processor files, or a LoRA adapter plus its base).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from tokenfocus.backbones import META_FILE
from tokenfocus.config import Params, ServeConfig, TrackingConfig
from tokenfocus.images import ImageError, open_image

log = logging.getLogger(__name__)
CHALLENGER, CHAMPION = "challenger", "champion"
PIP_REQUIREMENTS = [
    "torch",
    "transformers>=5,<6",
    "peft",
    "scikit-learn",
    "skops",
    "pillow",
    "pandas",
    "mlflow>=3",
]


class RecordError(ValueError):
    """A request record that cannot be scored; the message names the record and the problem."""


# -- bundling ---------------------------------------------------------------------------------
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
        if (dest / "adapter_config.json").exists():  # LoRA: the base travels too, unless it is a hub id
            base = Path(meta["base"])
            if base.exists():
                shutil.copytree(base, out / "bases" / slug)
                meta["base"] = f"../../bases/{slug}"
        (dest / META_FILE).write_text(json.dumps(meta, indent=1))
    return out


# -- request parsing --------------------------------------------------------------------------
@dataclass
class Limits:
    allowed_root: Path | None
    max_image_bytes: int
    max_pixels: int


def limits_from(cfg: ServeConfig) -> Limits:
    return Limits(
        Path(cfg.allowed_root).resolve() if cfg.allowed_root else None, cfg.max_image_bytes, cfg.max_pixels
    )


def confined_path(value: str, root: Path | None, where: str) -> Path:
    """Resolve a path under the allowed root, refusing ``..`` escapes and outside absolutes."""
    if root is None:
        raise RecordError(f"{where}: image paths are disabled (no allowed root); send base64")
    if "\x00" in value:
        raise RecordError(f"{where}: image path contains a NUL byte")
    candidate = (root / value).resolve() if not PurePosixPath(value).is_absolute() else Path(value).resolve()
    if candidate != root and root not in candidate.parents:
        raise RecordError(f"{where}: image path {value!r} is outside the allowed root")
    return candidate


def decode_image(value: Any, limits: Limits, where: str):
    """A base64 PNG/JPEG or a path under the allowed root, decoded with the size limits."""
    if not isinstance(value, str) or not value.strip():
        raise RecordError(f"{where}: 'image' must be a base64 string or a path")
    text = value.strip()
    if text.startswith("data:"):
        text = text.split(",", 1)[-1]
    looks_b64 = (
        len(text) > 64 and "/" not in text[:8] and not text.lower().endswith((".png", ".jpg", ".jpeg"))
    )
    try:
        if looks_b64:
            if len(text) * 3 // 4 > limits.max_image_bytes:
                raise RecordError(f"{where}: image larger than {limits.max_image_bytes} bytes")
            try:
                data = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise RecordError(f"{where}: 'image' is neither valid base64 nor a path") from None
            return open_image(
                data, max_pixels=limits.max_pixels, max_bytes=limits.max_image_bytes, name=where
            )
        path = confined_path(text, limits.allowed_root, where)
        return open_image(
            path, max_pixels=limits.max_pixels, max_bytes=limits.max_image_bytes, name=f"{where} ({text})"
        )
    except ImageError as exc:
        raise RecordError(str(exc)) from None


def parse_records(records: list[dict], limits: Limits) -> tuple[list, list[str], list[list[str]]]:
    """Validate request records; raise :class:`RecordError` naming the first bad one."""
    images, prompts, elements = [], [], []
    for i, rec in enumerate(records):
        where = f"record {i}"
        prompt = rec.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise RecordError(f"{where}: missing or empty 'prompt'")
        els = rec.get("elements")
        if els is None or (isinstance(els, float) and math.isnan(els)):
            els = []
        if isinstance(els, str):
            try:
                els = json.loads(els) if els.strip() else []
            except json.JSONDecodeError:
                raise RecordError(f"{where}: 'elements' is not a JSON list") from None
        if isinstance(els, np.ndarray):
            els = els.tolist()
        if not isinstance(els, list) or not all(isinstance(e, str) and e.strip() for e in els):
            raise RecordError(f"{where}: 'elements' must be a list of non-empty strings")
        images.append(decode_image(rec.get("image"), limits, where))
        prompts.append(prompt)  # the scorer cuts overlong prompts, with a warning
        elements.append(list(dict.fromkeys(els)))  # duplicates scored once
    return images, prompts, elements


# -- the ensemble scorer ------------------------------------------------------------------------
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


# -- logging, registering, promoting ------------------------------------------------------------
def _example_frame(params: Params):
    import pandas as pd

    from tokenfocus.predictions import split_records

    r = split_records(params, "test")[0]
    data = (Path(params.validate.data) / "images" / r.img_path).read_bytes()
    return pd.DataFrame(
        [
            {
                "prompt": r.prompt,
                "image": base64.b64encode(data).decode(),
                "elements": [e.key for e in r.elements][:3],
            }
        ]
    )


def log_and_register(params: Params, *, metrics: dict[str, float] | None = None, pid: str | None = None):
    """Log the ensemble as a pyfunc model in an ``ensemble`` child run, register it, alias it challenger.

    Returns:
        The new registered model version.
    """
    import tempfile

    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types.schema import Array, ColSpec, Schema

    from tokenfocus.tracking import child_run, setup

    tc = params.tracking
    setup(tc)  # fail before any work if the tracking store is unreachable: nothing half-registered
    with tempfile.TemporaryDirectory() as tmp:
        root = bundle(params, Path(tmp) / "bundle")
        serve_cfg = Path(tmp) / "serve_config.json"
        serve_cfg.write_text(
            json.dumps(
                {
                    "batch_size": params.score.batch_size,
                    "allowed_root": "",
                    "max_image_bytes": params.serve.max_image_bytes,
                    "max_pixels": params.serve.max_pixels,
                    "max_batch": params.serve.max_batch,
                }
            )
        )
        example = _example_frame(params)
        scorer = EnsembleScorer(root)
        images, prompts, elements = parse_records(
            example.to_dict(orient="records"), limits_from(params.serve)
        )
        # Explicit input schema: `elements` may be left out of a request (but, when one record of a
        # request has it, give [] to the others: the schema check runs before our code).
        inputs = Schema(
            [
                ColSpec("string", "prompt"),
                ColSpec("string", "image"),
                ColSpec(Array("string"), "elements", required=False),
            ]
        )
        outputs = infer_signature(example, scorer(images, prompts, elements)).outputs
        signature = ModelSignature(inputs=inputs, outputs=outputs)
        with child_run(tc, "ensemble", kind="stack", new=True, pid=pid) as run:
            ens = json.loads((root / "ensemble" / "ensemble.json").read_text())
            mlflow.log_params(
                {
                    "method": ens["method"],
                    "backbones": ",".join(ens["slugs"]),
                    "features": ",".join(ens["features"]),
                    "element_method": ens["element_method"],
                }
            )
            if "ridge" in ens:
                coef = {f"coef_{i}": c for i, c in enumerate(ens["ridge"]["coef"])}
                mlflow.log_metrics(
                    {
                        **coef,
                        "ridge_alpha": ens["ridge"]["alpha"],
                        "ridge_intercept": ens["ridge"]["intercept"],
                    }
                )
            mlflow.log_dict(ens, "ensemble.json")
            if metrics:
                mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, int | float)})
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(Path(__file__).with_name("serving_model.py")),
                artifacts={"bundle": str(root), "serve_config": str(serve_cfg)},
                code_paths=[str(Path(__file__).parent)],
                signature=signature,
                input_example=example,
                pip_requirements=PIP_REQUIREMENTS,
                registered_model_name=tc.model_name,
            )
            run_id = run.info.run_id
    client = MlflowClient()
    version = client.get_model_version(tc.model_name, str(info.registered_model_version))
    client.set_registered_model_alias(tc.model_name, CHALLENGER, version.version)
    client.set_model_version_tag(tc.model_name, version.version, "run_id", run_id)
    log.info("registered %s version %s as %s", tc.model_name, version.version, CHALLENGER)
    return version


def describe(
    params: Params, version: str, summary: dict, decision: dict, *, pid: str | None, headline: dict
) -> str:
    """Descriptions of the registered model and the new version, the parent run's headline
    metrics and results table, and the ensemble run's plots. Returns the version description."""
    import mlflow
    from mlflow import MlflowClient

    from tokenfocus.report import main as report
    from tokenfocus.tracking import child_run, data_digest, parent_run_id

    tc = params.tracking
    client = MlflowClient()
    ens = summary.get("test", {})
    gain = summary.get("vs_best_single", {})
    what = (
        f"TokenFocus ensemble ({summary.get('method', '?')} stack) of "
        f"{', '.join(params.backbones)}: each backbone scores the first answer token of a 1..5 "
        "question and of one yes/no question per element; the stacker combines their scores "
        "and element probabilities."
    )
    lines = [
        what,
        f"Data: data.dvc digest {data_digest()}.",
        "Test (SynthMuse test split): "
        + ", ".join(
            f"{k} {ens[k]:.4f}" for k in ("final", "srcc", "plcc", "element_acc") if ens.get(k) is not None
        )
        + ".",
    ]
    if gain:
        lines.append(
            f"vs best single ({gain['backbone']}): NTIRE {gain['diff']:+.4f}, "
            f"95% CI [{gain['ci_low']:+.4f}, {gain['ci_high']:+.4f}]."
        )
    lines.append(
        f"Promotion: {'promoted to champion' if decision.get('promoted') else 'not promoted'} "
        f"({decision.get('reason', '')})."
    )
    text = "\n".join(lines)
    client.update_model_version(tc.model_name, version, description=text)
    client.update_registered_model(
        tc.model_name,
        description=what + f" Aliases: '{CHALLENGER}' is the latest registered, '{CHAMPION}' the "
        "served one, moved only when a challenger beats it on the test split (paired bootstrap).",
    )
    parent = parent_run_id(tc, pid)
    client.log_batch(parent, metrics=[mlflow.entities.Metric(k, v, 0, 0) for k, v in headline.items()])
    client.log_text(parent, report(params, write=False), "results.md")
    rows_path = Path(params.stack.out) / "test_predictions.json"
    if rows_path.exists():
        from tokenfocus.plots import figures

        rows = json.loads(rows_path.read_text())
        figs = figures(rows, "ensemble")
        import matplotlib.pyplot as plt

        fitted = json.loads((Path(params.stack.out) / "ensemble.json").read_text())
        coef = fitted.get("ridge")
        if coef:
            names = [f"{s}:{f}" for s in fitted["slugs"] for f in fitted["features"]]
            fig, ax = plt.subplots(figsize=(6, 0.25 * len(names) + 1))
            ax.barh(names, coef["coef"])
            ax.set(xlabel="ridge coefficient (standardised features)", title="stacker")
            fig.tight_layout()
            figs["stacker_coefficients.png"] = fig
        with child_run(tc, "ensemble", kind="stack", pid=pid):
            for name, fig in figs.items():
                mlflow.log_figure(fig, f"plots/{name}")
                plt.close(fig)
    return text


def _alias(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _finished(client, version) -> tuple[bool, str]:
    """Whether the version's run, and its pipeline's parent run, both ended well."""
    run = client.get_run(version.run_id)
    if run.info.status != "FINISHED":
        return False, f"run {version.run_id} is {run.info.status}"
    parent = run.data.tags.get("mlflow.parentRunId")
    if parent and client.get_run(parent).info.status == "FAILED":
        return False, f"pipeline run {parent} FAILED"
    return True, "finished"


def _num(x) -> float:
    return float("nan") if x is None else float(x)


def paired_bootstrap(a_rows: list[dict], b_rows: list[dict], *, n: int, seed: int) -> dict[str, float]:
    """NTIRE score of two prediction tables on the same pairs, and a bootstrap CI of b - a."""
    from tokenfocus.predictions import metrics_of

    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n):
        idx = rng.integers(0, len(a_rows), len(a_rows))
        ma, mb = metrics_of([a_rows[i] for i in idx]), metrics_of([b_rows[i] for i in idx])
        diffs.append(_num(mb["final"]) - _num(ma["final"]))
    a, b = _num(metrics_of(a_rows)["final"]), _num(metrics_of(b_rows)["final"])
    lo, hi = np.nanpercentile(diffs, [2.5, 97.5])
    return {
        "champion_final": a,
        "challenger_final": b,
        "diff": b - a,
        "ci_low": float(lo),
        "ci_high": float(hi),
    }


def version_rows(tc: TrackingConfig, version, params: Params) -> list[dict]:
    """A registered version's predictions on the current test split."""
    import mlflow

    from tokenfocus.images import load_images
    from tokenfocus.predictions import split_records

    model = mlflow.pyfunc.load_model(f"models:/{tc.model_name}/{version.version}")
    scorer: EnsembleScorer = model.unwrap_python_model().scorer
    records = split_records(params, "test")
    images = load_images(Path(params.validate.data) / "images", [r.img_path for r in records])
    out = scorer(
        [images[r.img_path] for r in records],
        [r.prompt for r in records],
        [[e.key for e in r.elements] for r in records],
    )
    return [
        {
            "img_path": r.img_path,
            "score": o["total_score"],
            "elements": o["element_scores"],
            "gt_score": r.total_score,
            "gt_elements": r.element_score,
        }
        for r, o in zip(records, out, strict=True)
    ]


def promote(params: Params, *, min_delta: float = 0.0, rows_of=None) -> dict[str, Any]:
    """Move ``champion`` to the challenger only if it is better on the test split (NTIRE score).

    A challenger whose run failed or did not finish is never promoted. With no champion, a
    finished challenger becomes champion. The decision and its figures are returned, written to
    ``eval/promotion.json`` and set as tags on the challenger version.

    Args:
        min_delta: how much higher the challenger's test NTIRE score must be.
        rows_of: ``(tracking_config, version, params) -> prediction rows``; defaults to loading
            the version from the registry and scoring the test split.
    """
    rows_of = rows_of or version_rows
    from mlflow import MlflowClient

    from tokenfocus.evalmuse import write_json_atomic
    from tokenfocus.tracking import setup

    tc = params.tracking
    setup(tc)
    client = MlflowClient()
    challenger = _alias(client, tc.model_name, CHALLENGER)
    if challenger is None:
        raise ValueError(f"{tc.model_name} has no '{CHALLENGER}' version to promote")
    champion = _alias(client, tc.model_name, CHAMPION)
    decision: dict[str, Any] = {
        "challenger": challenger.version,
        "champion_before": champion.version if champion else None,
    }
    ok, why = _finished(client, challenger)
    if not ok:
        decision.update(promoted=False, reason=f"challenger not promotable: {why}")
    elif champion is None:
        decision.update(promoted=True, reason="no champion yet")
    elif champion.version == challenger.version:
        decision.update(promoted=False, reason="challenger is already champion")
    else:
        try:
            champion_rows = rows_of(tc, champion, params)
        except Exception as exc:  # a champion that cannot even be loaded cannot serve either
            champion_rows = None
            decision.update(promoted=True, reason=f"champion v{champion.version} cannot be loaded: {exc}")
    if "promoted" not in decision:
        figs = paired_bootstrap(
            champion_rows,
            rows_of(tc, challenger, params),
            n=tc.promote_bootstrap,
            seed=tc.promote_seed,
        )
        decision.update(figs)
        better = bool(figs["diff"] > min_delta)  # NaN (undefined scores) is never better
        decision.update(
            promoted=better,
            reason=("challenger better" if better else "challenger not better")
            + f" on test NTIRE score by {figs['diff']:+.4f} (95% CI {figs['ci_low']:+.4f}..{figs['ci_high']:+.4f})",
        )
    if decision["promoted"]:
        client.set_registered_model_alias(tc.model_name, CHAMPION, challenger.version)
    decision["champion_after"] = challenger.version if decision["promoted"] else decision["champion_before"]
    for k in ("promoted", "reason"):
        client.set_model_version_tag(tc.model_name, challenger.version, f"promotion.{k}", str(decision[k]))
    write_json_atomic("eval/promotion.json", decision)
    log.info("promotion: %s", decision["reason"])
    return decision
