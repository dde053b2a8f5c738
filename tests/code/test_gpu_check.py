"""`make gpu-check`: the same scoring and training code path, checked here on the CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import gpu_check  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: gpu-check runs for real")
def test_without_cuda_it_says_so_and_succeeds(capsys):
    assert gpu_check.main([]) == 0
    assert "no CUDA device" in capsys.readouterr().out


@pytest.mark.slow  # ~90 s: every part is also tested on its own (test_scoring, test_train, test_distributed)
def test_on_the_cpu_batched_prefix_scores_match_one_pair_plain_scores_and_training_moves(capsys, monkeypatch):
    """With ``--device cpu`` the check compares two independent scoring paths (batched with prefix
    reuse against one pair at a time with full questions), and trains 5 steps."""
    if not (ROOT / "data" / "test.json").exists():
        pytest.skip("the default data is not generated (make data)")
    monkeypatch.chdir(ROOT)
    assert gpu_check.main(["--device", "cpu", "--families", "qwen2_vl", "fastvlm_gemma", "--ranks", "2"]) == 0
    out = capsys.readouterr().out
    assert "| qwen2_vl | full | cpu |" in out and "| fastvlm_gemma | lora | cpu |" in out
    # the data-parallel part, over 2 gloo ranks here (over every GPU where there are 2+)
    assert "5 data-parallel steps over 2 ranks on cpu" in out


def test_an_unknown_family_is_refused(capsys):
    assert gpu_check.main(["--device", "cpu", "--families", "nope"]) == 2
    assert "unknown families ['nope']" in capsys.readouterr().err
