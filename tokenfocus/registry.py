"""Logging, registering and describing the served ensemble (a pyfunc model from code); promotion
between its versions is :mod:`tokenfocus.promote`.

The model is code of this package (``tokenfocus/serving/model.py``, models-from-code), not a
pickle of live objects. Its artifacts are the ensemble folder (JSON + skops) and one folder per
backbone (safetensors + processor files, or a LoRA adapter plus its base).
"""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

from tokenfocus.config import Params
from tokenfocus.promote import CHALLENGER, CHAMPION, SPLITS_ARTIFACT, rule_text
from tokenfocus.serving.ensemble import EnsembleScorer, bundle
from tokenfocus.serving.requests import limits_from, parse_records
from tokenfocus.split import trained_on

log = logging.getLogger(__name__)
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
                    "element_features": ",".join(ens.get("element_features", [])),
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
            # which prompts it trained on: a later promotion refuses to test it on any of them
            splits = json.loads(Path(params.split.out).read_text())
            mlflow.log_dict(
                {"digest": splits.get("digest"), "trained_on": trained_on(params.split.out)}, SPLITS_ARTIFACT
            )
            if metrics:
                mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, int | float)})
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(Path(__file__).with_name("serving") / "model.py"),
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
    client.set_model_version_tag(tc.model_name, version.version, "split.digest", str(splits.get("digest")))
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
    if gain and all(gain.get(k) is not None for k in ("diff", "ci_low", "ci_high")):
        lines.append(
            f"vs best single ({gain['backbone']}): NTIRE {gain['diff']:+.4f}, "
            f"95% CI [{gain['ci_low']:+.4f}, {gain['ci_high']:+.4f}]."
        )
    lines.append(
        f"Promotion: {'promoted to champion' if decision.get('promoted') else 'not promoted'} "
        f"({decision.get('reason', '')}). Rule: {decision.get('rule', rule_text(tc))}"
        + (" (forced)." if decision.get("forced") else ".")
    )
    text = "\n".join(lines)
    client.update_model_version(tc.model_name, version, description=text)
    client.update_registered_model(
        tc.model_name,
        description=what + f" Aliases: '{CHALLENGER}' is the latest registered, '{CHAMPION}' the "
        f"served one. Promotion rule: {rule_text(tc)}.",
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
            from tokenfocus.pair_features import design_names

            names = design_names(fitted["slugs"], fitted["features"], fitted.get("element_features", []))
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
