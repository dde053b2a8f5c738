"""Question templates (data, from params.yaml) and the answer-token ids they are read with."""

from __future__ import annotations

import re
from dataclasses import dataclass

from tokenfocus.backbones import BackboneError, TemplateParts
from tokenfocus.config import PromptConfig
from tokenfocus.evalmuse import parse_element_key
from tokenfocus.prefix import ids_after
from tokenfocus.render import COUNTS, RELATIONS


@dataclass(frozen=True)
class AnswerTokens:
    """The first answer token's ids of each answer, in every surface form the tokenizer has as one
    token right after the generation prompt ("yes", "Yes", " yes", " Yes").

    A documented choice: an answer's logit is the log of the summed probabilities of its forms
    (``logsumexp`` over their logits), so an Instruct model that answers "Yes" or a byte-level BPE
    that writes " 4" is read as it answers. An id shared by two answers is dropped from both.
    """

    score_sets: tuple[tuple[int, ...], ...]  # per score 1..5, its forms' ids (the configured form first)
    yes_ids: tuple[int, ...]
    no_ids: tuple[int, ...]

    @property
    def score_ids(self) -> list[int]:
        """The configured form of each score (what the lm baseline writes)."""
        return [ids[0] for ids in self.score_sets]

    @property
    def yes_id(self) -> int:
        return self.yes_ids[0]

    @property
    def no_id(self) -> int:
        return self.no_ids[0]

    @staticmethod
    def _gather(logits, sets) -> torch.Tensor:  # noqa: F821 - torch is imported by the caller
        if all(len(ids) == 1 for ids in sets):  # one form each: plain indexing, the same bits as ever
            return logits[:, [ids[0] for ids in sets]]
        import torch

        return torch.stack([logits[:, list(ids)].logsumexp(-1) for ids in sets], dim=-1)

    def score_logits(self, logits):
        """(B, V) first-answer logits -> (B, 5) logits of the scores 1..5."""
        return self._gather(logits, self.score_sets)

    def yes_no_logits(self, logits):
        """(B, V) first-answer logits -> (B, 2) logits of yes and no."""
        return self._gather(logits, (self.yes_ids, self.no_ids))

    def all_ids(self) -> list[int]:
        return sorted({i for ids in (*self.score_sets, self.yes_ids, self.no_ids) for i in ids})


def surface_forms(word: str) -> list[str]:
    """The forms an answer may take: as configured, capitalised, each with a leading space."""
    forms = [word, word.capitalize(), " " + word, " " + word.capitalize()]
    return list(dict.fromkeys(forms))


def in_context_ids(tokenizer, context: str, form: str) -> list[int]:
    """The token ids ``form`` becomes when it follows ``context`` (not encoded on its own: a
    byte-level BPE or a SentencePiece tokenizer splits a word differently after other text);
    [] when it merges with the context's last token."""
    try:
        return ids_after(tokenizer, context, [form])[0]
    except ValueError:
        return []


def single_token_id(tokenizer, word: str, *, slug: str, context: str = "") -> int:
    """The id of ``word`` as exactly one token after ``context``, or a clear error naming the
    backbone and word."""
    ids = (
        in_context_ids(tokenizer, context, word)
        if context
        else tokenizer.encode(word, add_special_tokens=False)
    )
    if len(ids) != 1:
        raise BackboneError(f"{slug}: answer word {word!r} is {len(ids)} tokens {ids}, not one")
    if ids[0] == getattr(tokenizer, "unk_token_id", None):
        raise BackboneError(f"{slug}: answer word {word!r} is unknown to the tokenizer")
    return ids[0]


def answer_tokens(
    tokenizer, prompts: PromptConfig, *, slug: str, parts: TemplateParts | None = None
) -> AnswerTokens:
    """Resolve and check the score and yes/no token ids once per backbone, in context: after the
    chat template's generation prompt (``parts``), as the model reads them when it answers."""
    context = parts.head + "Q" + parts.tail if parts is not None else ""
    unk = getattr(tokenizer, "unk_token_id", None)
    words = [*prompts.score_tokens, prompts.yes_token, prompts.no_token]
    sets = []
    for w in words:
        ids = [
            single_token_id(tokenizer, w, slug=slug, context=context)
        ]  # the configured form must be one token
        for form in surface_forms(w)[1:]:
            got = (
                in_context_ids(tokenizer, context, form)
                if context
                else tokenizer.encode(form, add_special_tokens=False)
            )
            if len(got) == 1 and got[0] != unk and got[0] not in ids:
                ids.append(got[0])
        sets.append(ids)
    shared = {
        i
        for a, ids in enumerate(sets)
        for i in ids
        if any(i in other for b, other in enumerate(sets) if b != a)
    }
    if any(ids[0] in shared for ids in sets):
        raise BackboneError(f"{slug}: answer words {words} are not distinct tokens")
    sets = [tuple(i for i in ids if i not in shared) for ids in sets]
    return AnswerTokens(tuple(sets[:-2]), sets[-2], sets[-1])


def element_phrase(key_or_text: str) -> str:
    """The element text of a key: ``"red circle (color)"`` -> ``"red circle"``."""
    from tokenfocus.evalmuse import parse_element_key

    return parse_element_key(key_or_text).text


def overall_question(prompts: PromptConfig, prompt: str, elements: list[str] | None) -> str:
    """The 1..5 question; with structural prompting it also lists the prompt's elements."""
    q = prompts.overall.format(prompt=prompt)
    if prompts.use_structure and elements:
        q += prompts.structural.format(elements=" , ".join(element_phrase(e) for e in elements))
    return q


def overall_text(parts: TemplateParts, prompts: PromptConfig, prompt: str, elements: list[str] | None) -> str:
    """The full chat text of the overall question, ending with the generation prompt."""
    return parts.head + overall_question(prompts, prompt, elements) + parts.tail


def _split_element_question(template: str) -> tuple[str, str]:
    """The element question (after a space) cut at the last space before ``{element}``.

    Returns ``(shared, per_element)``: the words every element question of a pair shares, and
    the rest, still holding ``{element}``; their concatenation is the whole question.
    """
    question = " " + template
    cut = question.rfind(" ", 0, question.index("{element}"))
    return question[:cut], question[cut:]


def element_prefix(parts: TemplateParts, prompts: PromptConfig, prompt: str) -> str:
    """The part every element question of one (image, prompt) shares: image, prompt, and the
    question's words before the element (cached once, so only the element words run per question)."""
    shared, _ = _split_element_question(prompts.element)
    return parts.head + prompts.element_context.format(prompt=prompt) + shared


def element_suffix(parts: TemplateParts, prompts: PromptConfig, element: str) -> str:
    """What follows the shared prefix for one element, up to the generation prompt."""
    _, rest = _split_element_question(prompts.element)
    return rest.format(element=element_phrase(element)) + parts.tail


def element_text(parts: TemplateParts, prompts: PromptConfig, prompt: str, element: str) -> str:
    """The full chat text of one element question (the plain, no-reuse path)."""
    return element_prefix(parts, prompts, prompt) + element_suffix(parts, prompts, element)


#: Count words a counterfactual moves one up or down (plural to plural: "one" is never claimed or
#: left, so the noun's number never gives a swap away).
COUNT_WORDS = (*(COUNTS[n] for n in sorted(COUNTS) if n > 1), "five", "six", "seven", "eight", "nine", "ten")
#: Relations a counterfactual turns round: the renderer's, and the depth pair real prompts use.
OPPOSITES = {**RELATIONS, "in front of": "behind", "behind": "in front of"}


def counterfactual(
    prompt: str, key: str, up: bool, counts: tuple[str, ...] = COUNT_WORDS
) -> tuple[str, str] | None:
    """An element that contradicts ``key``, and the prompt that claims it instead.

    A counting element's count moves one up (``up``) or down, a spatial element's relation turns
    round, in the key and at the same place in the prompt, so that the text alone cannot tell the
    counterfactual from a real element: only the image can. A compositional key (``"three circles
    (counting)"``) finds its count before its noun in the prompt; a short one (``"three
    (counting)"``) the first such word. ``counts``: the count words a new count may be (the
    data's own, so no unseen word gives the swap away); where one way leaves them, it goes the other.

    Returns:
        ``(prompt, key)``, or None when the key is neither kind or its words are not in the prompt.
    """
    el = parse_element_key(key)
    words = el.text.split()
    if el.category == "counting":
        i = next((j for j, w in enumerate(words) if w in COUNT_WORDS), None)
        if i is None:
            return None
        at = COUNT_WORDS.index(words[i])
        moves = [at + 1, at - 1] if up else [at - 1, at + 1]
        new = next(
            (COUNT_WORDS[n] for n in moves if 0 <= n < len(COUNT_WORDS) and COUNT_WORDS[n] in counts), None
        )
        if new is None:
            return None
        old = words[i]
        after = words[i + 1] if i + 1 < len(words) else None
    elif el.category == "spatial":
        old = next(
            (r for r in sorted(OPPOSITES, key=len, reverse=True) if re.search(rf"\b{r}\b", el.text)), None
        )
        if old is None:
            return None
        new, after = OPPOSITES[old], None
    else:
        return None
    # the noun may stand in the singular in the key and the plural in the prompt ("circle"/"circles")
    near = rf"(?=(?:\s+\S+){{0,3}}?\s+{re.escape(after.rstrip('s'))}\w*\b)" if after else ""
    found = re.search(rf"\b{re.escape(old)}\b{near}", prompt)
    if not found:
        return None
    swapped_key = key.replace(el.text, re.sub(rf"\b{re.escape(old)}\b", new, el.text, count=1), 1)
    return prompt[: found.start()] + new + prompt[found.end() :], swapped_key
