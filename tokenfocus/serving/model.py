"""The pyfunc model served by ``mlflow models serve`` (MLflow models-from-code).

MLflow executes this file when it loads the model; ``set_model`` names the model object.
"""

from __future__ import annotations

import json

import mlflow
from mlflow.models import set_model


class TokenFocusEnsemble(mlflow.pyfunc.PythonModel):
    """Records in (prompt, image, optional elements), scores out; bad records raise HTTP 400."""

    def load_context(self, context):
        import os
        from pathlib import Path

        from tokenfocus.env import apply_cpu_kernel_env

        apply_cpu_kernel_env()  # effective only while torch is not loaded yet
        from tokenfocus.serving.ensemble import EnsembleScorer
        from tokenfocus.serving.requests import Limits
        from tokenfocus.serving.server import MicroBatcher

        cfg = json.loads(open(context.artifacts["serve_config"]).read())
        # `tokenfocus serve` passes the serve params of the day; plain `mlflow models serve` gets
        # the defaults baked in at registration.
        threads = int(os.environ.get("TOKENFOCUS_SERVE_THREADS") or cfg.get("threads") or 0) or None
        max_batch = int(os.environ.get("TOKENFOCUS_SERVE_MAX_BATCH") or cfg.get("max_batch") or 1)
        scorer = EnsembleScorer(
            context.artifacts["bundle"], batch_size=cfg.get("batch_size", 32), threads=threads
        )
        self.scorer = MicroBatcher(scorer, max_batch=max_batch)
        self.limits = Limits(None, cfg["max_image_bytes"], cfg["max_pixels"])

        root = os.environ.get("TOKENFOCUS_ALLOWED_ROOT", cfg.get("allowed_root") or "")
        self.limits.allowed_root = Path(root).resolve() if root else None

    def predict(self, context, model_input, params=None):
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from tokenfocus.serving.requests import RecordError, parse_records

        records = (
            model_input.to_dict(orient="records") if hasattr(model_input, "to_dict") else list(model_input)
        )
        try:
            images, prompts, elements = parse_records(records, self.limits)
        except RecordError as exc:
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
        return self.scorer(images, prompts, elements)


set_model(TokenFocusEnsemble())
