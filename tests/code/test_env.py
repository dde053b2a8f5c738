"""The environment an entry point sets: offline switches and pinned CPU kernels."""

from __future__ import annotations

import pytest

from tokenfocus import env


@pytest.fixture
def clean(monkeypatch):
    for key in [*env.CPU_KERNEL_ENV, env.NATIVE_SWITCH]:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_apply_env_pins_every_kernel_variable(clean):
    import os

    env.apply_env()
    assert {k: os.environ[k] for k in env.CPU_KERNEL_ENV} == env.CPU_KERNEL_ENV


def test_an_operator_value_wins(clean):
    import os

    clean.setenv("ATEN_CPU_CAPABILITY", "avx512")
    env.apply_env()
    assert os.environ["ATEN_CPU_CAPABILITY"] == "avx512"
    assert os.environ["MKL_CBWR"] == env.CPU_KERNEL_ENV["MKL_CBWR"]


def test_native_switch_leaves_dispatch_to_the_host(clean):
    import os

    clean.setenv(env.NATIVE_SWITCH, "native")
    env.apply_env()
    assert not set(env.CPU_KERNEL_ENV) & set(os.environ)


def test_late_pinning_is_reported(clean, caplog):
    import torch

    clean.setenv(
        "ATEN_CPU_CAPABILITY", "avx2" if torch.backends.cpu.get_cpu_capability() != "AVX2" else "default"
    )
    with caplog.at_level("WARNING"):
        env.check_cpu_kernels()
    assert "torch was imported before" in caplog.text


def test_the_cli_sets_its_own_environment():
    """The entry point, not the test harness, turns telemetry off and pins the kernels: run it
    with none of the variables set (and one the operator chose)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    clean = {k: v for k, v in os.environ.items() if k not in {**env.OFFLINE_ENV, **env.CPU_KERNEL_ENV}}
    clean["HF_HUB_OFFLINE"] = "0"  # the operator's own value
    out = subprocess.run(
        [str(Path(sys.executable).with_name("tokenfocus")), "env"], env=clean, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen["HF_HUB_OFFLINE"] == "0"
    assert {k: seen[k] for k in env.OFFLINE_ENV if k != "HF_HUB_OFFLINE"} == {
        k: v for k, v in env.OFFLINE_ENV.items() if k != "HF_HUB_OFFLINE"
    }
    assert {k: seen[k] for k in env.CPU_KERNEL_ENV} == env.CPU_KERNEL_ENV
    # and numpy's BLAS loaded after the pin, so it runs the pinned kernels, not the host's
    coretype = env.CPU_KERNEL_ENV["OPENBLAS_CORETYPE"]
    assert seen["blas"] and all(b.lower() == f"openblas:{coretype}".lower() for b in seen["blas"]), seen[
        "blas"
    ]


@pytest.mark.parametrize(("value", "enabled"), [("off", False), ("on", True), (None, True)])
def test_torch_threads_switches_onednn_as_the_environment_says(clean, value, enabled):
    import torch

    if value is not None:
        clean.setenv(env.ONEDNN_SWITCH, value)
    before = (torch.get_num_threads(), torch.backends.mkldnn.enabled)
    try:
        env.torch_threads(1)
        assert torch.backends.mkldnn.enabled is enabled
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before[0])
        torch.backends.mkldnn.enabled = before[1]


def test_host_record_names_the_cpu_and_the_packages_without_loading_torch():
    """The record a run logs (MLflow's environment.json): the CPU it ran on and every package's
    version; building it must not import torch, which would fix the kernels' dispatch early."""
    import subprocess
    import sys
    from importlib import metadata

    code = (
        "import json, sys; from tokenfocus.host import host_record; r = host_record(); "
        "print(json.dumps({'record': r, 'torch_loaded': 'torch' in sys.modules}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    got = __import__("json").loads(out.stdout)
    assert got["torch_loaded"] is False
    record = got["record"]
    assert record["packages"]["torch"] == metadata.version("torch")
    assert record["packages"]["peft"] == metadata.version("peft")
    assert record["cpu"]["cores"] >= 1 and record["cpu"]["signature"].startswith("family ")
    if "avx2" in open("/proc/cpuinfo").read():
        assert "avx2" in record["cpu"]["isa"]


def test_the_venv_holds_the_versions_constraints_txt_pins():
    """`make setup` installs constraints.txt: the same commit computes with the same libraries
    on every machine. A package that drifted from its pin (a hand install) is named."""
    from importlib import metadata
    from pathlib import Path

    pins = {}
    for line in (Path(__file__).parents[2] / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower()] = version
    assert {"torch", "transformers", "peft", "numpy", "mlflow", "prefect", "dvc"} <= set(pins)
    drifted = {}
    for name, version in pins.items():
        try:
            installed = metadata.version(name).split("+")[0]
        except metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            drifted[name] = (installed, version)
    assert not drifted, f"installed (left) against pinned (right): {drifted}"
