"""What a fine-tuning run writes: the best model's folder, and a checkpoint that resumes exactly.

Both are written in full beside their destination and swapped in, so a kill never leaves half of
either. A checkpoint holds the trainable weights (all of them, or only a LoRA adapter's), the
optimizer and scheduler, and the run's state with the identity it must match to be resumed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tokenfocus.backbones import META_FILE, replace_dir
from tokenfocus.evalmuse import write_json_atomic


def folder_digest(source: str | Path, whole_below: int = 64 * 1024 * 1024) -> str:
    """What a local base folder holds: files under ``whole_below`` bytes by content, bigger ones
    (a real checkpoint's shards) by name and size; a hub id stands for itself."""
    root = Path(source)
    if not root.is_dir():
        return str(source)
    h = hashlib.sha1()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        size = f.stat().st_size
        h.update(f"{f.relative_to(root)}:{size}".encode())
        if size < whole_below:
            h.update(f.read_bytes())
    return h.hexdigest()


def data_signature(records, roots: list[Path]) -> str:
    """What a run was made from: the records (prompts, elements, labels) and the size of each
    image they name under each of ``roots``.

    A stat per image, not a read, so it is cheap on EvalMuse-40K. Its size, not its time: the
    signature is saved inside the trained model's folder, a versioned output that every clone
    must write to the same bytes (a redrawn image almost always changes size).
    """
    from dataclasses import asdict

    h = hashlib.sha1()
    for r in records:
        h.update(json.dumps(asdict(r), sort_keys=True).encode())
    for i, root in enumerate(roots):
        h.update(f"#{i}".encode())
        for r in records:
            try:
                size = (Path(root) / r.img_path).stat().st_size  # one syscall an image
            except FileNotFoundError:
                size = None
            h.update(f"{r.img_path}:{size};".encode())
    return h.hexdigest()


def save_trained(model, processor, meta: dict, dest: Path) -> None:
    """Save a fine-tuned model (or only its LoRA adapter), its processor and ``meta``, atomically."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)  # safetensors; a PeftModel saves only its adapter
    processor.save_pretrained(tmp)
    adapter = tmp / "adapter_config.json"
    if adapter.exists():  # peft writes target_modules from a set: in hash order, per process
        cfg = json.loads(adapter.read_text())
        if isinstance(cfg.get("target_modules"), list):
            cfg["target_modules"] = sorted(cfg["target_modules"])
            adapter.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
    replace_dir(tmp, dest)


def trainable_state(model, tuning: str) -> dict[str, torch.Tensor]:
    """The weights a checkpoint keeps: the adapter's under LoRA, else the whole model's."""
    if tuning == "lora":
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(model)
    # copied to host memory one tensor at a time: never a second full copy of the model on the device
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def save_checkpoint(ckpt: Path, weights: dict[str, torch.Tensor], optim: dict, state: dict) -> None:
    """Weights, optimizer and scheduler (``optim``) and the run's ``state``, swapped in atomically."""
    from safetensors.torch import save_file

    tmp = ckpt.with_name(ckpt.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(weights, tmp / "weights.safetensors")
    torch.save(optim, tmp / "optim.pt")
    write_json_atomic(tmp / "state.json", state)
    replace_dir(tmp, ckpt)


def load_checkpoint(ckpt: Path) -> tuple[dict, dict[str, torch.Tensor], dict] | None:
    """The checkpoint's (state, weights, optim), or None when there is none."""
    if not (ckpt / "state.json").exists():
        return None
    from safetensors.torch import load_file

    state = json.loads((ckpt / "state.json").read_text())
    optim = torch.load(ckpt / "optim.pt", weights_only=True)  # tensors only: no pickle of objects
    return state, load_file(ckpt / "weights.safetensors"), optim


class CpuClock:
    """The CPU seconds a run has spent, across resumes, in a sidecar file beside its folder.

    Why beside it, never in it: what a run writes into its folder (a DVC output) must be the
    same bytes on every rerun of the same commit and params; CPU time is not.
    """

    def __init__(self, out: Path):
        self.path = out.with_name(out.name + ".timing.json")

    def seconds(self) -> float:
        return json.loads(self.path.read_text())["cpu_seconds"] if self.path.exists() else 0.0

    def add(self, seconds: float) -> None:
        write_json_atomic(self.path, {"cpu_seconds": self.seconds() + seconds})

    def reset(self) -> None:
        """A fresh start: an earlier run's CPU time is not this run's."""
        self.path.unlink(missing_ok=True)


@dataclass
class TrainState:
    """What a checkpoint needs, besides weights and optimizer, to resume exactly."""

    step: int = 0
    best_srcc: float = -1.0
    best_step: int = -1
    evals_without_gain: int = 0
    history: list[dict] = field(default_factory=list)
