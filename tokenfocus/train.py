"""Fine-tuning one backbone with the token-focus loss (or the LM baseline), resumably.

The story: load the base through the Auto classes -> optionally wrap in LoRA -> for each step,
draw a batch of (image, prompt) pairs with one element question each -> read the first answer
position -> loss -> AdamW with warm-up and cosine decay -> every so often, evaluate on val,
keep the best model and write a checkpoint that resumes exactly.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from tokenfocus.backbones import (
    apply_lora,
    assistant_end,
    load_model_and_processor,
    train_mode,
    training_precision,
)
from tokenfocus.batches import ask_elements, count_words, short_keyed
from tokenfocus.checkpoint import (
    CpuClock,
    TrainState,
    folder_digest,
    load_checkpoint,
    save_checkpoint,
    save_trained,
    trainable_state,
)
from tokenfocus.config import Params
from tokenfocus.distributed import average_gradients, barrier, broadcast, init, mean_over_ranks, world
from tokenfocus.env import torch_threads
from tokenfocus.evalmuse import Record, write_json_atomic
from tokenfocus.images import ImageCache
from tokenfocus.losses import answer_target_ids, element_loss, focus_loss, span_lm_loss
from tokenfocus.predictions import evaluate_split, split_records
from tokenfocus.prompts import element_text, overall_text
from tokenfocus.render.effects import relight
from tokenfocus.scoring import CACHE_UNSUPPORTED, Scorer, encode, first_answer_logits
from tokenfocus.synth import STYLED_DIR

log = logging.getLogger(__name__)
LogFn = Callable[[dict[str, float], int], None]


class Trainer:
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

    # -- data -------------------------------------------------------------------------------------
    def _load_data(self) -> None:
        self.train_records = split_records(self.params, "train")
        if self.exclude_fold is not None:
            held = {r.prompt_id for r in split_records(self.params, f"train-fold{self.exclude_fold}")}
            self.train_records = [r for r in self.train_records if r.prompt_id not in held]
        self.val_records = split_records(self.params, "val")
        self.count_words = count_words(self.train_records)  # what a counterfactual count may be
        if not self.train_records:
            raise ValueError(f"{self.slug}: the train split is empty")
        # decoded on first use, at most train.image_cache at a time: memory bounded on EvalMuse-40K
        data = Path(self.params.validate.data)
        self.images = ImageCache(data / "images", max_items=self.cfg.image_cache)
        copies = sorted(d for d in (data / STYLED_DIR).glob("*") if d.is_dir())
        if self.cfg.augment_styles > 0 and not copies:  # real data (EvalMuse) has no redrawings
            log.warning("%s: no scenes redrawn in %s: no style augmentation", self.slug, data / STYLED_DIR)
        self.styled = [ImageCache(d / "images", max_items=self.cfg.image_cache) for d in copies]

    def _batch(self, step: int, micro: int):
        """The step's examples: a function of (seed, step) alone, so a resumed run sees the same."""
        rng = np.random.default_rng([self.cfg.seed, step, micro])
        n = len(self.train_records)
        idx = rng.choice(n, size=min(self.cfg.batch_size, n), replace=False)
        recs = [self.train_records[i] for i in idx]
        swap_rng = np.random.default_rng([self.cfg.seed, step, micro, 15_485_863])
        keys, swaps = ask_elements(
            recs, rng, self.cfg.element_balance, self.cfg.counterfactual, swap_rng, self.count_words
        )
        return recs, keys, swaps

    # -- loss -------------------------------------------------------------------------------------
    def _loss(
        self, recs: list[Record], keys: list[str], step: int, *, pos=None, micro: int = 0, swaps=None
    ) -> dict[str, torch.Tensor]:
        """The batch's loss; ``pos``: each row's place in the global batch (a rank holds a shard);
        ``swaps``: per row, the counterfactual its element question asks instead (or None)."""
        parts, pr = self.scorer.parts, self.prompts
        pos = list(range(len(recs))) if pos is None else pos
        imgs = [self._image(r, step, micro, i) for r, i in zip(recs, pos, strict=True)]
        prompts = [self.scorer.fit_prompt(r.prompt, r.img_path) for r in recs]  # the scorer's cut
        labels = [r.element_score[k] for r, k in zip(recs, keys, strict=True)]  # the long keys' labels
        short = [np.random.default_rng([self.cfg.seed, step, micro, 3_571, i]) for i in pos]
        names, keys = short_keyed(recs, list(keys), self.cfg.short_keys, short, self.cfg.short_keys_overall)
        overall = [overall_text(parts, pr, p, n) for p, n in zip(prompts, names, strict=True)]
        for i, sw in enumerate(swaps or []):
            if sw:  # the prompt that claims the counterfactual, cut as the scorer cuts it
                prompts[i], keys[i], labels[i] = self.scorer.fit_prompt(sw[0], recs[i].img_path), sw[1], sw[2]
        element = [element_text(parts, pr, p, k) for p, k in zip(prompts, keys, strict=True)]
        scores, labels = torch.tensor([r.total_score for r in recs]), torch.tensor(labels)
        tokens = self.scorer.tokens
        if self.cfg.loss == "lm":
            return self._lm_loss(overall + element, imgs, scores, labels)
        # Only the first answer position carries the score: nothing else enters the loss.
        logits = self._answer_logits(overall + element, imgs)
        b = len(recs)
        # The regression term joins after a CE-only warm-up; alone it pulls to the mean score early.
        mse_w = self.cfg.mse_weight if step >= self.cfg.mse_warmup_frac * self.cfg.steps else 0.0
        scores, labels = scores.to(logits.device), labels.to(logits.device)
        out = focus_loss(
            tokens.score_logits(logits[:b]),
            scores,
            ce_weight=self.cfg.ce_weight,
            mse_weight=mse_w,
            soft=self.cfg.soft_target,
        )
        out["element"] = element_loss(tokens.yes_no_logits(logits[b:]), labels)
        out["loss"] = out["loss"] + self.cfg.element_weight * out["element"]
        return out

    def _image(self, r: Record, step: int, micro: int, i: int):
        """Row ``i``'s image, drawn from (seed, step, place in the global batch) alone as a resumed
        run and any number of ranks draw it: with ``augment_styles`` odds its scene redrawn in
        another style, and with ``augment_lighting`` random lighting (iMatch's augmentation)."""
        rng = np.random.default_rng([self.cfg.seed, step, micro, 7_919, i])
        if self.styled and rng.random() < self.cfg.augment_styles:
            im = self.styled[rng.integers(len(self.styled))][r.img_path]
        else:
            im = self.images[r.img_path]
        if self.cfg.augment_lighting > 0:
            light = np.random.default_rng([self.cfg.seed, step, micro, 104_729, i])
            im = relight(im, self.cfg.augment_lighting, light)
        return im

    def _answer_logits(self, texts: list[str], imgs: list, span: int = 1) -> torch.Tensor:
        """Logits at each text's last ``span`` positions ((R, V) at 1), overall then element rows.

        Why shared: a pair's two questions begin with the same image, so the image runs through
        the tower and the prefill once and both questions extend its cache (gradients from both
        meet in one image pass). The loss equals the plain path's within float rounding; a family
        whose forward cannot take a cache falls back to encoding the image per row, for good.
        """
        b, head = len(imgs), self.scorer.parts.head
        if self.share_prefix:
            try:
                image = self.scorer.head_prefix(imgs)
                owner = torch.arange(b).repeat(len(texts) // b)
                return self.scorer.after_head(image, owner, [t[len(head) :] for t in texts], span=span)[0]
            except CACHE_UNSUPPORTED as exc:
                log.warning("%s: no shared image prefix in training (%r); one image per row", self.slug, exc)
                self.share_prefix = False
        return first_answer_logits(self.model, encode(self.processor, texts, imgs * (len(texts) // b)), span)

    def _lm_loss(self, texts: list[str], imgs, scores, labels) -> dict[str, torch.Tensor]:
        """Baseline: full-vocabulary next-token CE on the answer text (digit or yes/no + end)."""
        answers = [self.prompts.score_tokens[int(round(float(s))) - 1] for s in scores]
        answers += [self.prompts.yes_token if float(y) >= 0.5 else self.prompts.no_token for y in labels]
        answer_ids = answer_target_ids(self.processor.tokenizer, texts, answers, self.end)
        full = [t + a + self.end for t, a in zip(texts, answers, strict=True)]
        loss = span_lm_loss(self._answer_logits(full, imgs, span=max(map(len, answer_ids)) + 1), answer_ids)
        return {"loss": loss, "lm": loss}

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
        save_trained(self.model, self.processor, meta, dest)

    def _identity(self) -> dict:
        """What must match for a checkpoint to be resumed: configs, base, and the training code."""
        import hashlib

        import tokenfocus

        if self._base_digest is None:  # read once per run, not at every checkpoint
            self._base_digest = folder_digest(self.source)
        code = hashlib.sha1()
        for name in ("train.py", "losses.py", "scoring.py", "prefix.py", "batches.py", "prompts.py"):
            code.update((Path(tokenfocus.__file__).parent / name).read_bytes())
        return {
            "train": asdict(self.cfg),
            "backbone": asdict(self.bb),
            "source": str(self.source),
            # the base itself: a re-built or re-pre-trained base at the same path is another start
            "base": self._base_digest,
            "exclude_fold": self.exclude_fold,
            "code": code.hexdigest(),
        }

    def _save_checkpoint(self, state: TrainState) -> None:
        save_checkpoint(
            self.out / "checkpoint",
            trainable_state(self.model, self.bb.tuning),
            {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict()},
            {**asdict(state), "config": self._identity()},
        )

    def _resume(self) -> TrainState:
        saved = load_checkpoint(self.out / "checkpoint")
        if saved is None:
            return TrainState()
        state, weights, opt = saved
        if state.pop("config") != json.loads(json.dumps(self._identity())):
            log.warning("%s: checkpoint was made by another config or code; starting afresh", self.slug)
            return TrainState()
        if self.bb.tuning == "lora":
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.model, weights)
        else:
            self.model.load_state_dict(weights)
        self.opt.load_state_dict(opt["optimizer"])
        self.sched.load_state_dict(opt["scheduler"])
        log.info("%s: resumed from step %d", self.slug, state["step"])
        return TrainState(**state)

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
        self.scorer = Scorer(
            self.model, self.processor, self.prompts, slug=self.slug, batch_size=self.params.score.batch_size
        )
        self.end = assistant_end(self.processor)
        # A checkpointed layer drops the cache it is given (transformers, in training): the
        # questions would lose their image. Checkpointed training encodes it once per row.
        checkpointed = self.bb.gradient_checkpointing or getattr(
            self.model, "is_activation_checkpointing", False
        )
        self.share_prefix = self.cfg.prefix_reuse and not checkpointed
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.trainable, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        self.sched = get_cosine_schedule_with_warmup(
            self.opt, int(self.cfg.warmup_frac * self.cfg.steps), self.cfg.steps
        )

    def run(self, *, stop_after: int | None = None) -> dict:
        """Train to ``steps`` (or early stop); return the final metrics.

        Args:
            stop_after: end the process-level run after this many steps (tests simulate a kill).
        """
        if self.train_records is None:  # a caller that looked before training already loaded them
            self._load_data()
        if self.model is None:
            self.setup()
        state = self._resume()
        main = self.world.main
        if state.step == 0 and main:  # a fresh start: an earlier run's CPU time is not this run's
            self.clock.reset()
        self.out.mkdir(parents=True, exist_ok=True)
        cfg = self.cfg
        bar = tqdm(
            range(state.step, cfg.steps),
            desc=f"train {self.slug}",
            disable=None,
            initial=state.step,
            total=cfg.steps,
        )
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
            bar.set_postfix(loss=f"{parts['loss']:.3f}")
            if step % cfg.log_every == 0:
                self.log_fn(
                    {**{f"train_{k}": v for k, v in parts.items()}, "lr": self.sched.get_last_lr()[0]}, step
                )
            last = state.step == cfg.steps
            if (state.step % cfg.eval_every == 0 or last) and main:
                self.model.eval()
                with self.amp():
                    m = evaluate_split(self.scorer, self.val_records, self.images)
                state.history.append({"step": state.step, **m})
                self.log_fn({f"val_{k}": v for k, v in m.items()}, state.step)
                srcc = m["srcc"] if m["srcc"] is not None else -1.0  # constant output: no ranking yet
                if srcc > state.best_srcc:
                    state.best_srcc, state.best_step, state.evals_without_gain = srcc, state.step, 0
                    self._save_model(self.out / "model")
                else:
                    state.evals_without_gain += 1
            if state.step % cfg.eval_every == 0 or last:
                state = broadcast(state, self.world)  # rank 0's verdict: every rank stops together
            stopping = state.evals_without_gain >= cfg.patience
            done_here += 1
            if (state.step % cfg.checkpoint_every == 0 or last or stopping) and main:
                self.clock.add(time.process_time() - cpu0)
                cpu0 = time.process_time()
                self._save_checkpoint(state)
            if stopping:
                log.info(
                    "%s: early stop at step %d (best val SRCC %.4f at %d)",
                    self.slug,
                    state.step,
                    state.best_srcc,
                    state.best_step,
                )
                break
            if stop_after is not None and done_here >= stop_after:
                return {"interrupted_at": state.step}
        summary = {
            "slug": self.slug,
            "loss": cfg.loss,
            "steps": state.step,
            "best_step": state.best_step,
            "best_val_srcc": state.best_srcc,
            "trainable_params": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
        }
        if main:
            write_json_atomic(self.out / "metrics.json", summary)
        barrier(self.world)  # the model and metrics are written before any rank reports done
        return {**summary, "cpu_minutes": self.clock.seconds() / 60, "ranks": self.world.size}


def train(slug: str, params: Params, **kwargs) -> dict:
    """Fine-tune one backbone (see :class:`Trainer`); return its summary metrics."""
    return Trainer(slug, params, **kwargs).run()
