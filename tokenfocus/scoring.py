"""Token-focus scoring: read the first answer token's distribution, never generate.

Normalisation: the overall score distribution is the softmax over the logits of the five score
tokens alone, which equals the full-vocabulary probabilities renormalised over those tokens.
The score is its expected value (1..5), its entropy (nats, 0..ln 5) an uncertainty. An element
is a yes/no question: P(yes) = p(yes) / (p(yes) + p(no)), a softmax over the two logits.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from tokenfocus.backbones import META_FILE, load_model_and_processor, template_parts
from tokenfocus.batches import image_tokens, plan_batches
from tokenfocus.config import BackboneConfig, PromptConfig, load_params
from tokenfocus.env import torch_threads
from tokenfocus.images import open_image
from tokenfocus.prefix import Prefix, extend, ids_after, kv_bytes, prefill
from tokenfocus.prompts import (
    answer_tokens,
    element_prefix,
    element_suffix,
    element_text,
    overall_question,
    overall_text,
)

log = logging.getLogger(__name__)
ImageLike = str | Path | Image.Image
SUFFIX_CACHE_MAX = 100_000  # element keys whose question-suffix token ids a scorer keeps
MIN_ANSWER_MASS = 0.5  # below this share of the first token's probability on the answers: a warning
#: What a family raises when its forward cannot take a reused cache (a missing argument, an
#: unsupported cache type): prefix reuse is then switched off for that scorer, and only then.
CACHE_UNSUPPORTED = (TypeError, NotImplementedError, AttributeError, KeyError, IndexError, ValueError)


@dataclass
class ScoreResult:
    score: float  # expected value over 1..5
    distribution: list[float]  # P(1)..P(5)
    entropy: float  # nats
    elements: dict[str, float] = field(default_factory=dict)  # key -> P(yes)

    def to_dict(self) -> dict:
        return asdict(self)


def distribution_stats(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected score (1..K) and entropy of each row of a (N, K) probability tensor."""
    values = torch.arange(1, probs.shape[-1] + 1, dtype=probs.dtype, device=probs.device)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)
    return (probs * values).sum(-1), entropy


def encode(processor, texts: list[str], images: list[Image.Image]):
    """One padded batch through the processor (left padding: every row ends at the answer)."""
    return processor(text=texts, images=[[im] for im in images], padding=True, return_tensors="pt")


def first_answer_logits(model, batch, span: int = 1) -> torch.Tensor:
    """Logits of the first answer token, (B, V): the last position of each left-padded row (with
    ``span`` > 1, (B, span, V): each row's last ``span`` positions, as the lm loss reads them)."""
    logits = model(**batch.to(model.device), logits_to_keep=span).logits
    return logits[:, -1] if span == 1 else logits


class Scorer:
    """A loaded backbone that scores (image, prompt) pairs and their elements.

    Example:
        >>> scorer = Scorer.load("idefics3_tiny")  # a params slug, a folder or a hub id
        >>> results = scorer(["a.png"], ["two red circles"], elements=[["two circles (counting)"]])
    """

    def __init__(
        self,
        model,
        processor,
        prompts: PromptConfig,
        *,
        slug: str = "",
        batch_size: int = 32,
        prefix_reuse: bool = True,
        kv_budget_mib: float = 1024,
        batch_tokens: int = 0,
    ):
        self.model, self.processor, self.prompts, self.slug = model, processor, prompts, slug
        self.batch_size, self.prefix_reuse = batch_size, prefix_reuse
        self.batch_tokens = batch_tokens  # padded tokens a batch may hold; 0 = batch_size alone
        self.kv_budget = kv_budget_mib * 2**20  # bytes of cache copies one chunk of questions may hold
        self.processor.tokenizer.padding_side = "left"
        self.parts = template_parts(processor)
        self.tokens = answer_tokens(processor.tokenizer, prompts, slug=slug or "backbone", parts=self.parts)
        self._warned_fallback = False
        self._mass_checked, self.answer_mass = False, None
        # the module that keeps M-RoPE offsets from the prefill (Qwen2-VL family), if any
        self._rope_state = next((m for m in model.modules() if hasattr(m, "rope_deltas")), None)
        self._suffix_cache: dict[str, list[int]] = {}
        self.max_prompt_chars = 600  # keeps question + element list inside small context windows
        self.suffix_chunk_factor = 4

    @classmethod
    def load(
        cls,
        path_or_slug: str | Path,
        *,
        params: str | Path = "params.yaml",
        batch_size: int = 32,
        prefix_reuse: bool = True,
        threads: int | None = None,
        kv_budget_mib: float = 1024,
        batch_tokens: int = 0,
    ) -> Scorer:
        """Load a scorer from a params slug, a model folder, or a hub id.

        A slug resolves to its trained model when one exists, else to its base ``source``.
        """
        if threads:
            torch_threads(threads)
        path = Path(path_or_slug)
        slug, bb, prompts = str(path_or_slug), None, PromptConfig()
        if path.exists():
            meta_path = path / META_FILE
            meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
            slug = meta.get("slug", path.name)
            bb = (
                BackboneConfig(**meta["backbone"]) if "backbone" in meta else BackboneConfig(source=str(path))
            )
            if "prompts" in meta:
                prompts = PromptConfig(**meta["prompts"])
            source = path
        elif Path(params).exists() and str(path_or_slug) in load_params(params).backbones:
            p = load_params(params)
            bb, prompts = p.backbone(slug), p.prompts_for(slug)
            trained = Path(p.train.out) / slug / "model"
            source = trained if trained.exists() else Path(bb.source)
        else:  # a hub id
            bb, source = BackboneConfig(source=str(path_or_slug)), str(path_or_slug)
        model, processor = load_model_and_processor(source, bb, slug=slug)
        return cls(
            model,
            processor,
            prompts,
            slug=slug,
            batch_size=batch_size,
            prefix_reuse=prefix_reuse,
            kv_budget_mib=kv_budget_mib,
            batch_tokens=batch_tokens,
        )

    # -- batching helpers ---------------------------------------------------------------------
    def _batches(self, n: int, lengths: Sequence[int], desc: str, image_tokens: Sequence[int] | None = None):
        """Index batches (:func:`tokenfocus.batches.plan_batches`) with a progress bar."""
        chunks = plan_batches(lengths, image_tokens or [0] * n, self.batch_size, self.batch_tokens)
        return tqdm(chunks, desc=f"{self.slug} {desc}", leave=False, disable=None)

    def image_tokens(self, images: Sequence[Image.Image]) -> list[int]:
        return image_tokens(self.processor, images)

    # -- overall --------------------------------------------------------------------------------
    @torch.inference_mode()
    def overall(
        self, images: list[Image.Image], prompts: list[str], elements: list[list[str]] | None = None
    ) -> torch.Tensor:
        """(N, 5) score distributions of the overall question, one forward pass per batch."""
        texts = [
            overall_text(self.parts, self.prompts, p, (elements[i] if elements else None))
            for i, p in enumerate(prompts)
        ]
        out = torch.empty(len(texts), len(self.tokens.score_ids))
        for idx in self._batches(len(texts), [len(t) for t in texts], "overall", self.image_tokens(images)):
            batch = encode(self.processor, [texts[i] for i in idx], [images[i] for i in idx])
            full = first_answer_logits(self.model, batch)
            self._check_mass(full)
            out[idx] = torch.softmax(self.tokens.score_logits(full).float(), dim=-1).cpu()
        return out

    # -- elements -------------------------------------------------------------------------------
    def _yes_prob(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.tokens.yes_no_logits(logits).float(), dim=-1)[:, 0]

    def _check_mass(self, logits: torch.Tensor) -> None:
        """Warn once when the answer tokens carry little of the first token's probability: the
        template or the token choice does not fit the checkpoint (its answers begin elsewhere)."""
        if self._mass_checked:
            return
        self._mass_checked = True
        mass = torch.softmax(logits.float(), dim=-1)[:, self.tokens.all_ids()].sum(-1).mean().item()
        self.answer_mass = mass
        if mass < MIN_ANSWER_MASS:
            log.warning(
                "%s: the answer tokens carry %.1f%% of the first token's probability (below %.0f%%): "
                "check the chat template and the score/yes/no tokens for this checkpoint",
                self.slug,
                100 * mass,
                100 * MIN_ANSWER_MASS,
            )

    @torch.inference_mode()
    def elements_plain(
        self, images: list[Image.Image], prompts: list[str], elements: list[list[str]]
    ) -> list[dict[str, float]]:
        """P(yes) per element with one full forward per question (image re-encoded each time)."""
        rows = [(i, k) for i, ks in enumerate(elements) for k in ks]
        texts = [element_text(self.parts, self.prompts, prompts[i], k) for i, k in rows]
        probs = torch.empty(len(rows))
        img = self.image_tokens(images)
        for idx in self._batches(len(rows), [len(t) for t in texts], "elements", [img[i] for i, _ in rows]):
            batch = encode(self.processor, [texts[j] for j in idx], [images[rows[j][0]] for j in idx])
            probs[idx] = self._yes_prob(first_answer_logits(self.model, batch)).cpu()
        out: list[dict[str, float]] = [{} for _ in images]
        for (i, k), p in zip(rows, probs.tolist(), strict=True):
            out[i][k] = p
        return out

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
        self, images: list[Image.Image], prompts: list[str], elements: list[list[str]]
    ) -> tuple[torch.Tensor, list[dict[str, float]]]:
        """The overall distributions (N, 5) and element P(yes) of pairs, from one image prefix each.

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
            self._check_mass(logits)
            dists[idx] = torch.softmax(self.tokens.score_logits(logits).float(), dim=-1).cpu()
            has = [b for b, i in enumerate(idx) if elements[i]]
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

    def score_pairs(
        self, images: list[Image.Image], prompts: list[str], elements: list[list[str]]
    ) -> tuple[torch.Tensor, list[dict[str, float]]]:
        """Overall distributions (N, 5) and element P(yes), from a shared image prefix where the
        family allows it."""
        if self.prefix_reuse:
            try:
                return self._halving_on_oom(self.shared, images, prompts, elements)
            except CACHE_UNSUPPORTED as exc:  # a family whose forward cannot take a reused cache
                # only a family's own incapacity switches reuse off for good: a transient error
                # (a CUDA fault, a full disk) is raised, never turned into 8x the work for ever
                log.warning("%s: prefix reuse unavailable (%r); scoring questions one by one", self.slug, exc)
                self._warned_fallback = True
                self.prefix_reuse = False
        dists = self._halving_on_oom(self.overall, images, prompts, elements if any(elements) else None)
        if not any(elements):
            return dists, [{} for _ in images]
        return dists, self._halving_on_oom(self.elements_plain, images, prompts, elements)

    def _halving_on_oom(self, fn, *args):
        """``fn(*args)``, retried with half the batch while the device runs out of memory."""
        while True:
            try:
                return fn(*args)
            except torch.OutOfMemoryError:
                if self.batch_size == 1:
                    raise
                self.batch_size = max(1, self.batch_size // 2)
                self.batch_tokens //= 2
                log.warning("%s: out of memory; batch size halved to %d", self.slug, self.batch_size)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()

    def fit_prompt(self, prompt: str, where: str) -> str:
        """Refuse an empty prompt; cut an overlong one (with a warning) to fit the context.
        Training and validation apply the same cut, so a long prompt is scored in the wording it
        was trained and selected on."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{where}: empty prompt")
        if len(prompt) > self.max_prompt_chars:
            log.warning("%s: %d characters, truncated to %d", where, len(prompt), self.max_prompt_chars)
            return prompt[: self.max_prompt_chars]
        return prompt

    # -- public call ----------------------------------------------------------------------------
    def __call__(
        self,
        images: Sequence[ImageLike],
        prompts: Sequence[str],
        elements: Sequence[Sequence[str] | None] | None = None,
    ) -> list[ScoreResult]:
        """Score pairs: one :class:`ScoreResult` per (image, prompt), batched internally.

        Args:
            images: paths or PIL images, each decoded once.
            prompts: one prompt per image.
            elements: per pair, element keys (``"red circle (color)"``) or plain texts, or None.
        """
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        if elements is not None and len(elements) != len(prompts):
            raise ValueError(f"{len(elements)} element lists but {len(prompts)} prompts")
        prompts = [self.fit_prompt(p, f"prompt {i}") for i, p in enumerate(prompts)]
        pil = [open_image(im) for im in images]
        els = [list(e or []) for e in elements] if elements is not None else [[] for _ in pil]
        dists, probs = self.score_pairs(pil, list(prompts), els)
        scores, entropy = distribution_stats(dists)
        return [
            ScoreResult(float(s), [float(x) for x in d], float(h), probs[i])
            for i, (s, d, h) in enumerate(zip(scores, dists, entropy, strict=True))
        ]
