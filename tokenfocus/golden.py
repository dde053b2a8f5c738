"""The golden pass: one fixed forward and backward of a base through the training loss, hashed.

CPU kernels dispatch on the host's instruction set, so the same code and data give other bits on
another x86-64 machine unless the dispatch is pinned (:mod:`tokenfocus.env`). This pass is what a
test compares with a committed hash: a machine whose kernels drift fails it, before it rewrites
``docs/results.md`` and ``dvc.lock``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

#: What the pass is pinned to; changing any of these changes the golden hashes.
GOLDEN_SLUG = "fastvlm_gemma"
GOLDEN_PAIRS = 8


def _digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().to(torch.float32).cpu().numpy().tobytes())
    return h.hexdigest()


#: MKL asks these two functions whether the CPU is an Intel one, and picks its code by the answer.
_MKL_VENDOR_SHIM = """
int mkl_serv_intel_cpu_true(void) {{ return {answer}; }}
int mkl_serv_intel_cpu(void) {{ return {answer}; }}
"""


def host_is_intel() -> bool:
    """Whether ``/proc/cpuinfo`` names an Intel CPU (False where it cannot be read)."""
    from tokenfocus.host import cpuinfo

    return cpuinfo().get("vendor_id") == "GenuineIntel"


def mkl_vendor_shim(claims_intel: bool, directory: str | Path) -> Path | None:
    """Build a library that, preloaded (``LD_PRELOAD``), answers MKL's vendor check as told.

    One host can then compute what MKL computes on the other vendor's CPUs: on an AMD host, a
    shim claiming Intel reproduced the Intel host's bits exactly (docs/benchmarks.md).

    Args:
        claims_intel: what the shim answers.
        directory: where to write the source and the library.

    Returns:
        The library's path, or None where no C compiler is on the PATH.
    """
    import shutil
    import subprocess

    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = "intel" if claims_intel else "other"
    source = directory / f"mkl_vendor_{name}.c"
    source.write_text(_MKL_VENDOR_SHIM.format(answer=int(claims_intel)))
    library = directory / f"libmkl_vendor_{name}.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(library), str(source)], check=True)
    return library


def golden_pass(
    params_path: str | Path = "params.yaml",
    *,
    slug: str = GOLDEN_SLUG,
    pairs: int = GOLDEN_PAIRS,
    gemm: str | None = None,
) -> dict[str, str | float]:
    """Run the trainer's loss on the first ``pairs`` labelled pairs, backward, and hash it.

    The batch is the first ``pairs`` records of the data's ``train_list.json`` with their first
    element, scored at the last training step (every loss term on), through the same
    :class:`~tokenfocus.train.Trainer` set-up as a real run: threads, seed, LoRA and all.

    Args:
        params_path: the project's params (its ``backbones.<slug>.source`` must exist).
        slug: the backbone.
        pairs: how many pairs.
        gemm: whose products the pass runs on (``mkl``, ``openblas``); None: ``train.gemm``, as
            fine-tuning runs them.

    Returns:
        ``logits`` and ``grads`` (sha256 of the float32 bytes), the ``loss`` value and the
        ``capability`` the CPU kernels dispatched to.
    """
    import dataclasses

    from tokenfocus.config import load_params
    from tokenfocus.config.model import check_gemm
    from tokenfocus.evalmuse import load_records
    from tokenfocus.images import load_images
    from tokenfocus.train import Trainer

    params = load_params(params_path)
    if gemm is not None:
        check_gemm("--gemm", gemm)
        params.train = dataclasses.replace(params.train, gemm=gemm)
    trainer = Trainer(slug, params)
    trainer.setup()
    data = Path(params.validate.data)
    recs = load_records(data / "train_list.json")[:pairs]
    trainer.images = load_images(data / "images", [r.img_path for r in recs])
    keys = [r.elements[0].key for r in recs]
    captured: list[torch.Tensor] = []
    head = trainer.model.get_output_embeddings()
    hook = head.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with trainer.products():  # as the run computes it (train.gemm)
            out = trainer._loss(recs, keys, trainer.cfg.steps)
            out["loss"].backward()
    finally:
        hook.remove()
    grads = [p.grad for _, p in sorted(trainer.model.named_parameters()) if p.grad is not None]
    return {
        "logits": _digest(captured),
        "grads": _digest(grads),
        "loss": float(out["loss"].detach()),
        "capability": torch.backends.cpu.get_cpu_capability(),
    }


def golden_trajectory(
    params_path: str | Path = "params.yaml", *, slug: str = GOLDEN_SLUG, steps: int = 10
) -> dict[str, object]:
    """Run the first ``steps`` optimizer steps of a real fine-tuning and hash the weights after each.

    The golden pass covers one forward and backward; this covers what a whole run adds to it: the
    batches of every step (their shapes, the redrawn images, the counterfactual questions), the
    clipping, AdamW and the schedule. Two hosts whose fine-tuned folders differ find here the
    first step at which they part, in minutes. It is the trainer's own loop
    (:meth:`~tokenfocus.train.Trainer.run`, writing to a scratch folder): a hook on the optimizer
    hashes the trainable weights after each step, so nothing here can drift from training.

    Args:
        params_path: the project's params (its ``backbones.<slug>.source`` must exist).
        slug: the backbone.
        steps: how many steps, from step 0 (at most ``train.steps``).

    Returns:
        ``weights``: per step, sha256 (12 hex digits) of the trainable parameters' float32 bytes
        after it; ``loss``: the training loss (every bit, as a float's hex form) of each step the
        trainer logs (``train.log_every``), by step; ``capability``: the CPU kernels' dispatch.
    """
    import tempfile

    from tokenfocus.config import load_params
    from tokenfocus.train import Trainer

    params = load_params(params_path)
    losses: dict[int, str] = {}

    def log(metrics: dict, step: int) -> None:
        if "train_loss" in metrics:
            losses[step] = float(metrics["train_loss"]).hex()

    with tempfile.TemporaryDirectory(prefix="tokenfocus-golden-") as scratch:
        trainer = Trainer(slug, params, out=Path(scratch) / slug, log_fn=log)
        if not 0 < steps <= trainer.cfg.steps:
            raise ValueError(f"{slug}: --steps must be 1..train.steps ({trainer.cfg.steps}), not {steps}")
        trainer.setup()
        weights: list[str] = []
        trainer.opt.register_step_post_hook(lambda *_: weights.append(_digest(trainer.trainable)[:12]))
        trainer.run(stop_after=steps)
    return {
        "slug": slug,
        "weights": weights,
        "loss": {str(k): v for k, v in sorted(losses.items())},
        "capability": torch.backends.cpu.get_cpu_capability(),
    }


def first_parting_step(weights: list[str], record: dict) -> int | None:
    """The first step whose weights differ from a recorded trajectory's (``docs/trajectories/``),
    or None where every step both hold agrees.

    Args:
        weights: :func:`golden_trajectory`'s ``weights``, one hash per step from step 0.
        record: a recorded trajectory: its ``weights`` list, the same way.
    """
    for step, (mine, theirs) in enumerate(zip(weights, record["weights"], strict=False)):
        if mine != theirs:
            return step
    return None


def load_trajectory(path: str | Path, steps: int) -> dict:
    """A recorded trajectory to compare ``steps`` steps with (``tokenfocus golden --against``).

    Raises:
        ValueError: no steps to compare, or the file is not a recorded trajectory.
    """
    import json

    if not steps:
        raise ValueError("--against compares a trajectory: give --steps too")
    try:
        record = json.loads(Path(path).read_text())
        if not isinstance(record["weights"], list):
            raise TypeError("'weights' is not a list")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{path}: not a recorded trajectory (a JSON object with a 'weights' list): {exc}"
        ) from exc
    return record
