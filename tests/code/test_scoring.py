from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.conftest import FAMILIES, PATH_BACKBONES
from tokenfocus.config import load_params
from tokenfocus.evalmuse import load_records
from tokenfocus.images import load_images
from tokenfocus.scoring import Scorer, distribution_stats


@pytest.fixture(scope="module")
def sample(small_data):
    recs = load_records(small_data / "train_list.json")[:6]
    images = load_images(small_data / "images", [r.img_path for r in recs])
    return recs, [images[r.img_path] for r in recs]


ROOT = Path(__file__).resolve().parents[2]
#: The shipped, really pre-trained bases (pulled by `make bases`): their outputs depend on
#: position and image, so a position-id or padding bug moves them; a 2-step base would hide it.
SHIPPED = [f"shipped:{s}" for s, bb in load_params(ROOT / "params.yaml").backbones.items() if bb.family]
ALL = [*FAMILIES, *PATH_BACKBONES, *SHIPPED]
TOL = 1e-4
#: How much further apart the pairs must score than the tolerance, or the equality proves nothing (the
#: 2-step tiny bases spread about 90x, the shipped bases far more)
SPREAD = 20


def _source(tiny_params, slug: str) -> str:
    if slug.startswith("shipped:"):
        path = ROOT / "models" / "base" / slug.split(":", 1)[1]
        assert path.is_dir(), f"{path} is missing: run `make bases`"
        return str(path)
    return tiny_params.backbone(slug).source


def _spread(values: list[float]) -> float:
    return max(values) - min(values)


@pytest.mark.parametrize("slug", ALL)
def test_distributions_and_prefix_reuse(tiny_params, sample, slug):
    recs, imgs = sample
    scorer = Scorer.load(_source(tiny_params, slug), batch_size=4)
    prompts = [r.prompt for r in recs]
    els = [[e.key for e in r.elements] for r in recs]
    results = scorer(imgs, prompts, els)
    for r, keys in zip(results, els, strict=True):
        assert sum(r.distribution) == pytest.approx(1.0, abs=1e-5)
        assert 1.0 <= r.score <= 5.0
        assert 0.0 <= r.entropy <= torch.log(torch.tensor(5.0)).item() + 1e-6
        assert list(r.elements) == keys and all(0 <= p <= 1 for p in r.elements.values())
    plain = scorer.elements_plain(imgs, prompts, els)
    reused = scorer.elements_prefix(imgs, prompts, els)
    dists, shared = scorer.shared(imgs, prompts, els)  # one image prefix for every question of a pair
    assert not scorer._warned_fallback
    for got in (reused, shared):
        diffs = [abs(plain[i][k] - got[i][k]) for i in range(len(recs)) for k in els[i]]
        assert max(diffs) < TOL
    overall = scorer.overall(imgs, prompts, els)
    assert (dists - overall).abs().max().item() < TOL
    assert _spread(distribution_stats(overall)[0].tolist()) > SPREAD * TOL
    # the equality proves something only if the outputs move far more than the tolerance
    assert _spread([p[k] for i, p in enumerate(plain) for k in els[i]]) > SPREAD * TOL


@pytest.mark.parametrize("reuse", [True, False])
def test_a_val_pass_without_element_questions_scores_the_pairs_the_same(tiny_params, sample, reuse):
    """``train.val_elements`` false: the overall questions alone, which still list the elements,
    give the very distributions (so val SRCC and the checkpoint picked) of the full pass."""
    from tokenfocus.train.trainer import evaluate_split

    recs, imgs = sample
    scorer = Scorer.load(_source(tiny_params, "shipped:fastvlm_gemma"), batch_size=4)
    scorer.prefix_reuse = reuse
    prompts = [r.prompt for r in recs]
    els = [[e.key for e in r.elements] for r in recs]
    dists, probs = scorer.score_pairs(imgs, prompts, els)
    alone, none = scorer.score_pairs(imgs, prompts, els, element_rows=False)
    assert torch.equal(alone, dists) and none == [{} for _ in recs]
    assert all(probs)  # the full pass asked them
    bare, _ = scorer.score_pairs(imgs, prompts, [[] for _ in recs])
    assert not torch.equal(bare, dists)  # the element list is part of the overall question
    images = {r.img_path: im for r, im in zip(recs, imgs, strict=True)}
    full, fast = (evaluate_split(scorer, recs, images, elements=e) for e in (True, False))
    assert fast["srcc"] == full["srcc"] and fast["plcc"] == full["plcc"]
    assert full["element_acc"] is not None and fast["element_acc"] is None and fast["final"] is None


@pytest.mark.parametrize("slug", ALL)
def test_a_pair_scores_the_same_alone_and_in_a_left_padded_batch(tiny_params, sample, slug):
    """Left padding and mixed image sizes must not move a pair's scores (a classic silent drift).
    Prompts of different lengths pad differently; images are resized to different sizes, which
    Qwen2-VL's dynamic resolution turns into different numbers of image tokens."""
    recs, imgs = sample
    sizes = [(64, 64), (48, 64), (64, 40), (56, 56), (64, 64), (40, 48)]
    imgs = [im.resize(s) for im, s in zip(imgs, sizes, strict=True)]
    prompts = [r.prompt + " and more words" * i for i, r in enumerate(recs)]  # lengths differ
    els = [[e.key for e in r.elements] for r in recs]
    scorer = Scorer.load(_source(tiny_params, slug), batch_size=8)
    together = scorer(imgs, prompts, els)
    assert _spread([r.score for r in together]) > SPREAD * TOL
    assert _spread([p for r in together for p in r.elements.values()]) > SPREAD * TOL
    for i in range(len(recs)):
        alone = scorer(imgs[i : i + 1], prompts[i : i + 1], els[i : i + 1])[0]
        assert alone.score == pytest.approx(together[i].score, abs=TOL)
        assert alone.distribution == pytest.approx(together[i].distribution, abs=TOL)
        assert alone.elements.keys() == together[i].elements.keys()
        assert all(abs(alone.elements[k] - together[i].elements[k]) < TOL for k in alone.elements)
    assert not scorer._warned_fallback  # every family reuses the prefix, none falls back


def test_suffix_ids_are_reused_across_calls_and_bounded(tiny_params, sample, monkeypatch):
    import tokenfocus.scoring.reuse as reuse
    from tokenfocus.prompts import element_suffix

    recs, imgs = sample
    scorer = Scorer.load(tiny_params.backbone("idefics3_tiny").source, batch_size=4)
    prompts = [r.prompt for r in recs]
    els = [[e.key for e in r.elements] for r in recs]
    first = scorer.elements_prefix(imgs, prompts, els)
    assert set(scorer._suffix_cache) == {k for ks in els for k in ks}
    # the cached ids are what the tokenizer gives for each element's question suffix
    key = els[0][0]
    suffix = element_suffix(scorer.parts, scorer.prompts, key)
    assert scorer._suffix_cache[key] == scorer.processor.tokenizer.encode(suffix, add_special_tokens=False)
    assert scorer.elements_prefix(imgs, prompts, els) == first
    # past the bound, the cache starts over instead of growing, and results do not change
    monkeypatch.setattr(reuse, "SUFFIX_CACHE_MAX", 1)
    other = [["blue star (color)"] for _ in recs]
    plain = scorer.elements_plain(imgs, prompts, other)
    again = scorer.elements_prefix(imgs, prompts, other)
    assert set(scorer._suffix_cache) == {"blue star (color)"}
    assert max(abs(plain[i][k] - again[i][k]) for i in range(len(recs)) for k in other[i]) < 1e-4
    # a call mixing a cached key with a new one, past the bound, keeps both
    mixed = [["blue star (color)", "two squares (counting)"] for _ in recs]
    assert scorer.elements_prefix(imgs, prompts, mixed)[0].keys() == {
        "blue star (color)",
        "two squares (counting)",
    }
    assert set(scorer._suffix_cache) == {"blue star (color)", "two squares (counting)"}


def test_paths_and_pil_give_the_same_scores(tiny_params, small_data, sample):
    recs, imgs = sample
    scorer = Scorer.load(tiny_params.backbone("idefics3_tiny").source)
    a = scorer([small_data / "images" / recs[0].img_path], [recs[0].prompt])[0]
    b = scorer([imgs[0]], [recs[0].prompt])[0]
    assert a.score == pytest.approx(b.score, abs=1e-6) and a.elements == {}


def test_batching_does_not_change_scores(tiny_params, sample):
    recs, imgs = sample
    prompts = [r.prompt for r in recs]
    src = tiny_params.backbone("llava_siglip_tiny").source
    one = [
        Scorer.load(src, batch_size=1)(imgs[i : i + 1], prompts[i : i + 1])[0].score for i in range(len(recs))
    ]
    many = [r.score for r in Scorer.load(src, batch_size=8)(imgs, prompts)]
    assert one == pytest.approx(many, abs=1e-4)


def test_mismatched_lengths_and_bad_images_are_errors(tiny_params, tmp_path):
    scorer = Scorer.load(tiny_params.backbone("idefics3_tiny").source)
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        scorer([Image.new("RGB", (64, 64))] * 2, ["a"])
    (tmp_path / "x.png").write_text("not an image")
    with pytest.raises(ValueError, match="x.png: cannot decode"):
        scorer([tmp_path / "x.png"], ["a"])


def test_distribution_stats_by_hand():
    probs = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0], [0.2, 0.2, 0.2, 0.2, 0.2]])
    mean, ent = distribution_stats(probs)
    assert mean.tolist() == pytest.approx([3.0, 3.0])
    assert ent.tolist() == pytest.approx([0.0, torch.log(torch.tensor(5.0)).item()], abs=1e-6)


@pytest.mark.parametrize(
    ("template", "shared"),
    [
        ("Does the image show {element} ? Answer yes or no .", " Does the image show"),
        ("{element} ? yes or no", ""),
        ("Is '{element}' visible ?", " Is"),
    ],
)
def test_element_prefix_takes_the_words_before_the_element(template, shared):
    """Prefix + suffix is exactly the plain question, and the cached prefix ends before the element."""
    from tokenfocus.backbones import TemplateParts
    from tokenfocus.config import PromptConfig
    from tokenfocus.prompts import element_prefix, element_suffix, element_text

    parts, prompts = TemplateParts("<H>", "<T>"), PromptConfig(element=template)
    key = "red circle (color)"
    plain = (
        "<H>"
        + prompts.element_context.format(prompt="p")
        + " "
        + template.format(element="red circle")
        + "<T>"
    )
    assert element_text(parts, prompts, "p", key) == plain
    assert element_prefix(parts, prompts, "p").endswith(prompts.element_context.format(prompt="p") + shared)
    assert "red" not in element_prefix(parts, prompts, "p")
    assert element_suffix(parts, prompts, key).startswith(" ")


def test_a_convolutional_tower_scores_in_bfloat16(tiny_params, small_data):
    """Processors return float32 pixels; FastVLM's ResNet tower does not cast them itself."""
    import dataclasses as dc

    from tokenfocus.backbones import load_model_and_processor
    from tokenfocus.evalmuse import load_records
    from tokenfocus.scoring import Scorer

    bb = tiny_params.backbone("fastvlm_llama")
    recs = load_records(small_data / "train_list.json")[:4]
    imgs = [str(small_data / "images" / r.img_path) for r in recs]
    out = {}
    for dtype in ("float32", "bfloat16"):
        model, processor = load_model_and_processor(bb.source, dc.replace(bb, dtype=dtype))
        res = Scorer(model, processor, tiny_params.prompts)(
            imgs, [r.prompt for r in recs], [[e.key for e in r.elements] for r in recs]
        )
        out[dtype] = [x.score for x in res]
    assert all(abs(a - b) < 0.1 for a, b in zip(out["float32"], out["bfloat16"], strict=True)), out


def test_out_of_memory_halves_the_batch_and_a_transient_error_keeps_prefix_reuse(tiny_params, sample):
    """Injected errors: out of memory halves the batch and retries (same scores); a transient
    error is raised and leaves prefix reuse on; only a family's incapacity switches it off."""
    recs, imgs = sample
    prompts, els = [r.prompt for r in recs], [[e.key for e in r.elements] for r in recs]
    scorer = Scorer.load(_source(tiny_params, "shipped:fastvlm_gemma"), batch_size=8)
    expected = scorer(imgs, prompts, els)
    real = scorer.shared
    calls = []

    def flaky(*args):
        calls.append(scorer.batch_size)
        if len(calls) <= 2:
            raise torch.OutOfMemoryError("injected")
        return real(*args)

    scorer.shared = flaky
    got = scorer(imgs, prompts, els)
    assert calls == [8, 4, 2] and scorer.batch_size == 2 and scorer.prefix_reuse
    assert all(a.elements == pytest.approx(b.elements, abs=TOL) for a, b in zip(got, expected, strict=True))
    assert all(a.score == pytest.approx(b.score, abs=TOL) for a, b in zip(got, expected, strict=True))

    def transient(*args):
        raise RuntimeError("injected: device fault")

    scorer.shared = transient
    with pytest.raises(RuntimeError, match="device fault"):
        scorer(imgs, prompts, els)
    assert scorer.prefix_reuse and not scorer._warned_fallback

    def incapable(*args):
        raise TypeError("injected: forward() got an unexpected keyword argument 'cache'")

    scorer.shared = incapable
    fallback = scorer(imgs, prompts, els)
    assert not scorer.prefix_reuse and scorer._warned_fallback
    assert all(
        a.elements == pytest.approx(b.elements, abs=TOL) for a, b in zip(fallback, expected, strict=True)
    )


def test_fit_prompt_cuts_a_long_prompt_and_refuses_an_empty_one(tiny_params):
    """The cut that scoring, training (Trainer._loss) and validation (evaluate_split) all apply."""
    scorer = Scorer.load(_source(tiny_params, "shipped:fastvlm_qwen2"))
    long = "two red circles " * 100
    assert scorer.fit_prompt(long, "p") == long[: scorer.max_prompt_chars]
    with pytest.raises(ValueError, match="empty prompt"):
        scorer.fit_prompt("  ", "p")


def test_the_kv_budget_bounds_the_question_rows_and_leaves_the_scores(tiny_params, sample):
    """Each element question row copies its pair's cache: the rows of one forward are bounded by
    ``score.kv_budget_mib``, down to one row, and the scores do not depend on it."""
    from tokenfocus.prefix import kv_bytes, prefill
    from tokenfocus.scoring import encode

    recs, imgs = sample
    prompts, els = [r.prompt for r in recs], [[e.key for e in r.elements] for r in recs]
    wide = Scorer.load(_source(tiny_params, "qwen2_vl_tiny"), batch_size=4)
    batch = encode(wide.processor, [wide.parts.head] * 2, imgs[:2])
    prefix = prefill(wide.model, batch, wide._rope_state)
    per_row = kv_bytes(prefix.cache) // 2
    assert wide.element_chunk(prefix) == 4 * wide.suffix_chunk_factor  # the budget is far away
    tight = Scorer.load(
        _source(tiny_params, "qwen2_vl_tiny"), batch_size=4, kv_budget_mib=3.5 * per_row / 2**20
    )
    assert tight.element_chunk(prefix) == 3
    tiny = Scorer.load(_source(tiny_params, "qwen2_vl_tiny"), batch_size=4, kv_budget_mib=1e-6)
    assert tiny.element_chunk(prefix) == 1
    a, b = wide(imgs, prompts, els), tiny(imgs, prompts, els)
    for x, y in zip(a, b, strict=True):
        assert x.score == pytest.approx(y.score, abs=TOL)
        assert all(x.elements[k] == pytest.approx(y.elements[k], abs=TOL) for k in x.elements)


def test_batches_sort_by_image_tokens_and_close_at_the_token_budget():
    from tokenfocus.batches import plan_batches

    # rows alone: sorted by text length, batch_size rows a batch
    assert plan_batches([40, 8, 80, 8], [0, 0, 0, 0], 3) == [[1, 3, 0], [2]]
    # sizes (image + text / 4): 20, 110, 20, 110; small images first, and two large rows fit 250
    assert plan_batches([40] * 4, [10, 100, 10, 100], 8, batch_tokens=250) == [[0, 2], [1, 3]]
    assert plan_batches([40] * 4, [10, 100, 10, 100], 8, batch_tokens=200) == [[0, 2], [1], [3]]
    assert plan_batches([40] * 2, [500, 500], 8, batch_tokens=10) == [[0], [1]]  # one row always runs


def test_a_token_budget_splits_dynamic_resolution_batches_and_leaves_the_scores(tiny_params, sample):
    """Qwen2-VL's image tokens follow the image size: the processor's count orders and cuts the
    batches, and the scores do not depend on how the pairs were batched."""
    recs, imgs = sample
    sizes = [(64, 64), (32, 32), (64, 48), (32, 40), (64, 64), (40, 32)]
    imgs = [im.resize(s) for im, s in zip(imgs, sizes, strict=True)]
    prompts, els = [r.prompt for r in recs], [[e.key for e in r.elements] for r in recs]
    free = Scorer.load(_source(tiny_params, "qwen2_vl_tiny"), batch_size=8)
    tokens = free.image_tokens(imgs)
    assert tokens[0] == 16 and tokens[1] == 4 and len(set(tokens)) > 2  # (64 / 8 / 2)^2 per image
    budget = 3 * (max(tokens) + 40)
    tight = Scorer.load(_source(tiny_params, "qwen2_vl_tiny"), batch_size=8, batch_tokens=budget)
    chunks = list(tight._batches(len(imgs), [len(p) for p in prompts], "t", tokens))
    assert len(chunks) > 1 and all(
        len(c) == 1 or len(c) * max(tokens[i] + len(prompts[i]) // 4 for i in c) <= budget for c in chunks
    )
    for x, y in zip(free(imgs, prompts, els), tight(imgs, prompts, els), strict=True):
        assert x.score == pytest.approx(y.score, abs=TOL)
        assert all(x.elements[k] == pytest.approx(y.elements[k], abs=TOL) for k in x.elements)


def test_an_image_after_the_question_shares_no_prefix(tiny_params, sample, tmp_path):
    """A chat template may write the image after the question. No image prefix can be shared
    then: the scorer knows it from the template, scores every question whole, and never tries (and
    fails) the shared path first."""
    import shutil

    from tokenfocus.prompts import element_text
    from tokenfocus.tiny import CHAT_TEMPLATE

    recs, imgs = sample
    first = Path(_source(tiny_params, "shipped:fastvlm_gemma"))
    last = tmp_path / "image_last"
    shutil.copytree(first, last)
    # the minimal template with the image written after the text of the turn
    image = "{% if c['type'] == 'image' %}IMAGE{% else %}{{ ' ' + c['text'] }}{% endif %}"
    text_then_image = (
        "{% if c['type'] != 'image' %}{{ ' ' + c['text'] }}{% endif %}{% endfor %}"
        "{% for c in m['content'] %}{% if c['type'] == 'image' %}IMAGE{% endif %}"
    )
    assert image in CHAT_TEMPLATE
    template = CHAT_TEMPLATE.replace(image, text_then_image).replace("IMAGE", "<image>")
    (last / "chat_template.jinja").write_text(template)
    before, after = Scorer.load(first), Scorer.load(last)
    assert before.parts.image_in_head and before.prefix_reuse
    assert not after.parts.image_in_head and not after.prefix_reuse
    key = recs[0].elements[0].key
    text = element_text(after.parts, after.prompts, recs[0].prompt, key)
    assert text.index("<image>") > text.index("Answer yes or no")
    prompts, els = [r.prompt for r in recs], [[e.key for e in r.elements] for r in recs]
    got = after(imgs, prompts, els)
    assert not after._warned_fallback
    # the same weights read the question in the other order: other answers
    moved = [
        abs(a - b)
        for r, s in zip(got, before(imgs, prompts, els), strict=True)
        for a, b in zip(r.elements.values(), s.elements.values(), strict=True)
    ]
    assert max(moved) > SPREAD * TOL


def _mass_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "answer tokens carry" in r.getMessage()]


#: words the Gemma base reads in every prompt but never begins an answer with
WRONG_ANSWERS = {
    "score_tokens": ["red", "blue", "green", "circle", "square"],
    "yes_token": "left",
    "no_token": "right",
}


@pytest.mark.parametrize("reuse", [True, False])
def test_answer_tokens_the_checkpoint_does_not_answer_with_are_warned_of_once(sample, caplog, reuse):
    """A base put on answer tokens it does not answer with warns, once, with the share it carries;
    on its own tokens it stays quiet. A record of the model's own validation (a trained folder's
    ``answer_mass``) moves the floor to half of what its least 5% of questions carried."""
    from tokenfocus.config import PromptConfig
    from tokenfocus.scoring import MIN_ANSWER_MASS

    recs, imgs = sample
    base = Scorer.load(_source(None, "shipped:fastvlm_gemma"), batch_size=2)
    prompts, els = [r.prompt for r in recs], [[e.key for e in r.elements][:1] for r in recs]
    for words, record, warns in (
        ({}, None, None),
        (WRONG_ANSWERS, None, f"(below {100 * MIN_ANSWER_MASS:.0f}%)"),
        ({}, {"mean": 0.95, "low": 0.9, "rows": 10}, None),
        (WRONG_ANSWERS, {"mean": 0.95, "low": 0.9, "rows": 10}, "under half of the 90.0%"),
        # a model whose own validation carried next to nothing there: the floor falls with it
        (WRONG_ANSWERS, {"mean": 1e-6, "low": 1e-6, "rows": 10}, None),
    ):
        caplog.clear()
        scorer = Scorer(
            base.model,
            base.processor,
            PromptConfig(**words),
            slug="gemma-base",
            batch_size=2,
            answer_mass=record,
        )
        scorer.prefix_reuse = reuse
        scorer(imgs, prompts, els)
        first = scorer.mass.first
        # the premise: the base answers with its own tokens (~1), never with these (~1e-5)
        assert (first > 0.9) if not words else (1e-5 < first < 1e-3), (words, first)
        got = _mass_warnings(caplog)
        if warns is None:
            assert not got, (words, record, got)
        else:  # three batches scored, one warning, naming the model and the share
            assert len(got) == 1, (words, record, got)
            assert (
                got[0].startswith(f"gemma-base: the answer tokens carry {100 * first:.2g}%")
                and warns in got[0]
            )
