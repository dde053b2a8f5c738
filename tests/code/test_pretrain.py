import dataclasses
import random
import re

import pytest
import torch

from tokenfocus.backbones import load_model_and_processor
from tokenfocus.config import ConfigError, PretrainConfig
from tokenfocus.pretrain import ATTRIBUTES, Pool, check_accuracy, check_config, corpus, pretrain, question
from tokenfocus.synth import COUNTS, plural


def test_questions_are_true_of_their_scene():
    pool = Pool.draw(60, 64, seed=3, max_groups=3)
    rng = random.Random(0)
    seen = set()
    for scene in pool.scenes:
        colours = {g.color for g in scene.groups}
        assert len(colours) == len(scene.groups)  # one colour per group
        for _ in range(10):
            q = question(scene, list(ATTRIBUTES), rng)
            seen.add((q.kind, q.truth is None))
            by_noun = {plural(g.shape, 2): g for g in scene.groups}
            if q.kind == "color" and q.truth is None:  # "what color are the circles ?"
                assert q.answer == by_noun[q.text.split()[4]].color
            elif q.kind == "color":  # "are the circles red ?"
                _, _, noun, colour = q.text.rstrip(" ?").split()
                assert q.answer == ("yes" if colour == by_noun[noun].color else "no")
                assert q.truth == (colour in colours) == (q.answer == "yes")  # a false colour is nowhere
            elif q.kind == "count" and q.truth is not None:  # "are there two circles ?"
                _, _, count, noun = q.text.rstrip(" ?").split()
                assert q.answer == ("yes" if count == COUNTS[by_noun[noun].count] else "no")
            elif q.kind == "relation" and q.truth is None:
                assert q.answer.startswith(scene.relation)
            assert q.answer in ("yes", "no") or q.truth is None
    assert {(k, o) for k in ATTRIBUTES for o in (True, False)} == seen  # every kind, both ways


def test_one_group_pool_has_no_relation_questions():
    pool = Pool.draw(20, 64, seed=1, max_groups=1)
    assert all(len(s.groups) == 1 and s.relation is None for s in pool.scenes)
    rng = random.Random(0)
    assert {question(s, list(ATTRIBUTES), rng).kind for s in pool.scenes for _ in range(5)} <= set(
        ATTRIBUTES
    ) - {"relation"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"attributes": ["colour"]}, r"pretrain.attributes: unknown \['colour'\]"),
        ({"attributes": []}, "pretrain.attributes: empty"),
        ({"max_groups": 4}, "pretrain.max_groups: 4 is not in 1..3"),
        ({"attributes": ["color", "relation"], "max_groups": 1}, "relation needs pretrain.max_groups >= 2"),
        ({"attributes": ["relation"], "max_groups": 3}, "relation alone leaves one-group scenes"),
    ],
)
def test_bad_pretrain_config_names_the_key(change, message):
    with pytest.raises(ConfigError, match=message):
        check_config(dataclasses.replace(PretrainConfig(), **change))


def test_tokenizer_has_every_pretraining_word(tiny_params):
    bb = tiny_params.backbone("llava_siglip_tiny")
    _, processor = load_model_and_processor(bb.source, bb)
    tok = processor.tokenizer
    words = {w for text in corpus() for w in re.sub(r"\{\w+\}", " ", text).split()}
    assert {"what", "color", "how", "many", "red", "circles", "yes", "no"} <= words
    unknown = [w for w in words if tok.convert_tokens_to_ids(w) == tok.unk_token_id]
    assert not unknown


def test_pretraining_is_deterministic_changes_the_weights_and_reports(tiny_params):
    bb = tiny_params.backbone("idefics3_tiny")
    cfg = PretrainConfig(steps=3, batch_size=4, scenes=8, attributes=["color", "size"])
    states = []
    for _ in range(2):
        model, processor = load_model_and_processor(bb.source, bb)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        report = pretrain(model, processor, cfg, bb.image_size, slug="idefics3_tiny")
        states.append(model.state_dict())
    assert any(not torch.equal(before[k], states[0][k]) for k in before)
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert report["steps"] == 3 and report["cpu_minutes"] > 0
    assert set(report["check_accuracy"]) == {"color", "size", "all"}
    assert all(0.0 <= v <= 1.0 for v in report["check_accuracy"].values())


def test_check_accuracy_scores_each_attribute_against_the_truth(tiny_params):
    bb = tiny_params.backbone("idefics3_tiny")
    model, processor = load_model_and_processor(bb.source, bb)
    with torch.no_grad():  # every logit 0: yes never beats no, so the model always says "no"
        model.get_output_embeddings().weight.zero_()
    attrs, n, seed = ["color", "count"], 48, 1
    acc = check_accuracy(model, processor, bb.image_size, attrs, n=n, seed=seed)
    rng = random.Random(seed)
    qs = [
        question(s, attrs, rng, mode="check") for s in Pool.draw(n, bb.image_size, seed, max_groups=1).scenes
    ]
    for kind in attrs:
        truths = [q.truth for q in qs if q.kind == kind]
        assert acc[kind] == round(truths.count(False) / len(truths), 3)
    assert acc["all"] == round([q.truth for q in qs].count(False) / n, 3)
