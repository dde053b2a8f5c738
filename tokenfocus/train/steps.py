"""What one training step computes: its batch of pairs (a function of seed and step alone), each
row's image (augmented), the first answer position's logits and the token-focus loss (or the LM
baseline's)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from tokenfocus.batches import ask_elements, count_words, short_keyed
from tokenfocus.evalmuse import Record
from tokenfocus.images import ImageCache
from tokenfocus.losses import answer_target_ids, element_loss, focus_loss, span_lm_loss
from tokenfocus.predictions import split_records
from tokenfocus.prompts import element_text, overall_text
from tokenfocus.render.effects import relight
from tokenfocus.scoring import CACHE_UNSUPPORTED, encode, first_answer_logits
from tokenfocus.scoring.binding import ask_as, asked_keys
from tokenfocus.synth import STYLED_DIR

log = logging.getLogger(__name__)


class TrainingSteps:
    """The step's batch and loss, a part of :class:`tokenfocus.train.Trainer`: it reads the
    trainer's configs (``cfg``, ``prompts``), data (``train_records``, ``images``, ``styled``,
    ``count_words``) and loaded model (``model``, ``processor``, ``scorer``, ``end``)."""

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
        names, element, labels = None, [], []
        for asked, swapped in self._rounds(recs, keys, swaps, step, micro, pos):
            # the pair's short-key draw, the same in every round: one form per pair and step
            short = [np.random.default_rng([self.cfg.seed, step, micro, 3_571, i]) for i in pos]
            forms, said = short_keyed(recs, asked, self.cfg.short_keys, short, self.cfg.short_keys_overall)
            if names is None:  # the overall question names the elements as the first round does
                names = forms
            quoted = list(prompts)
            labels_n = [r.element_score[k] for r, k in zip(recs, asked, strict=True)]  # the long keys' labels
            for i, sw in enumerate(swapped):
                if sw:  # the prompt that claims the counterfactual, cut as the scorer cuts it
                    quoted[i], said[i], labels_n[i] = (
                        self.scorer.fit_prompt(sw[0], recs[i].img_path),
                        sw[1],
                        sw[2],
                    )
            # a short key asked with its object, as the scorer asks it (tokenfocus.scoring.binding)
            said = [
                ask_as(k, p, f, self.scorer.grounding) for k, p, f in zip(said, quoted, forms, strict=True)
            ]
            element += [element_text(parts, pr, p, k) for p, k in zip(quoted, said, strict=True)]
            labels += labels_n
        names = [list(pair) for pair in asked_keys(prompts, names, self.scorer.grounding)]
        overall = [overall_text(parts, pr, p, e) for p, e in zip(prompts, names, strict=True)]
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

    def _rounds(self, recs: list[Record], keys: list[str], swaps, step: int, micro: int, pos: list[int]):
        """Each round of element questions: (keys, swaps) per row. The first is the batch's own;
        with ``elements_per_pair`` > 1 each further one is drawn per row from (seed, step, place in
        the global batch, round) alone, as a resumed run and any number of ranks draw it."""
        rounds = [(list(keys), list(swaps) if swaps else [None] * len(recs))]
        for n in range(1, self.cfg.elements_per_pair):
            asked, swapped = [], []
            for r, i in zip(recs, pos, strict=True):
                k, sw = ask_elements(
                    [r],
                    np.random.default_rng([self.cfg.seed, step, micro, 9_973, n, i]),
                    self.cfg.element_balance,
                    self.cfg.counterfactual,
                    np.random.default_rng([self.cfg.seed, step, micro, 15_485_863, n, i]),
                    self.count_words,
                )
                asked += k
                swapped += sw
            rounds.append((asked, swapped))
        return rounds

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
