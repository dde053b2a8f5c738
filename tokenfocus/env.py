"""Process environment: offline, private defaults, and CPU kernels pinned to one code path.

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

#: CPU kernels dispatch on the host's instruction set and vendor, so by default an AVX-512 machine
#: computes other bits than an AVX2 one, and an Intel one other bits than an AMD one (measured,
#: docs/benchmarks.md). Each library is pinned to a code path that is the same on every x86-64
#: machine of the last decade:
#: - ATen's own vectorised kernels (softmax, norms, element-wise ops): AVX2;
#: - MKL's BLAS (every linear layer): its vendor-neutral COMPATIBLE branch, in the strict mode whose
#:   results depend neither on the data's alignment nor on the thread count. ``AVX2`` is no pin
#:   across vendors: on a non-Intel CPU MKL ignores it and falls back to its AUTO branch;
#: - oneDNN, which would run the convolutions with kernels blocked for the host: switched off
#:   (:data:`ONEDNN_SWITCH`, read by :func:`torch_threads`), so they run as im2col plus MKL's GEMM;
#:   its instruction set is capped as well, for any op that still reaches it;
#: - OpenBLAS, numpy's and scipy's BLAS (the stacker, the logistic fit): its Haswell kernels;
#: - numpy's own kernels (the logistic fit's ``exp``, the stacker's ``log``): its AVX2 level. On an
#:   AVX-512 host they run SVML, whose last digits differ from the AVX2 code's (measured: PLCC's);
#:   numpy ignores a feature the host lacks or its build does not name.
#: MKL's vector maths stays unpinnable: its vendor-neutral square root starts from ``rsqrtps``,
#: an estimate each CPU maker computes its own way, so training avoids it (``train.trainer.adamw``).
#: The variables are read once, when their library loads: set them before torch or numpy is imported.
CPU_KERNEL_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "COMPATIBLE,STRICT",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "TOKENFOCUS_ONEDNN": "off",
    "OPENBLAS_CORETYPE": "Haswell",
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
}
#: ``off`` runs convolutions without oneDNN (torch.backends.mkldnn), ``on`` with it.
ONEDNN_SWITCH = "TOKENFOCUS_ONEDNN"
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
    """Fix torch's thread count (reductions split by thread: another count, other bits), switch
    oneDNN as :data:`ONEDNN_SWITCH` says, NNPACK off unless the kernels run native, and check the
    kernels' dispatch.

    Args:
        threads: torch's intra-op threads.
    """
    import torch

    torch.set_num_threads(threads)
    # A runtime flag, not an environment variable torch reads: it is set here, where every
    # trainer and scorer fixes its threads.
    torch.backends.mkldnn.enabled = os.environ.get(ONEDNN_SWITCH, "on").lower() != "off"
    # NNPACK takes a stride-1 convolution of a batch of 16 or more when oneDNN is off, and splits
    # its sums into blocks sized to the host's L1 cache: a 32 KiB L1 (AMD Zen 4, older Intel) and a
    # 48 KiB one (newer Intel) sum in another order (measured: the tower's features at batch 32).
    # Off with the pins, so convolutions run as im2col plus MKL's GEMM at every batch size.
    torch.backends.nnpack.set_flags(os.environ.get(NATIVE_SWITCH, "").lower() == "native")
    check_cpu_kernels()
