"""Offline, private defaults for every library the pipeline touches."""

import os

#: Telemetry and network switches (see shared stack notes). Applied by entry points, never on import.
OFFLINE_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",  # MLflow ignores "1", it wants "true"
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # A slow CI machine needs more than the 20 s default to start Prefect's temporary server.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}


def apply_offline_env(*, override: bool = False) -> None:
    """Set the telemetry-off variables unless the user already chose a value.

    Args:
        override: replace values the user has set (tests use this for isolation).
    """
    for key, value in OFFLINE_ENV.items():
        if override or key not in os.environ:
            os.environ[key] = value
