"""A shipped base's vision tower computes the same bits whatever the host's L1 cache.

NNPACK, which torch gives a stride-1 convolution of a batch of 16 or more when oneDNN is off,
splits its sums into blocks sized to the L1 cache it reads from the CPU (``nnp_hwinfo``): a
32 KiB L1 (AMD Zen 4, older Intel) sums in another order than a 48 KiB one. The test writes other
sizes into that table, in a fresh process, so one host computes what the others would: with
NNPACK on the bits follow it (the control), under the project's settings they must not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tokenfocus.env import CPU_KERNEL_ENV, NATIVE_SWITCH

ROOT = Path(__file__).resolve().parents[2]

TOWER = """
import ctypes, hashlib, json, os
from tokenfocus.env import apply_env, torch_threads
apply_env()
import torch
from tokenfocus.backbones import load_model_and_processor
from tokenfocus.config import load_params

torch_threads(2)  # the project's settings, as every trainer and scorer sets them
bb = load_params("params.yaml").backbones["fastvlm_gemma"]
model, _ = load_model_and_processor(bb.source, bb, slug="fastvlm_gemma")
tower = model.eval().model.vision_tower
x = torch.rand(32, 3, bb.image_size, bb.image_size, generator=torch.Generator().manual_seed(0))

def features():
    with torch.no_grad():
        return hashlib.sha256(tower(pixel_values=x).last_hidden_state.numpy().tobytes()).hexdigest()

lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
try:
    l1 = ctypes.c_uint64.from_address(ctypes.addressof(ctypes.c_uint8.in_dll(lib, "nnp_hwinfo")) + 72)
except ValueError:  # a torch build without NNPACK
    print(json.dumps(None)); raise SystemExit
out = {"nnpack": {}, "project": {}}
for size in (32768, 49152):
    with torch.backends.nnpack.flags(enabled=True):
        features()  # NNPACK reads the host's caches on its first call; then the size is set
        l1.value = size
        out["nnpack"][size] = features()
    out["project"][size] = features()
print(json.dumps(out))
"""


def test_tower_features_do_not_follow_the_l1_cache_size():
    assert (ROOT / "models/base/fastvlm_gemma").is_dir(), "the shipped base is missing: run `make bases`"
    env = {k: v for k, v in os.environ.items() if k not in CPU_KERNEL_ENV and k != NATIVE_SWITCH}
    out = subprocess.run(
        [sys.executable, "-c", TOWER], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    if got is None:
        pytest.skip("this torch build has no NNPACK")
    if got["nnpack"]["32768"] == got["nnpack"]["49152"]:
        pytest.skip("NNPACK's blocking does not split these convolutions' sums here: nothing to tell apart")
    assert got["project"]["32768"] == got["project"]["49152"], "the tower's bits follow the L1 cache's size"
