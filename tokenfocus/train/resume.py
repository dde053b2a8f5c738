"""The trainer's saved state: the best model's folder, and a checkpoint that resumes exactly and
only where its configs, base, data and training code are the same."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

from tokenfocus.checkpoint import (
    TrainState,
    data_signature,
    folder_digest,
    load_checkpoint,
    save_checkpoint,
    save_trained,
    trainable_state,
)

log = logging.getLogger(__name__)


class Resumable:
    """Saving and resuming, a part of :class:`tokenfocus.train.Trainer`."""

    # -- checkpoints ------------------------------------------------------------------------------
    def _save_model(self, dest: Path) -> None:
        """Save the model (or only the LoRA adapter) with its processor and metadata, atomically."""
        meta = {
            "slug": self.slug,
            "kind": "trained",
            "base": str(self.source),
            "tuning": self.bb.tuning,
            "backbone": asdict(self.bb),
            "prompts": asdict(self.prompts),
            "loss": self.cfg.loss,
        }
        if self.val_mass:  # what its scorers check their first batch against (tokenfocus/scoring/mass.py)
            meta["answer_mass"] = self.val_mass
        save_trained(self.model, self.processor, meta, dest)

    def _data_signature(self) -> str:
        """The data a run learns from and picks its checkpoint on: the train and val records and
        their images' sizes in every folder training reads (the benchmark's and its redrawn copies).

        Why: ``dvc repro`` runs a train stage again when its data changed, and a finished run's
        checkpoint of the old data would otherwise be resumed at its last step and saved as the
        new model.
        """
        roots = [self.images.root, *(c.root for c in self.styled)]
        return data_signature([*self.train_records, *self.val_records], roots)

    def _identity(self) -> dict:
        """What must match for a checkpoint to be resumed: configs, base, data and the training code."""
        import hashlib

        import tokenfocus

        if self._base_digest is None:  # read once per run, not at every checkpoint
            self._base_digest = folder_digest(self.source)
        if self._data_digest is None:
            self._data_digest = self._data_signature()
        code = hashlib.sha1()
        root = Path(tokenfocus.__file__).parent
        files = [*sorted((root / "train").glob("*.py")), *sorted((root / "scoring").glob("*.py"))]
        files += [
            root / name
            for name in ("losses.py", "prefix.py", "batches.py", "prompts.py", "gemm.py", "views.py")
        ]
        for path in files:
            code.update(path.read_bytes())
        return {
            "train": asdict(self.cfg),
            "backbone": asdict(self.bb),
            "source": str(self.source),
            # the base itself: a re-built or re-pre-trained base at the same path is another start
            "base": self._base_digest,
            "data": self._data_digest,
            "exclude_fold": self.exclude_fold,
            "code": code.hexdigest(),
        }

    def _save_checkpoint(self, state: TrainState) -> None:
        save_checkpoint(
            self.out / "checkpoint",
            trainable_state(self.model, self.bb.tuning),
            {
                "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(),
                **({"average": self.average.state_dict()} if self.average is not None else {}),
            },
            {**asdict(state), "config": self._identity()},
        )

    def _resume(self) -> TrainState:
        saved = load_checkpoint(self.out / "checkpoint")
        if saved is None:
            return TrainState()
        state, weights, opt = saved
        if state.pop("config") != json.loads(json.dumps(self._identity())):
            log.warning(
                "%s: checkpoint was made by another config, base, data or code; starting afresh", self.slug
            )
            return TrainState()
        if self.bb.tuning == "lora":
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.model, weights)
        else:
            self.model.load_state_dict(weights)
        self.opt.load_state_dict(opt["optimizer"])
        self.sched.load_state_dict(opt["scheduler"])
        if self.average is not None:  # the mean so far: a resumed run averages the same steps
            self.average.load_state_dict(opt["average"])
        log.info("%s: resumed from step %d", self.slug, state["step"])
        return TrainState(**state)
