"""The :class:`Scorer`: a loaded backbone that scores (image, prompt) pairs and their elements,
through the shared image prefix where the family allows it and question by question where not."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from tokenfocus.backbones import META_FILE, load_model_and_processor, template_parts
from tokenfocus.batches import image_tokens, plan_batches
from tokenfocus.config import BackboneConfig, GroundingConfig, PromptConfig, load_params
from tokenfocus.env import torch_threads
from tokenfocus.images import open_image
from tokenfocus.prompts import answer_tokens, element_text, overall_text
from tokenfocus.scoring.binding import asked_keys, bind
from tokenfocus.scoring.grounding import ground
from tokenfocus.scoring.mass import AnswerMass
from tokenfocus.scoring.mirror import mirror
from tokenfocus.scoring.readout import (
    CACHE_UNSUPPORTED,
    ScoreResult,
    distribution_stats,
    element_lists,
    encode,
    first_answer_logits,
)
from tokenfocus.scoring.reuse import PrefixReuse
from tokenfocus.stages import read_metrics  # a JSON file, or {} where there is none

log = logging.getLogger(__name__)
ImageLike = str | Path | Image.Image


class Scorer(PrefixReuse):
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
        grounding: GroundingConfig | None = None,
        answer_mass: dict | None = None,
        check_mass: bool = True,
    ):
        self.model, self.processor, self.prompts, self.slug = model, processor, prompts, slug
        self.batch_size, self.prefix_reuse = batch_size, prefix_reuse
        self.batch_tokens = batch_tokens  # padded tokens a batch may hold; 0 = batch_size alone
        self.kv_budget = kv_budget_mib * 2**20  # bytes of cache copies one chunk of questions may hold
        self.processor.tokenizer.padding_side = "left"
        self.parts = template_parts(processor)
        # the image prefix is shared only when the template writes the image before the question
        self.prefix_reuse = prefix_reuse and self.parts.image_in_head
        self.tokens = answer_tokens(processor.tokenizer, prompts, slug=slug or "backbone", parts=self.parts)
        self._warned_fallback = False
        # the answer tokens' share of the first token's probability, checked against the model's
        # own record (its folder's answer_mass) where it has one (tokenfocus/scoring/mass.py)
        self.mass = AnswerMass(slug or "backbone", answer_mass, check=check_mass)
        # the module that keeps M-RoPE offsets from the prefill (Qwen2-VL family), if any
        self._rope_state = next((m for m in model.modules() if hasattr(m, "rope_deltas")), None)
        self._suffix_cache: dict[str, list[int]] = {}
        self.max_prompt_chars = 600  # keeps question + element list inside small context windows
        self.suffix_chunk_factor = 4
        # spatial elements from where their objects stand (tokenfocus.scoring.grounding), as the
        # defaults say unless told otherwise; None once disabled
        grounding = grounding if grounding is not None else GroundingConfig()
        self.grounding = grounding if grounding.enabled else None

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
        grounding: GroundingConfig | None = None,
    ) -> Scorer:
        """Load a scorer from a params slug, a model folder, or a hub id.

        A slug resolves to its trained model when one exists, else to its base ``source``.
        ``grounding`` (spatial elements from where their objects stand) defaults to what the
        folder's bundle recorded, else to the params' ``score.grounding`` for a slug, else to
        :class:`GroundingConfig`'s defaults. A trained folder's record of its validation's answer
        mass sets when the first batch warns (:mod:`tokenfocus.scoring.mass`).
        """
        if threads:
            torch_threads(threads)
        path = Path(path_or_slug)
        slug, bb, prompts, meta = str(path_or_slug), None, PromptConfig(), {}
        if path.exists():
            meta = read_metrics(path / META_FILE)
            slug = meta.get("slug", path.name)
            bb = (
                BackboneConfig(**meta["backbone"]) if "backbone" in meta else BackboneConfig(source=str(path))
            )
            if "prompts" in meta:
                prompts = PromptConfig(**meta["prompts"])
            if grounding is None and "grounding" in meta:
                # a bundle from before counting was read from the parts asked its counts alone,
                # one from before the mirrored view asked each element once, and one from before
                # the bands and cells read its counts from the cuts' two parts; none held an element
                # to its object or named a short key's
                grounding = GroundingConfig(
                    **{
                        "count_categories": [],
                        "mirror_categories": [],
                        "bind_categories": [],
                        "name_categories": [],
                        "count_views": ["cuts"],
                        **meta["grounding"],
                    }
                )
            source = path
        elif Path(params).exists() and str(path_or_slug) in load_params(params).backbones:
            p = load_params(params)
            bb, prompts = p.backbone(slug), p.prompts_for(slug)
            grounding = grounding or p.score.grounding
            trained = Path(p.train.out) / slug / "model"
            source = trained if trained.exists() else Path(bb.source)
            meta = read_metrics(source / META_FILE)
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
            grounding=grounding,
            answer_mass=meta.get("answer_mass"),
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
            self.mass.observe(full, self.tokens.all_ids())
            out[idx] = torch.softmax(self.tokens.score_logits(full).float(), dim=-1).cpu()
        return out

    # -- elements -------------------------------------------------------------------------------
    def _yes_prob(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.tokens.yes_no_logits(logits).float(), dim=-1)[:, 0]

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

    def score_pairs(
        self,
        images: list[Image.Image],
        prompts: list[str],
        elements: list[list[str]],
        *,
        element_rows: bool = True,
    ) -> tuple[torch.Tensor, list[dict[str, float]]]:
        """Overall distributions (N, 5) and element P(yes), from a shared image prefix where the
        family allows it. With ``element_rows`` False the element questions are not asked (empty
        dicts); the overall questions still list ``elements``, so their distributions are the same."""
        names = asked_keys(prompts, elements, self.grounding)  # a short key asked with its object
        asked = [list(pair) for pair in names]
        dists, probs = self._questions(images, prompts, asked, element_rows)
        if self.grounding and element_rows:  # elements read from other views of the image too
            plain = self.elements_prefix if self.prefix_reuse else self.elements_plain
            ask = lambda *a: self._halving_on_oom(plain, *a)  # noqa: E731
            mirror(ask, images, prompts, probs, self.grounding.mirror_categories)
            ground(ask, images, prompts, asked, probs, self.grounding, pairs_at_a_time=self.batch_size)
            bind(prompts, probs, self.grounding)  # last: an element held to its object as read
        return dists, [{names[i][k]: p for k, p in pair.items()} for i, pair in enumerate(probs)]

    def _questions(self, images, prompts, elements, element_rows):
        """:meth:`score_pairs` with every element read from its own question."""
        if self.prefix_reuse:
            try:
                return self._halving_on_oom(self.shared, images, prompts, elements, element_rows)
            except CACHE_UNSUPPORTED as exc:  # a family whose forward cannot take a reused cache
                # only a family's own incapacity switches reuse off for good: a transient error
                # (a CUDA fault, a full disk) is raised, never turned into 8x the work for ever
                log.warning("%s: prefix reuse unavailable (%r); scoring questions one by one", self.slug, exc)
                self._warned_fallback = True
                self.prefix_reuse = False
        dists = self._halving_on_oom(self.overall, images, prompts, elements if any(elements) else None)
        if not any(elements) or not element_rows:
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

        Raises:
            ValueError: a count mismatch, an empty prompt or element key (named); ImageError: an image.
        """
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        if elements is not None and len(elements) != len(prompts):
            raise ValueError(f"{len(elements)} element lists but {len(prompts)} prompts")
        prompts = [self.fit_prompt(p, f"prompt {i}") for i, p in enumerate(prompts)]
        els = element_lists(elements, len(prompts))
        pil = [open_image(im) for im in images]
        dists, probs = self.score_pairs(pil, list(prompts), els)
        scores, entropy = distribution_stats(dists)
        return [
            ScoreResult(float(s), [float(x) for x in d], float(h), probs[i])
            for i, (s, d, h) in enumerate(zip(scores, dists, entropy, strict=True))
        ]
