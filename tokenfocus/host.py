"""The host a run computes on: its CPU, the kernels' pins in force and the installed packages.

What MLflow records with every run (``environment.json``) and ``tokenfocus env`` prints, so two
runs whose bits part can be compared flag by flag and package by package.
"""

import os

from tokenfocus.env import CPU_KERNEL_ENV, NATIVE_SWITCH

#: The CPU flags that decide which code the kernels may dispatch to (AVX2 is the pinned path; the
#: rest are what an unpinned library could pick instead, or what a host's bits were seen to part on).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile")


def cpuinfo() -> dict[str, str]:
    """The first processor's ``/proc/cpuinfo`` fields ({} where it cannot be read)."""
    try:
        text = open("/proc/cpuinfo", encoding="utf-8", errors="replace").read()  # noqa: SIM115
    except OSError:
        return {}
    first = text.split("\n\n", 1)[0]
    return {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in first.splitlines()) if k.strip()}


def host_record(*, packages: bool = True) -> dict:
    """What a run computed on: the CPU, the kernels' dispatch and the installed packages.

    Why: the pinned kernels make most hosts compute the same bits, but a host was seen whose
    fine-tuning parted from the lock's (docs/clean-runs.md). A run that records its host and
    package versions can be compared with another package by package and flag by flag.

    Args:
        packages: include every installed distribution's version (a ``pip freeze``).

    Returns:
        ``cpu`` (vendor, model name and number, the :data:`ISA_FLAGS` it has, logical cores), ``python``,
        ``platform``, ``kernels`` (the :data:`CPU_KERNEL_ENV` values in force, and torch's
        dispatch where torch is loaded) and, with ``packages``, ``packages`` (name: version).
    """
    import platform
    import sys
    from importlib import metadata

    info = cpuinfo()
    flags = set(info.get("flags", "").split())
    kernels = {k: os.environ.get(k) for k in [*CPU_KERNEL_ENV, NATIVE_SWITCH]}
    if "torch" in sys.modules:  # never imported here: importing it would fix its dispatch too early
        kernels["torch_capability"] = sys.modules["torch"].backends.cpu.get_cpu_capability()
    record = {
        "cpu": {
            "vendor": info.get("vendor_id", platform.processor() or "unknown"),
            "model": info.get("model name", "unknown"),
            # a model name can be generic (a cloud's "Intel Xeon Processor"); the numbers are not
            "signature": "family {} model {} stepping {}".format(
                *(info.get(k, "?") for k in ("cpu family", "model", "stepping"))
            ),
            "isa": [f for f in ISA_FLAGS if f in flags],
            "cores": os.cpu_count(),
        },
        "python": platform.python_version(),
        "platform": platform.platform(),
        "kernels": kernels,
    }
    if packages:
        found = {(d.metadata["Name"] or "").lower(): d.version for d in metadata.distributions()}
        record["packages"] = dict(sorted((k, v) for k, v in found.items() if k))
    return record
