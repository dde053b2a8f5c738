"""Shared fixtures: a small SynthMuse dataset and offline, isolated settings."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from tokenfocus.env import apply_cpu_kernel_env, apply_offline_env

# The pipeline's kernels, before anything loads numpy or torch (the gate's imports load numpy, and
# OpenBLAS reads its core type once, when it loads): the tests compute what the stages compute.
apply_offline_env(override=True)
apply_cpu_kernel_env()
# `make test` runs two xdist workers on two cores (and stages in subprocesses beside them). By
# default OpenMP's idle threads spin after every parallel region and take the core the other worker
# needs: two concurrent scorings at two threads each took 8.7-9.6 s each, against 2.7-2.9 s with idle
# threads asleep (the same bits: only the waiting changes; docs/benchmarks.md, section 9). Read once,
# when torch loads its OpenMP runtime; subprocesses inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _granted_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        return max(1, min(cores, int(quota) // int(period))) if quota != "max" else cores
    except (OSError, ValueError):
        return cores


# And each worker's torch, where a test does not set its threads, takes its share of the cores, not
# every core the host reports (a CI runner may report more than it grants); stages and scorers that
# set their threads from params.yaml keep them, as the pipeline runs them.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _granted_cores() // _WORKERS)))

from tests.gate import gate, without_counting  # noqa: E402, F401 - gate: a session fixture (trained and blind ensembles)
from tokenfocus.config import SynthConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    os.environ.pop("MLFLOW_RUN_ID", None)


#: The test files that take most of `make test` (a minute or more each on 2 cores), longest first.
#: `make test` runs pytest-xdist with each file on one worker, handed out in collection order
#: (--no-loadscope-reorder); a long file handed out last would leave the other worker idle, so
#: these go first (longest-first list scheduling). Serially, only the order changes.
LONG_FILES = (
    "pipeline/test_dvc.py",
    "flows/test_retrain_flow.py",
    "code/test_distributed.py",
    "pipeline/test_promotion.py",
    "pipeline/test_faults.py",
    "pipeline/test_shipped_bases.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FILES)}

    def order(item) -> int:
        rel = item.path.resolve().relative_to(ROOT / "tests").as_posix()
        return rank.get(rel, len(rank))

    items.sort(key=order)  # stable: within a file, and among the rest, collection order stays


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims width x height: a decompression bomb."""
    import struct
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


SMALL = SynthConfig(seed=5, n_prompts=24, n_test_prompts=4, image_size=64, short_keys=0.25, styled_copies=2)


def repo_styles():
    """The repository's ``styles`` block: the small dataset is drawn, and redrawn in the held-out
    family, as the default one is."""
    from tokenfocus.config import load_params

    return load_params(ROOT / "params.yaml").styles


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    """A small SynthMuse root (120 labelled pairs), generated once per session."""
    from tokenfocus.synth import generate

    root = tmp_path_factory.mktemp("synth") / "data"
    generate(SMALL, root, styles=repo_styles())
    return root


@pytest.fixture
def data_copy(small_data, tmp_path) -> Path:
    """A private, mutable copy of the small dataset."""
    dest = tmp_path / "data"
    shutil.copytree(small_data, dest)
    return dest


#: Tests build bases through the pre-training code path, with a few steps per stage (the default
#: takes ~12 CPU-minutes per backbone and is shipped in the DVC remote, not recomputed).
PRETRAIN_STEPS = {"tower_steps": 2, "steps": 2, "element_steps": 2, "batch_size": 8, "check_scenes": 16}

#: The tiny ViT-tower families stay covered by the tests (the generic path real checkpoints take),
#: beside the default FastVLMs of params.yaml.
VIT_BACKBONES = {
    "idefics3_tiny": {"family": "idefics3", "tuning": "full"},
    "llava_siglip_tiny": {"family": "llava", "tuning": "full"},
    "gemma3_tiny": {
        "family": "gemma3",
        "tuning": "lora",
        "lora": {"r": 16, "alpha": 32, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
    },
}
#: A FastVLM over a Llama language model, fully fine-tuned: no longer in the default ensemble
#: (docs/styles.md: it added nothing the stack could measure), still the tests' Llama-family FastVLM.
TEST_FASTVLMS = {"fastvlm_llama": {"family": "fastvlm", "tuning": "full", "image_size": 64}}
#: Tokenizer kinds and chat templates of real checkpoints (tokenfocus/tiny_families.yaml).
REAL_TOKENIZERS = {
    "qwen2_vl_bpe": {"tokenizer": "byte_bpe", "chat_template": "chatml"},
    "gemma3_spm": {"tokenizer": "metaspace", "chat_template": "gemma"},
    "llava_llama2": {"tokenizer": "metaspace", "chat_template": "llama2"},
}
#: Families that prove the code path real checkpoints take (Qwen2-VL / Qwen2.5-VL's 3-D rotary
#: positions and dynamic resolution, InternVL): built, not pre-trained (issue 15), never in the default.
PATH_BACKBONES = {
    "qwen2_vl_tiny": {"family": "qwen2_vl", "tuning": "full"},
    "qwen2_5_vl_tiny": {
        "family": "qwen2_5_vl",
        "tuning": "lora",
        # gate/up/down_proj also name the MLPs of Qwen2.5-VL's tower: LoRA must not reach them
        "lora": {
            "r": 8,
            "alpha": 16,
            "target_modules": ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"],
        },
    },
    "internvl_tiny": {"family": "internvl", "tuning": "full"},
    # the tokenizers and chat templates of real checkpoints (issue 25): byte-level BPE after ChatML's
    # "assistant\n" (Qwen2), SentencePiece-style Metaspace after Gemma's "model\n" and after Llama 2's
    # " [/INST]"; the word-level bases can hide what these show
    "qwen2_vl_bpe": {"family": "qwen2_vl", "tuning": "full", "tiny": REAL_TOKENIZERS["qwen2_vl_bpe"]},
    "gemma3_spm": {
        "family": "gemma3",
        "tuning": "lora",
        "lora": {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]},
        "tiny": REAL_TOKENIZERS["gemma3_spm"],
    },
    "llava_llama2": {"family": "llava", "tuning": "full", "tiny": REAL_TOKENIZERS["llava_llama2"]},
}
FAMILIES = {
    "idefics3_tiny": "idefics3",
    "llava_siglip_tiny": "llava",
    "gemma3_tiny": "gemma3",
    "fastvlm_llama": "fastvlm",
    "fastvlm_gemma": "fastvlm_gemma",
}


@pytest.fixture(scope="session")
def tiny_params(small_data, tmp_path_factory):
    """Repo params pointed at the small dataset, with tiny backbones built and briefly
    pre-trained once per session (every family of FAMILIES), and those of PATH_BACKBONES built."""
    import dataclasses

    from tokenfocus.config import BackboneConfig, load_params
    from tokenfocus.pretrain import pretrain_base
    from tokenfocus.split import main as split_main
    from tokenfocus.stages import build_stage
    from tokenfocus.tiny import build
    from tokenfocus.typed import build as build_config

    work = tmp_path_factory.mktemp("work")
    p = load_params(ROOT / "params.yaml")
    p.validate = dataclasses.replace(p.validate, data=str(small_data), report=str(work / "validation.json"))
    p.split = dataclasses.replace(p.split, out=str(work / "splits.json"), folds=3)
    p.train = dataclasses.replace(
        p.train,
        out=str(work / "trained"),
        steps=4,
        batch_size=4,
        eval_every=2,
        checkpoint_every=2,
        patience=10,
    )
    p.score = dataclasses.replace(
        p.score, out=str(work / "scores"), batch_size=8, grounding=without_counting(p.score.grounding)
    )
    p.pretrain = dataclasses.replace(p.pretrain, **PRETRAIN_STEPS, init_root=str(work / "init"))
    p.stack = dataclasses.replace(p.stack, out=str(work / "ensemble"))
    p.tracking = dataclasses.replace(
        p.tracking, quality_floor={}
    )  # a 4-step tiny model is below any real floor
    repo = dict(p.backbones)
    p.backbones = {}
    for slug in FAMILIES:
        entry = repo.get(slug) or build_config(
            BackboneConfig, {"source": "", **{**VIT_BACKBONES, **TEST_FASTVLMS}[slug]}, slug
        )
        # a backbone's own step count (params.yaml) would override the few steps of train.steps, its
        # train overrides would tune the tests to it, and its bagging would train each model twice
        p.backbones[slug] = dataclasses.replace(
            entry, source=str(work / "base" / slug), pretrain={}, steps=None, train={}, bagging_seeds=None
        )
    for slug, entry in PATH_BACKBONES.items():
        p.backbones[slug] = build_config(BackboneConfig, {"source": str(work / "base" / slug), **entry}, slug)
    split_main(p.split, small_data)
    for slug in FAMILIES:
        build_stage(slug, p)
        pretrain_base(slug, p)
    for slug in PATH_BACKBONES:
        build(slug, p, out=p.backbone(slug).source)
    return p


def write_tiny_params(
    dest: Path, *, backbones=("idefics3_tiny", "llava_siglip_tiny"), steps: int = 2, data: str = "data"
) -> Path:
    """A params.yaml for pipeline tests: the repo's, with the named backbones and a few steps."""
    import yaml

    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    test_only = {**VIT_BACKBONES, **TEST_FASTVLMS}
    known = {**p["backbones"], **{k: {"image_size": 64, **v} for k, v in test_only.items()}}
    p["backbones"] = {k: {"source": f"models/base/{k}", **known[k]} for k in backbones}
    for entry in p["backbones"].values():
        entry["pretrain"] = {}  # the short test pre-training for every backbone
        entry.setdefault("tiny", {})  # build@<slug> tracks it: DVC needs the key
        entry.pop("lr", None)
        entry.pop("steps", None)  # its own step count would override the few steps below
        entry.pop("train", None)  # nor its own train overrides
        entry.pop("bagging_seeds", None)  # and its bagging would train each model twice
    p["validate"]["data"] = data
    p["train"].update(steps=steps, batch_size=4, eval_every=steps, checkpoint_every=steps)
    p["pretrain"].update(PRETRAIN_STEPS)
    p["tracking"]["promote_bootstrap"] = 10
    p["tracking"]["quality_floor"] = {}  # a 2-step tiny model is below any real floor
    p["split"]["folds"] = 3
    p["score"]["grounding"]["count_categories"] = []  # see without_counting
    dest.write_text(yaml.safe_dump(p, sort_keys=False))
    return dest


@pytest.fixture
def project_dir(small_data, tmp_path, monkeypatch):
    """A working directory laid out like the repo, with tiny params and its own MLflow store."""
    os.symlink(small_data, tmp_path / "data")
    write_tiny_params(tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    # mlflow.set_tracking_uri (tracking.setup) is a process global that outranks the variable: an
    # earlier test's in-process flow left it on that test's store, where a test whose flow runs in
    # another process (the served deployment) then read its challenger. Only where mlflow is loaded.
    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(uri)
    return tmp_path
