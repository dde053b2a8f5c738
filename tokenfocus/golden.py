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


def golden_pass(
    params_path: str | Path = "params.yaml", *, slug: str = GOLDEN_SLUG, pairs: int = GOLDEN_PAIRS
) -> dict[str, str | float]:
    """Run the trainer's loss on the first ``pairs`` labelled pairs, backward, and hash it.

    The batch is the first ``pairs`` records of the data's ``train_list.json`` with their first
    element, scored at the last training step (every loss term on), through the same
    :class:`~tokenfocus.train.Trainer` set-up as a real run: threads, seed, LoRA and all.

    Args:
        params_path: the project's params (its ``backbones.<slug>.source`` must exist).
        slug: the backbone.
        pairs: how many pairs.

    Returns:
        ``logits`` and ``grads`` (sha256 of the float32 bytes), the ``loss`` value and the
        ``capability`` the CPU kernels dispatched to.
    """
    from tokenfocus.config import load_params
    from tokenfocus.evalmuse import load_records
    from tokenfocus.images import load_images
    from tokenfocus.train import Trainer

    params = load_params(params_path)
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
        out = trainer._loss(recs, keys, trainer.cfg.steps)
    finally:
        hook.remove()
    out["loss"].backward()
    grads = [p.grad for _, p in sorted(trainer.model.named_parameters()) if p.grad is not None]
    return {
        "logits": _digest(captured),
        "grads": _digest(grads),
        "loss": float(out["loss"].detach()),
        "capability": torch.backends.cpu.get_cpu_capability(),
    }
