"""scripts/wise_ft.py: a fine-tuned folder's weights moved back toward its base."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import wise_ft  # noqa: E402


def _full(tmp_path: Path) -> tuple[Path, Path]:
    base, tuned = tmp_path / "base", tmp_path / "tuned"
    base.mkdir()
    tuned.mkdir()
    # the base in shards, as save_pretrained writes a larger model; the tuned folder in one file
    save_file({"a": torch.zeros(2, 3)}, base / "model-00001-of-00002.safetensors")
    save_file({"b": torch.full((4,), 2.0)}, base / "model-00002-of-00002.safetensors")
    save_file({"a": torch.ones(2, 3), "b": torch.full((4,), 4.0)}, tuned / "model.safetensors")
    (tuned / "tokenfocus.json").write_text("{}")
    return base, tuned


@pytest.mark.parametrize(
    ("alpha", "a", "b"), [(0.0, 0.0, 2.0), (0.5, 0.5, 3.0), (1.0, 1.0, 4.0), (1.5, 1.5, 5.0)]
)
def test_full_weights_lie_alpha_of_the_way_from_the_base(tmp_path, alpha, a, b):
    base, tuned = _full(tmp_path)
    out = wise_ft.interpolate(tuned, base, alpha, tmp_path / "out")
    w = load_file(out / "model.safetensors")
    assert torch.equal(w["a"], torch.full((2, 3), a)) and torch.equal(w["b"], torch.full((4,), b))
    assert (out / "tokenfocus.json").exists()  # the folder's other files travel with it
    assert torch.equal(load_file(tuned / "model.safetensors")["a"], torch.ones(2, 3))  # tuned untouched


def test_an_adapter_is_scaled_not_rewritten(tmp_path):
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    (tuned / "adapter_config.json").write_text(json.dumps({"r": 16, "lora_alpha": 32}))
    save_file({"lora_A": torch.ones(2, 2)}, tuned / "adapter_model.safetensors")
    out = wise_ft.interpolate(tuned, tmp_path / "no-base", 0.75, tmp_path / "out")
    assert json.loads((out / "adapter_config.json").read_text()) == {"r": 16, "lora_alpha": 24.0}
    assert torch.equal(load_file(out / "adapter_model.safetensors")["lora_A"], torch.ones(2, 2))


def test_a_tensor_the_base_lacks_or_shapes_otherwise_is_named(tmp_path):
    base, tuned = _full(tmp_path)
    save_file({"a": torch.ones(3, 2), "b": torch.ones(4)}, tuned / "model.safetensors")
    with pytest.raises(ValueError, match=r"tensor a \(3, 2\) is of shape \(2, 3\)"):
        wise_ft.interpolate(tuned, base, 0.5, tmp_path / "out")
    save_file({"c": torch.ones(1)}, tuned / "model.safetensors")
    with pytest.raises(ValueError, match="tensor c .* is missing"):
        wise_ft.interpolate(tuned, base, 0.5, tmp_path / "out")
