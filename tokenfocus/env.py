"""Process environment: offline, private defaults, and CPU kernels pinned to one instruction set.

Both are applied by entry points (the CLI, the flows, the scripts, the tests), never on import.
An operator's own values always win: only variables that are unset are filled in.
"""

import logging
import os

log = logging.getLogger(__name__)

#: Telemetry and network switches (see shared stack notes).
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

#: CPU kernels dispatch on the host's instruction set, so by default an AVX-512 machine computes
#: other bits than an AVX2 one, and an Intel one other bits than an AMD one. Each of the three
#: changes the golden pass's bits on its own (measured, docs/benchmarks.md), so all three are
#: pinned to AVX2, which every x86-64 machine of the last decade has:
#: - ATen's own vectorised kernels (softmax, norms, element-wise ops);
#: - oneDNN, which runs the convolutional towers;
#: - MKL's BLAS (every linear layer), in its strict conditional-numerical-reproducibility mode,
#:   whose results do not depend on the data's alignment.
#: All three are read once, when torch first dispatches: set them before torch is imported.
CPU_KERNEL_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "AVX2,STRICT",
}
#: Set to "native" to let the kernels dispatch to the host's best instruction set (faster on
#: some machines, other bits on each).
NATIVE_SWITCH = "TOKENFOCUS_CPU_KERNELS"


def _fill(values: dict[str, str], override: bool) -> None:
    for key, value in values.items():
        if override or key not in os.environ:
            os.environ[key] = value


def apply_offline_env(*, override: bool = False) -> None:
    """Set the telemetry-off variables unless the user already chose a value.

    Args:
        override: replace values the user has set (tests use this for isolation).
    """
    _fill(OFFLINE_ENV, override)


def apply_cpu_kernel_env() -> None:
    """Pin the CPU kernels' dispatch (:data:`CPU_KERNEL_ENV`) unless the operator chose values
    or set ``TOKENFOCUS_CPU_KERNELS=native``. Has an effect only before torch is imported."""
    if os.environ.get(NATIVE_SWITCH, "").lower() != "native":
        _fill(CPU_KERNEL_ENV, override=False)


def apply_env() -> None:
    """Everything an entry point sets before it imports torch: offline and pinned kernels."""
    apply_offline_env()
    apply_cpu_kernel_env()


def check_cpu_kernels() -> str:
    """Warn when torch dispatches to another instruction set than the environment asks for,
    which happens when torch was imported before :func:`apply_env` ran.

    Returns:
        The capability torch dispatches to (e.g. ``AVX2``).
    """
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    wanted = os.environ.get("ATEN_CPU_CAPABILITY", "").upper()
    if wanted and capability != wanted:
        log.warning(
            "CPU kernels dispatch to %s, not ATEN_CPU_CAPABILITY=%s: torch was imported before "
            "tokenfocus.env.apply_env(), so results may differ from other machines' bits",
            capability,
            wanted,
        )
    return capability


def torch_threads(threads: int) -> None:
    """Fix torch's thread count (reductions split by thread: another count, other bits) and
    check the kernels' dispatch."""
    import torch

    torch.set_num_threads(threads)
    check_cpu_kernels()
