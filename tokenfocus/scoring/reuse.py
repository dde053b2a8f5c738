"""Prefix reuse: each image runs through the tower and the prefill once, and every question
about it (the overall one, each element's) extends that key/value cache."""

from __future__ import annotations

import torch
from PIL import Image

from tokenfocus.prefix import Prefix, extend, ids_after, kv_bytes, prefill
from tokenfocus.prompts import element_prefix, element_suffix, overall_question
from tokenfocus.scoring.readout import encode

SUFFIX_CACHE_MAX = 100_000  # element keys whose question-suffix token ids a scorer keeps


class PrefixReuse:
    """The scorer's shared-prefix paths, a part of :class:`tokenfocus.scoring.Scorer`.

    It reads the scorer's model, processor, templates (``parts``, ``prompts``), answer tokens,
    batching (``_batches``, ``image_tokens``, ``batch_size``, ``kv_budget``) and readouts
    (``_yes_prob``, ``mass``), and keeps the element suffixes' token ids in
    ``_suffix_cache``.
    """

    @torch.inference_mode()
    def elements_prefix(
        self, images: list[Image.Image], prompts: list[str], elements: list[list[str]]
    ) -> list[dict[str, float]]:
        """P(yes) per element, encoding each image with its prompt and the question's shared words
        once (one level of reuse; the overall question encodes the image again). Kept as the
        reference that :meth:`shared` is measured against (``make bench``)."""
        out: list[dict[str, float]] = [{} for _ in images]
        prefixes = [element_prefix(self.parts, self.prompts, p) for p in prompts]
        for idx in self._batches(
            len(images), [len(t) for t in prefixes], "elements", self.image_tokens(images)
        ):
            idx = [i for i in idx if elements[i]]
            if idx:
                batch = encode(self.processor, [prefixes[i] for i in idx], [images[i] for i in idx])
                self._element_rows(prefill(self.model, batch, self._rope_state), idx, elements, out)
        return out

    @torch.inference_mode()
    def shared(
        self,
        images: list[Image.Image],
        prompts: list[str],
        elements: list[list[str]],
        element_rows: bool = True,
    ) -> tuple[torch.Tensor, list[dict[str, float]]]:
        """The overall distributions (N, 5) and element P(yes) of pairs, from one image prefix each
        (without ``element_rows``, the overall questions alone: empty element dicts).

        Per batch of pairs, the image alone (the template's head) runs once, through the tower and
        the prefill. From its cache: the overall question (one row per pair), and the element
        questions' shared words (prompt + "Does the image show"), whose longer cache then serves
        each element's few words. Outputs equal the plain path's within float rounding.
        """
        dists = torch.empty(len(images), len(self.tokens.score_ids))
        probs: list[dict[str, float]] = [{} for _ in images]
        questions = [
            overall_question(self.prompts, p, elements[i] or None) + self.parts.tail
            for i, p in enumerate(prompts)
        ]
        contexts = [element_prefix(self.parts, self.prompts, p)[len(self.parts.head) :] for p in prompts]
        for idx in self._batches(
            len(images), [len(q) for q in questions], "pairs", self.image_tokens(images)
        ):
            image = self.head_prefix([images[i] for i in idx])
            logits, _ = self.after_head(image, torch.arange(len(idx)), [questions[i] for i in idx])
            self.mass.observe(logits, self.tokens.all_ids())
            dists[idx] = torch.softmax(self.tokens.score_logits(logits).float(), dim=-1).cpu()
            has = [b for b, i in enumerate(idx) if elements[i]] if element_rows else []
            if has:
                _, words = self.after_head(
                    image, torch.tensor(has), [contexts[idx[b]] for b in has], keep=True
                )
                self._element_rows(words, [idx[b] for b in has], elements, probs)
        return dists, probs

    def head_prefix(self, images: list[Image.Image]) -> Prefix:
        """The template's head with each image, prefilled: what every question about it shares.
        Gradients flow through it when the caller tracks them (the trainer's shared path)."""
        batch = encode(self.processor, [self.parts.head] * len(images), images)
        return prefill(self.model, batch, self._rope_state)

    def after_head(self, image: Prefix, owner: torch.Tensor, texts: list[str], *, keep=False, span=1):
        """:func:`tokenfocus.prefix.extend` with texts that follow the head, tokenised in context."""
        ids = ids_after(self.processor.tokenizer, self.parts.head, texts)
        return extend(self.model, image, owner, ids, self._pad, keep=keep, span=span)

    def _element_rows(self, prefix, idx: list[int], elements: list[list[str]], out: list[dict]) -> None:
        """Each element's question words after its pair's prefix row (``idx[b]`` is row b's pair)."""
        token_ids = self._suffix_ids({k for i in idx for k in elements[i]})
        rows = [(b, k) for b, i in enumerate(idx) for k in elements[i]]
        step = self.element_chunk(prefix)
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            owner = torch.tensor([b for b, _ in chunk])
            logits, _ = extend(self.model, prefix, owner, [token_ids[k] for _, k in chunk], self._pad)
            for (b, k), p in zip(chunk, self._yes_prob(logits).cpu().tolist(), strict=True):
                out[idx[b]][k] = p

    def element_chunk(self, prefix) -> int:
        """Question rows run at a time from ``prefix``: each row copies its pair's whole cache, so
        the rows are bounded by the KV budget, and by ``suffix_chunk_factor`` image batches (the
        suffixes themselves are short)."""
        per_row = kv_bytes(prefix.cache) // max(1, prefix.mask.shape[0])
        return max(1, min(self.batch_size * self.suffix_chunk_factor, int(self.kv_budget // max(1, per_row))))

    @property
    def _pad(self) -> int:
        pad = self.processor.tokenizer.pad_token_id
        return pad if pad is not None else 0

    def _suffix_ids(self, keys: set[str]) -> dict[str, list[int]]:
        """Token ids of each element's question suffix, as they follow the shared words.

        Tokenised once per scorer: elements repeat across images and across calls (a served model
        sees the same element vocabulary request after request), and a tokenizer call costs as
        much as a small forward pass here (measured: 0.9 ms of a 27 ms call scoring 16 images x 8
        elements). In context of the shared words, which end the same for every prompt.
        """
        new = sorted(k for k in keys if k not in self._suffix_cache)
        if new and len(self._suffix_cache) + len(new) > SUFFIX_CACHE_MAX:
            self._suffix_cache.clear()  # bounded memory on an open-ended element vocabulary
            new = sorted(keys)  # the keys this call needs that were cached went with the rest
        if new:
            texts = [element_suffix(self.parts, self.prompts, k) for k in new]
            context = element_prefix(self.parts, self.prompts, "a")
            self._suffix_cache.update(
                zip(new, ids_after(self.processor.tokenizer, context, texts), strict=True)
            )
        return {k: self._suffix_cache[k] for k in keys}
