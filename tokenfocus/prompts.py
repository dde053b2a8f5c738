"""Question templates (data, from params.yaml) and the answer-token ids they are read with."""

from __future__ import annotations

from dataclasses import dataclass

from tokenfocus.backbones import BackboneError, TemplateParts
from tokenfocus.config import PromptConfig


@dataclass(frozen=True)
class AnswerTokens:
    score_ids: list[int]  # ids of "1".."5", in score order
    yes_id: int
    no_id: int


def single_token_id(tokenizer, word: str, *, slug: str) -> int:
    """The id of ``word`` as exactly one token, or a clear error naming the backbone and word."""
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1:
        raise BackboneError(f"{slug}: answer word {word!r} is {len(ids)} tokens {ids}, not one")
    if ids[0] == getattr(tokenizer, "unk_token_id", None):
        raise BackboneError(f"{slug}: answer word {word!r} is unknown to the tokenizer")
    return ids[0]


def answer_tokens(tokenizer, prompts: PromptConfig, *, slug: str) -> AnswerTokens:
    """Resolve and check the score and yes/no token ids once per backbone."""
    score_ids = [single_token_id(tokenizer, w, slug=slug) for w in prompts.score_tokens]
    if len(set(score_ids)) != len(score_ids):
        raise BackboneError(f"{slug}: score tokens {prompts.score_tokens} are not distinct tokens")
    return AnswerTokens(
        score_ids,
        single_token_id(tokenizer, prompts.yes_token, slug=slug),
        single_token_id(tokenizer, prompts.no_token, slug=slug),
    )


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
