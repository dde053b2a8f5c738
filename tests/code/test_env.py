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
