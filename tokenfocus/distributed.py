"""Data parallelism for one backbone: torchrun ranks, each with its shard of every global batch.

The training loop stays the one :class:`tokenfocus.train.Trainer` runs in one process. Under
``torchrun`` (``WORLD_SIZE`` > 1) each rank draws the same global batch from (seed, step), keeps
its strided shard, runs the same loss on it, and the gradients are averaged across ranks with one
all-reduce per optimizer step (what DistributedDataParallel does, without overlapping it with
the backward pass: for a LoRA adapter the payload is a few MB). Every rank then takes the same
optimizer step, so the weights stay identical everywhere, and only rank 0 writes checkpoints,
metrics, MLflow runs and the final model. gloo on CPU, nccl on CUDA.

``backbones.<slug>.nproc`` > 1 makes ``tokenfocus train`` and ``tokenfocus score`` relaunch
themselves through torchrun (:func:`relaunch`), so DVC stages and Prefect tasks need no change.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class World:
    """This process's place among the ranks torchrun started (one rank when not under it)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes files and logs runs."""
        return self.rank == 0

    def shard(self, items: list) -> list:
        """This rank's strided share of ``items`` (ranks' shares are disjoint and cover it)."""
        return items[self.rank :: self.size] if self.size > 1 else items


def world() -> World:
    """The world torchrun describes in the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)."""
    return World(
        rank=int(os.environ.get("RANK", 0)),
        size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def init(w: World) -> None:
    """Join the process group (nccl on CUDA, gloo on CPU); nothing for a single process."""
    if w.size == 1:
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(w.local_rank)
        dist.init_process_group("nccl", device_id=torch.device("cuda", w.local_rank))
    else:
        dist.init_process_group("gloo")


def average_gradients(params: list, w: World, *, bucket: int = 25_000_000) -> None:
    """Replace every parameter's gradient by its mean over the ranks, in flat buckets of up to
    ``bucket`` elements. A gradient a rank did not produce counts as zero, so every rank sends
    the same tensors in the same order."""
    if w.size == 1:
        return
    import torch
    import torch.distributed as dist

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    start = 0
    while start < len(params):
        group, n = [], 0
        while start < len(params) and (not group or n + params[start].numel() <= bucket):
            group.append(params[start])
            n += params[start].numel()
            start += 1
        flat = torch.cat([p.grad.reshape(-1) for p in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= w.size
        offset = 0
        for p in group:
            p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
            offset += p.numel()


def mean_over_ranks(values: dict[str, float], w: World) -> dict[str, float]:
    """The ranks' mean of each value (the logged loss parts of one step)."""
    if w.size == 1 or not values:
        return values
    import torch
    import torch.distributed as dist

    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return dict(zip(keys, (t / w.size).tolist(), strict=True))


def broadcast(obj: Any, w: World) -> Any:
    """Rank 0's ``obj`` on every rank (a small picklable value: a decision, a state)."""
    if w.size == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(w: World) -> None:
    """Wait until every rank gets here."""
    if w.size > 1:
        import torch.distributed as dist

        dist.barrier()


def launch_if_needed(nproc: int) -> int | None:
    """With ``nproc`` > 1 and not yet under torchrun: run this process's own command line as
    ``nproc`` ranks and return their exit code; otherwise None (go on in this process)."""
    if nproc > 1 and world().size == 1:
        return relaunch(sys.argv[1:], nproc)
    return None


def relaunch(argv: list[str], nproc: int) -> int:
    """Run ``tokenfocus <argv>`` as ``nproc`` torchrun ranks on this machine; return its exit code.

    ``--standalone`` gives the ranks a private rendezvous on a free local port, so two stages
    launched side by side do not meet. A rank that dies takes the others down (torchrun's
    default), and the rerun resumes from the last checkpoint rank 0 wrote.
    """
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "tokenfocus",
        *argv,
    ]
    return subprocess.run(cmd, check=False).returncode


def run_ranks(name: str, params_path: str, slug: str, pid: str | None, nproc: int) -> dict:
    """Run ``tokenfocus <name> -b <slug>`` as ``nproc`` torchrun ranks; return rank 0's result."""
    import json
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        argv = [name, "-b", slug, "--params", params_path, "--result", str(result)]
        rc = relaunch(argv + (["--parent-run", pid] if pid else []), nproc)
        if rc != 0:
            raise RuntimeError(f"{name}@{slug}: the {nproc} torchrun ranks failed (exit {rc})")
        return json.loads(result.read_text())


def merge_shards(stem: Path, rows: list[dict], w: World, n: int) -> list[dict] | None:
    """Every rank writes its rows of a split's table; rank 0 puts them back in the split's order
    (rank r holds positions r, r + size, ...) and returns them; the other ranks return None."""
    from tokenfocus.evalmuse import write_json_atomic

    part = stem.with_name(f"{stem.name}.rank{w.rank}.json")
    write_json_atomic(part, rows)
    barrier(w)
    merged = None
    if w.main:
        merged = [None] * n
        for r in range(w.size):
            shard = stem.with_name(f"{stem.name}.rank{r}.json")
            merged[r :: w.size] = json.loads(shard.read_text())
        for r in range(w.size):
            stem.with_name(f"{stem.name}.rank{r}.json").unlink()
    barrier(w)
    return merged
