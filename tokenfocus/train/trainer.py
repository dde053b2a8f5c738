"""The :class:`Trainer`: one backbone's fine-tuning run, set up and looped over its steps."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tokenfocus.backbones import (
    assistant_end,
    load_model_and_processor,
    tower_parameters,
    train_mode,
    training_precision,
)
from tokenfocus.checkpoint import CpuClock
from tokenfocus.config import Params
from tokenfocus.distributed import average_gradients, barrier, broadcast, init, mean_over_ranks, world
from tokenfocus.env import torch_threads
from tokenfocus.evalmuse import Record, write_json_atomic
from tokenfocus.gemm import backbone_products
from tokenfocus.lora import apply_lora
from tokenfocus.metrics import evaluate
from tokenfocus.scoring import Scorer
from tokenfocus.train.average import WeightAverage, averaged_tensors
from tokenfocus.train.resume import Resumable
from tokenfocus.train.steps import TrainingSteps

log = logging.getLogger(__name__)
LogFn = Callable[[dict[str, float], int], None]


def adamw(groups: list[dict], *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW whose step computes the same bits on every x86-64 CPU, Intel or AMD.

    Why fused: torch's plain AdamW takes ``exp_avg_sq.sqrt()`` through MKL's vector maths. The
    vendor-neutral branch that ``MKL_CBWR=COMPATIBLE`` pins (:mod:`tokenfocus.env`) starts that
    root from ``rsqrtps``, an estimate each CPU maker computes its own way, and rounds the result
    inexactly: an Intel and an AMD host part at the first step (measured, docs/clean-runs.md). The
    fused kernel takes the IEEE root, exact on every CPU, in otherwise the same arithmetic.

    Args:
        groups: the parameter groups.
        lr: the base learning rate.
        weight_decay: AdamW's decoupled weight decay.
    """
    try:
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=True)
    except RuntimeError as exc:  # a device or dtype with no fused kernel
        log.warning("no fused AdamW here (%s): its steps may differ in the last bits by CPU", exc)
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


class Trainer(TrainingSteps, Resumable):
    """One backbone's fine-tuning run; ``run()`` resumes from ``out/checkpoint`` if present."""

    def __init__(
        self,
        slug: str,
        params: Params,
        *,
        out: str | Path | None = None,
        source: str | None = None,
        log_fn: LogFn | None = None,
        exclude_fold: int | None = None,
    ):
        self.slug, self.params = slug, params
        self.cfg = params.train_for(slug)
        self.bb = params.backbone(slug)
        self.prompts = params.prompts_for(slug)
        self.out = Path(out or Path(self.cfg.out) / slug)
        self.clock = CpuClock(self.out)  # CPU time across resumes
        self.source = source or self.bb.source
        self.log_fn = log_fn or (lambda metrics, step: None)
        self.exclude_fold = exclude_fold  # out-of-fold member: never sees this stacking fold
        self.world = world()  # under torchrun: this rank's shard of every batch (distributed.py)
        if not self.world.main:  # rank 0 alone logs, as it alone writes
            self.log_fn = lambda metrics, step: None
        self.model = None  # set by setup(); run() sets up only if nobody did
        self.train_records, self.styled = None, []  # set by _load_data()
        self._base_digest: str | None = None  # the base folder's digest, read once (see _identity)
        self._data_digest: str | None = None  # the data's signature, taken once (see _identity)

    # -- the loop ---------------------------------------------------------------------------------
    def setup(self) -> None:
        from transformers import get_cosine_schedule_with_warmup

        torch_threads(self.cfg.threads)
        torch.manual_seed(self.cfg.seed)
        if self.world.size > 1:
            if self.cfg.batch_size % self.world.size:
                raise ValueError(
                    f"{self.slug}: train.batch_size {self.cfg.batch_size} does not split evenly over "
                    f"{self.world.size} ranks (backbones.{self.slug}.nproc)"
                )
            init(self.world)
        # bf16 full fine-tuning: float32 master weights, bf16 autocast forward (mixed precision)
        load_as, self.amp = training_precision(self.bb)
        self.model, self.processor = load_model_and_processor(self.source, load_as, slug=self.slug)
        if self.bb.gradient_checkpointing:
            # Activations are recomputed in the backward pass: a real checkpoint's batch fits in
            # less memory. Non-reentrant, so frozen inputs (LoRA's base) still pass gradients on.
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.bb.tuning == "lora":
            self.model = apply_lora(self.model, self.slug, self.params)
        elif self.bb.tuning != "full":
            raise ValueError(f"{self.slug}: tuning must be 'full' or 'lora', not {self.bb.tuning!r}")
        elif self.bb.freeze_tower:
            # The tower keeps what pre-training taught it, and no gradient flows back through it
            for p in tower_parameters(self.model):
                p.requires_grad_(False)
        # validation reads the elements as the score stage will (spatial ones grounded), so the
        # saved model scores val as logged; the checkpoint is picked by the overall answer alone
        self.scorer = Scorer(
            self.model,
            self.processor,
            self.prompts,
            slug=self.slug,
            batch_size=self.params.score.batch_size,
            grounding=self.params.score.grounding,
            check_mass=False,  # the model moves; each val pass records its answer mass instead
        )
        self.val_mass: dict = {}  # the last val pass's answer mass: the saved model's folder records it
        self.end = assistant_end(self.processor)
        # A checkpointed layer drops the cache it is given (transformers, in training): the
        # questions would lose their image. Checkpointed training encodes it once per row, as does
        # a template that writes the image after the question (nothing image-only to share).
        checkpointed = self.bb.gradient_checkpointing or getattr(
            self.model, "is_activation_checkpointing", False
        )
        self.share_prefix = self.cfg.prefix_reuse and not checkpointed and self.scorer.parts.image_in_head
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.trainable = [p for _, p in named]
        groups = [{"params": self.trainable}]
        if self.bb.tuning == "lora" and self.bb.lora.modules_lr > 0:  # the whole modules at their own rate
            whole = {id(p) for n, p in named if ".modules_to_save." in n}
            groups = [
                {"params": [p for p in self.trainable if id(p) not in whole]},
                {"params": [p for p in self.trainable if id(p) in whole], "lr": self.bb.lora.modules_lr},
            ]
        self.opt = adamw(groups, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        self.sched = get_cosine_schedule_with_warmup(
            self.opt, int(self.cfg.warmup_frac * self.cfg.steps), self.cfg.steps
        )
        self.average = None  # the running mean of the weights the model is saved as (train.average_from)
        if self.cfg.average_from < 1.0:
            start = max(1, int(self.cfg.average_from * self.cfg.steps))
            self.average = WeightAverage(averaged_tensors(self.model), start)

    def _saved_weights(self):
        """The weights the model is saved in, for a ``with`` block: the running mean of the end of
        training (``train.average_from``), else the weights as they are."""
        return self.average.applied() if self.average is not None else nullcontext()

    def products(self):
        """The context this backbone's products run in (``train.gemm``, :mod:`tokenfocus.gemm`),
        once :meth:`setup` has loaded it."""
        return backbone_products(self.cfg.gemm, self.cfg.threads, self.model, computes_in=self.bb.dtype)

    def run(self, *, stop_after: int | None = None) -> dict:
        """Train to ``steps`` (or early stop); return the final metrics.

        Args:
            stop_after: end the process-level run after this many steps (tests simulate a kill).
        """
        if self.train_records is None:  # a caller that looked before training already loaded them
            self._load_data()
        if self.model is None:
            self.setup()
        with self.products():  # every product of the run, validation's too, on one BLAS
            return self._run(stop_after)

    def _run(self, stop_after: int | None) -> dict:
        state = self._resume()
        main = self.world.main
        if state.step == 0 and main:  # a fresh start: an earlier run's CPU time is not this run's
            self.clock.reset()
        self.out.mkdir(parents=True, exist_ok=True)
        cfg = self.cfg
        steps = range(state.step, cfg.steps)
        bar = tqdm(steps, desc=f"train {self.slug}", disable=None, initial=state.step, total=cfg.steps)
        cpu0 = time.process_time()
        done_here = 0
        for step in bar:
            train_mode(self.model)  # frozen BatchNorm keeps its statistics (LoRA)
            torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout identical after a resume
            parts: dict[str, float] = {}
            for micro in range(cfg.grad_accum):
                recs, keys, swaps = self._batch(step, micro)  # the global batch, the same on every rank
                pos = self.world.shard(list(range(len(recs))))
                recs, keys, swaps = ([v[i] for i in pos] for v in (recs, keys, swaps))  # this rank's
                with self.amp():
                    out = self._loss(recs, keys, step, pos=pos, micro=micro, swaps=swaps)
                (out["loss"] / cfg.grad_accum).backward()
                for k, v in out.items():
                    parts[k] = parts.get(k, 0.0) + float(v.detach()) / cfg.grad_accum
            # the ranks' mean gradient: each rank's loss is the mean over its equal shard
            average_gradients(self.trainable, self.world)
            parts = mean_over_ranks(parts, self.world)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            self.sched.step()
            self.opt.zero_grad(set_to_none=True)
            state.step = step + 1
            if self.average is not None:
                self.average.update(state.step)
            bar.set_postfix(loss=f"{parts['loss']:.3f}")
            if step % cfg.log_every == 0:
                self.log_fn(
                    {**{f"train_{k}": v for k, v in parts.items()}, "lr": self.sched.get_last_lr()[0]}, step
                )
            last = state.step == cfg.steps
            if (state.step % cfg.eval_every == 0 or last) and main:
                self.model.eval()
                # the run's end is measured in the weights it is saved in (the mean, where kept)
                with (
                    self.amp(),
                    self._saved_weights() if last else nullcontext(),
                    self.scorer.mass.collect() as mass,
                ):
                    m = evaluate_split(self.scorer, self.val_records, self.images, elements=cfg.val_elements)
                self.val_mass = mass  # the model is saved in these weights, after this pass
                state.history.append({"step": state.step, **m})
                self.log_fn({f"val_{k}": v for k, v in m.items()}, state.step)
                srcc = m["srcc"] if m["srcc"] is not None else -1.0  # constant output: no ranking yet
                if srcc > state.best_srcc:
                    state.best_srcc, state.best_step, state.evals_without_gain = srcc, state.step, 0
                    if cfg.select == "val":
                        self._save_model(self.out / "model")
                else:
                    state.evals_without_gain += 1
            if state.step % cfg.eval_every == 0 or last:
                state = broadcast(state, self.world)  # rank 0's verdict: every rank stops together
            stopping = state.evals_without_gain >= cfg.patience
            if (last or stopping) and cfg.select == "last" and main:
                # before the checkpoint that marks the run done: a kill between them trains the
                # last steps again and saves them again
                with self._saved_weights():
                    self._save_model(self.out / "model")
            done_here += 1
            if (state.step % cfg.checkpoint_every == 0 or last or stopping) and main:
                self.clock.add(time.process_time() - cpu0)
                cpu0 = time.process_time()
                self._save_checkpoint(state)
            if stopping:
                log.info("%s: early stop at step %d (best val SRCC %.4f at %d)", self.slug, state.step,
                         state.best_srcc, state.best_step)  # fmt: skip
                break
            if stop_after is not None and done_here >= stop_after:
                return {"interrupted_at": state.step}
        summary = {
            "slug": self.slug,
            "loss": cfg.loss,
            "steps": state.step,
            "best_step": state.best_step,
            "best_val_srcc": state.best_srcc,
            "model_step": state.step if cfg.select == "last" else state.best_step,
            "trainable_params": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
        }
        if main:
            write_json_atomic(self.out / "metrics.json", summary)
        barrier(self.world)  # the model and metrics are written before any rank reports done
        return {**summary, "cpu_minutes": self.clock.seconds() / 60, "ranks": self.world.size}


def train(slug: str, params: Params, **kwargs) -> dict:
    """Fine-tune one backbone (see :class:`Trainer`); return its summary metrics."""
    return Trainer(slug, params, **kwargs).run()


def evaluate_split(
    scorer: Scorer, records: list[Record], images: dict, *, elements: bool = True
) -> dict[str, float]:
    """Overall and element metrics of the current model on a list of records (the trainer's val).

    Args:
        elements: also ask every element question. Without them the overall scores are the same
            (each overall question still lists the pair's elements), ``element_acc`` and
            ``final`` are None, and the pass costs about half (measured on the tiny bases).
    """
    from tokenfocus.scoring import distribution_stats

    pil = [images[r.img_path] for r in records]
    prompts = [scorer.fit_prompt(r.prompt, r.img_path) for r in records]  # as scoring will cut them
    els = [[e.key for e in r.elements] for r in records]
    # as the scoring stage reads them
    dists, probs = scorer.score_pairs(pil, prompts, els, element_rows=elements)
    scores, _ = distribution_stats(dists)
    asked = els if elements else [[] for _ in records]
    pe = [probs[i][k] for i, r in enumerate(records) for k in asked[i]]
    ge = [r.element_score[k] for i, r in enumerate(records) for k in asked[i]]
    return evaluate(scores.tolist(), [r.total_score for r in records], pe, ge)
