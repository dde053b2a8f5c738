import dataclasses
import random
import re

import pytest
import torch
import torch.nn.functional as F
from mlflow import MlflowClient
from mlflow.entities import Metric

from tokenfocus.backbones import load_model_and_processor
from tokenfocus.config import ConfigError, PretrainConfig
from tokenfocus.pretrain import check_config, corpus, guarded, pretrain, pretrain_base
from tokenfocus.pretrain.checks import balanced_accuracy, check_accuracy
from tokenfocus.pretrain.curriculum import ATTRIBUTES, Pool, question
from tokenfocus.pretrain.parts import part
from tokenfocus.render import COUNTS, SHAPES, StyleError
from tokenfocus.stages import pretrain_metrics
from tokenfocus.synth import plural


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
        ({"tower_groups": 0}, "pretrain.tower_groups: 0 is not in 1..3"),
        ({"attributes": ["color", "relation"], "max_groups": 1}, "relation needs pretrain.max_groups >= 2"),
        ({"attributes": ["relation"], "max_groups": 3}, "relation alone leaves one-group scenes"),
        ({"open_frac": 0.6, "element_frac": 0.6}, "open_frac \\+ pretrain.element_frac: more than 1"),
        ({"batch_size": 0}, "pretrain.batch_size: 0 is out of range"),
        ({"element_frac": 1.5}, "pretrain.element_frac: 1.5 is not in 0..1"),
        (
            {"tower_head_weight": 1.0, "tower_groups": 1},
            "pretrain.tower_head_weight: the heads of a one-group",
        ),
        ({"tower_lr_scale": -0.1}, "pretrain.tower_lr_scale: -0.1 is negative"),
        ({"tower_readout": "cls"}, "pretrain.tower_readout: 'cls' is not pooled or tokens"),
        ({"count_false": "near"}, "pretrain.count_false: 'near' is not any or adjacent"),
        ({"gemm": "cublas"}, r"pretrain.gemm must be one of \['mkl', 'openblas'\], got 'cublas'"),
        ({"token_relation_weight": -0.3}, "pretrain.token_relation_weight: -0.3 is negative"),
        ({"count_weights": [1.0, 1.0]}, r"pretrain.count_weights: \[1.0, 1.0\] is not 4 odds"),
        ({"count_weights": [0, 0, 0, 1]}, r"pretrain.count_weights: \[0, 0, 0, 1\] is not 4 odds"),
        ({"stage_floor": 1.5}, "pretrain.stage_floor: 1.5 is not in 0..1"),
        ({"stage_retries": 5}, "pretrain.stage_retries: 5 is not in 0..3"),
        ({"part_frac": 1.5}, "pretrain.part_frac: 1.5 is not in 0..1"),
        ({"part_frac": 0.5, "element_frac": 0.0}, "pretrain.part_frac: a share of stage 3's element"),
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
    bb = tiny_params.backbone("fastvlm_llama")
    cfg = PretrainConfig(tower_steps=2, steps=2, element_steps=2, batch_size=8, check_scenes=16)
    states = []
    for _ in range(2):
        model, processor = load_model_and_processor(bb.source, bb)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        report = pretrain(model, processor, cfg, bb.image_size, family=bb.family, slug="fastvlm_llama")
        states.append(model.state_dict())
    changed = {k for k in before if not torch.equal(before[k], states[0][k])}
    assert any("vision_tower" in k for k in changed)  # stage 1 trains the tower
    assert any("language_model" in k for k in changed)  # stages 2 and 3 the language model
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])  # same seed, same weights
    assert list(report["stages"]) == ["tower", "pairs", "elements"]
    assert all(r["steps"] == 2 for r in report["stages"].values()) and report["cpu_minutes"] >= 0
    assert set(report["check_accuracy"]) == {*cfg.attributes, "all"}
    assert set(report["element_accuracy"]) <= {"object", "counting", "color", "attribute", "spatial", "all"}


def test_pretraining_on_openblas_with_fused_adamw_is_its_own_reproducible_draw(tiny_params):
    from tokenfocus.gemm import _active

    bb = tiny_params.backbone("fastvlm_llama")
    common = {"tower_steps": 2, "steps": 2, "element_steps": 2, "batch_size": 8, "check_scenes": 16}
    runs = {
        "mkl": {},
        "openblas": {"gemm": "openblas"},
        "fused": {"fused_adamw": True},
        "both": {"gemm": "openblas", "fused_adamw": True},
        "both again": {"gemm": "openblas", "fused_adamw": True},
    }
    states = {}
    for name, extra in runs.items():
        model, processor = load_model_and_processor(bb.source, bb)
        pretrain(model, processor, PretrainConfig(**common, **extra), bb.image_size, family=bb.family)
        states[name] = model.state_dict()
        assert not _active  # torch's own kernels are back after it

    def same(a, b):
        return all(torch.equal(states[a][k], states[b][k]) for k in states[a])

    assert same("both", "both again")  # reruns to the bit
    # each switch is another draw: the BLAS sums in another order, the fused step rounds its own way
    assert not same("mkl", "openblas") and not same("mkl", "fused") and not same("openblas", "both")
    with pytest.raises(
        ConfigError, match=r"pretrain.gemm must be one of \['mkl', 'openblas'\], got 'cublas'"
    ):
        pretrain(model, processor, PretrainConfig(**common, gemm="cublas"), bb.image_size, family=bb.family)


def test_a_guarded_stage_below_its_floor_runs_again_from_its_start_and_keeps_the_best(tiny_params):
    bb = tiny_params.backbone("fastvlm_llama")
    model, _ = load_model_and_processor(bb.source, bb)
    name, start = next(iter(model.state_dict().items()))
    start = start.clone()
    scores, seen = [0.2, 0.6, 0.4], []

    def run(attempt: int) -> dict:  # a stage that moves one tensor by its attempt's amount
        seen.append(torch.equal(model.state_dict()[name], start))
        model.state_dict()[name].add_(attempt + 1.0)
        return {"steps": attempt}

    cfg = PretrainConfig(stage_floor=0.9, stage_retries=2)
    report = guarded(model, run, lambda: scores[len(seen) - 1], cfg, "test")
    assert seen == [True, True, True]  # every attempt starts from the stage's starting weights
    assert report == {"steps": 1, "guard": [0.2, 0.6, 0.4], "kept_attempt": 2}
    assert torch.equal(model.state_dict()[name], start + 2.0)  # the best attempt's weights

    seen.clear()
    scores[0] = 0.95  # at or above the floor: one attempt
    report = guarded(model, run, lambda: scores[len(seen) - 1], cfg, "test")
    assert len(seen) == 1 and report["guard"] == [0.95] and report["kept_attempt"] == 1
    unguarded = dataclasses.replace(cfg, stage_floor=0.0)
    seen.clear()
    assert guarded(model, run, lambda: 0.0, unguarded, "test") == {"steps": 0} and len(seen) == 1


def test_balanced_accuracy_gives_one_answer_everywhere_a_half():
    hits = [("object", True, True)] * 7 + [("object", False, False)] * 3 + [("color", False, True)] * 5
    assert balanced_accuracy(hits, "object") == 0.5  # "yes" to all: right on every realised one only
    hits += [("object", False, True)] * 3
    assert balanced_accuracy(hits, "object") == 0.75


def test_pretraining_reports_its_guarded_stages_attempts(tiny_params, tmp_path):
    bb = tiny_params.backbone("fastvlm_llama")
    model, processor = load_model_and_processor(bb.source, bb)
    cfg = PretrainConfig(
        tower_steps=0, steps=2, element_steps=2, batch_size=8, check_scenes=16, stage_floor=0.99
    )
    report = pretrain(model, processor, cfg, bb.image_size, family=bb.family, slug="fastvlm_llama")
    for stage in ("pairs", "elements"):  # two steps from random weights: below 0.99, so run twice
        guard = report["stages"][stage]["guard"]
        assert len(guard) == 2 and all(0.0 <= g < 0.99 for g in guard)
        assert report["stages"][stage]["kept_attempt"] == 1 + guard.index(max(guard))
    # what the pretrain@ stage logs: every attempt's measure a metric of its own (a guarded base's
    # report once failed the stage after it was saved: MLflow took "[0.983]" for a number)
    metrics = pretrain_metrics(report)
    for stage in ("pairs", "elements"):
        guard = report["stages"][stage]["guard"]
        assert [metrics[f"{stage}_guard_{i}"] for i in (1, 2)] == guard
        assert metrics[f"{stage}_kept_attempt"] == report["stages"][stage]["kept_attempt"]
    assert metrics["check_all"] == report["check_accuracy"]["all"] and "pairs_steps" in metrics
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("pretrain"))
    client.log_batch(run.info.run_id, metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()])
    assert client.get_run(run.info.run_id).data.metrics == metrics


def test_per_shape_tower_targets_say_which_shape_has_what():
    from tokenfocus.pretrain.curriculum import tower_targets
    from tokenfocus.render import COLORS, SHAPES, SIZES

    pool = Pool.draw(40, 64, seed=5, max_groups=3)
    assert max(len(s.groups) for s in pool.scenes) == 3
    y = tower_targets(pool.scenes, 3)
    assert {k: tuple(v.shape) for k, v in y.items()} == {
        k: (40, len(SHAPES)) for k in ("count", "color", "size")
    }
    for r, scene in enumerate(pool.scenes):
        by_shape = {g.shape: g for g in scene.groups}
        for c, shape in enumerate(SHAPES):
            g = by_shape.get(shape)
            assert int(y["count"][r, c]) == (g.count if g else 0)  # 0: this shape is absent
            assert int(y["color"][r, c]) == (1 + list(COLORS).index(g.color) if g else 0)
            assert int(y["size"][r, c]) == (1 + list(SIZES).index(g.size) if g else 0)
    one = tower_targets(Pool.draw(8, 64, seed=5, max_groups=1).scenes, 1)  # the one-group stage
    assert set(one) == {"shape", "color", "count", "size"} and all(v.shape == (8,) for v in one.values())


def test_per_shape_tower_stage_trains_and_reports_its_heads(tiny_params):
    bb = tiny_params.backbone("fastvlm_llama")
    model, processor = load_model_and_processor(bb.source, bb)
    tower = {k: v.clone() for k, v in model.model.vision_tower.state_dict().items()}
    cfg = PretrainConfig(
        tower_steps=3, tower_groups=3, steps=0, element_steps=0, batch_size=8, check_scenes=8
    )
    report = pretrain(model, processor, cfg, bb.image_size, family=bb.family)
    after = model.model.vision_tower.state_dict()
    assert any(not torch.equal(tower[k], after[k]) for k in tower if "weight" in k)
    acc = report["stages"]["tower"]["head_accuracy"]
    assert set(acc) == {"count", "color", "size"} and all(0.0 <= a <= 1.0 for a in acc.values())


def _pretrained_tower(tiny_params, slug: str, **cfg) -> tuple[dict, dict[str, torch.Tensor]]:
    """A tiny pre-training of ``slug``'s base with ``cfg``: its report and its tower's weights."""
    bb = tiny_params.backbone(slug)
    model, processor = load_model_and_processor(bb.source, bb)
    common = {"tower_steps": 2, "tower_groups": 3, "batch_size": 8, "check_scenes": 8}
    report = pretrain(model, processor, PretrainConfig(**common | cfg), bb.image_size, family=bb.family)
    return report, {k: v.clone() for k, v in part(model, bb.family, "tower").state_dict().items()}


def _heads_in(report: dict, stage: str) -> set[str]:
    return set(report["stages"][stage].get("head_accuracy", {}))


@pytest.mark.parametrize(
    ("slug", "steps", "switch", "shows"),
    [
        # the per-position heads (count, relation) train in stage 1 and report their accuracy there
        (
            "fastvlm_gemma",
            0,
            {"token_count_weight": 0.3, "token_relation_weight": 0.3},
            lambda r: {"token_count", "token_relation"} <= _heads_in(r, "tower"),
        ),
        # kept tower heads train the tower on through the question stages, and report there
        (
            "fastvlm_llama",
            2,
            {"tower_head_weight": 1.0},
            lambda r: bool(_heads_in(r, "pairs") & _heads_in(r, "elements")),
        ),
    ],
    ids=["per-position heads", "kept tower heads"],
)
def test_a_tower_head_switch_trains_the_tower_and_shows_in_the_report(
    tiny_params, slug, steps, switch, shows
):
    off, on = (
        _pretrained_tower(tiny_params, slug, steps=steps, element_steps=steps, tower_lr_scale=0.1, **sw)
        for sw in ({k: 0.0 for k in switch}, switch)
    )
    assert not shows(off[0]) and shows(on[0])
    # same seed and scenes: the towers differ only because the switched-on heads trained one
    assert any(not torch.equal(off[1][k], on[1][k]) for k in off[1] if "weight" in k)


def test_tower_targets_describe_what_was_drawn():
    import copy

    from tokenfocus.pretrain.curriculum import tower_targets
    from tokenfocus.render import SHAPES, Group

    scene = copy.deepcopy(next(s for s in Pool.draw(40, 64, seed=5).scenes if len(s.groups) == 2))
    gone, kept = scene.groups
    scene.missing.add(0)  # an element question's scene: its first group was not drawn ...
    extra = Group(next(s for s in SHAPES if s not in (gone.shape, kept.shape)), "red", "small", 2)
    scene.extras.append(extra)  # ... and an extra group was
    y = tower_targets([scene], 3)["count"][0]
    assert int(y[SHAPES.index(gone.shape)]) == 0
    assert int(y[SHAPES.index(kept.shape)]) == kept.count and int(y[SHAPES.index(extra.shape)]) == 2


def test_token_readout_asks_every_position_about_the_whole_scene():
    from tokenfocus.pretrain.curriculum import tower_targets
    from tokenfocus.pretrain.parts import readout, tower_heads
    from tokenfocus.pretrain.stages import _head_loss

    scenes = Pool.draw(4, 64, seed=2, max_groups=3).scenes
    hidden = torch.randn(4, 8, 2, 2)  # (B, C, H, W): four positions
    tokens, pooled = readout(hidden, "tokens"), readout(hidden, "pooled")
    assert tokens.shape == (4, 4, 8) and pooled.shape == (4, 16)
    assert torch.equal(tokens[1, 3], hidden[1, :, 1, 1])
    heads = tower_heads(8, 3)
    with torch.no_grad():  # heads that answer the truth at position 0 only
        for k, y in tower_targets(scenes, 3).items():
            heads[k].weight.zero_()
            heads[k].bias.copy_(F.one_hot(y[0], heads[k].out_features // y.shape[1]).flatten() * 50.0)
    hits = {}
    _head_loss(heads, tokens, scenes, 3, hits)
    # every position of scene 0 is right, the other scenes (other targets) are not all right
    assert all(0.25 <= v[0] < 1.0 for v in hits.values())


def test_frozen_tower_keeps_its_weights_and_batchnorm_statistics(tiny_params):
    bb = tiny_params.backbone("fastvlm_llama")
    model, processor = load_model_and_processor(bb.source, bb)
    tower = {k: v.clone() for k, v in model.model.vision_tower.state_dict().items()}
    cfg = PretrainConfig(tower_steps=0, steps=3, element_steps=0, batch_size=8, check_scenes=8)
    pretrain(model, processor, cfg, bb.image_size, family=bb.family)
    after = model.model.vision_tower.state_dict()
    assert any("running_mean" in k for k in tower)
    assert all(torch.equal(tower[k], after[k]) for k in tower)
    assert all(p.requires_grad for p in model.parameters())  # unfrozen again for fine-tuning


def test_checks_ask_the_claimed_truth_and_pairs_share_the_false_value():
    pool = Pool.draw(30, 64, seed=4, max_groups=3)
    for scene in pool.scenes:
        for kind in ("shape", "color", "count", "size"):
            state = random.Random(1).getstate()
            r1, r2 = random.Random(), random.Random()
            r1.setstate(state)
            r2.setstate(state)
            yes = question(scene, [kind], r1, mode="check", truth=True)
            no = question(scene, [kind], r2, mode="check", truth=False)
            assert (yes.kind, yes.answer, no.answer) == (kind, "yes", "no")
            assert yes.text.split()[:2] == no.text.split()[:2] and yes.text != no.text


def test_element_questions_use_the_scoring_wording_with_balanced_answers(tiny_params):
    from tokenfocus.backbones import template_parts
    from tokenfocus.pretrain.curriculum import element_question

    bb = tiny_params.backbone("fastvlm_llama")
    _, processor = load_model_and_processor(bb.source, bb)
    parts, prompts = template_parts(processor), tiny_params.prompts
    rng = random.Random(0)
    for i in range(40):
        q = element_question(rng, parts, prompts, 64, want=i % 2 == 0)
        assert q.text.startswith(parts.head + prompts.element_context.split("{")[0])
        assert "Does the image show" in q.text and q.text.endswith(parts.tail)
        assert q.answer == ("yes" if i % 2 == 0 else "no")
        assert q.category in {"object", "counting", "color", "attribute", "spatial"}
        assert q.image.size == (64, 64)


def test_element_questions_bound_to_their_shape_say_yes_only_where_that_shape_is_drawn(tiny_params):
    """`pretrain.bind_shape`, as `synth.bind_shape` labels the benchmark: a true count, colour or
    size names a shape the scene draws. Unbound, some say yes of a group drawn as another shape."""
    from tokenfocus.backbones import template_parts
    from tokenfocus.pretrain.curriculum import element_question

    bb = tiny_params.backbone("fastvlm_llama")
    _, processor = load_model_and_processor(bb.source, bb)
    parts, prompts = template_parts(processor), tiny_params.prompts
    nouns = {w: s for s in SHAPES for w in (s, plural(s, 2))}

    def unseen(bind_shape: bool) -> int:
        rng, n = random.Random(3), 0
        for _ in range(150):
            q = element_question(rng, parts, prompts, 64, want=True, bind_shape=bind_shape)
            if q.category in ("counting", "color", "attribute"):
                shape = nouns[q.text.split("Does the image show ")[1].split(" ?")[0].split()[-1]]
                drawn = {g.shape for i, g in enumerate(q.scene.groups) if i not in q.scene.missing}
                n += shape not in drawn
        return n

    assert unseen(True) == 0
    assert unseen(False) > 0


def test_balanced_element_questions_ask_each_category_half_realised_under_bound_labels(tiny_params):
    """`pretrain.balance_elements`: bound labels make a substituted shape's count, colour and size
    false with its object, so drawn 1:1 over all categories most object questions come out
    realised (the yes the Qwen2 base learned for every object). Balanced, each category is half."""
    from tokenfocus.backbones import template_parts
    from tokenfocus.pretrain.curriculum import element_question

    bb = tiny_params.backbone("fastvlm_llama")
    _, processor = load_model_and_processor(bb.source, bb)
    parts, prompts = template_parts(processor), tiny_params.prompts

    def shares(balance: bool) -> dict[str, float]:
        rng, asked = random.Random(5), {}
        for _ in range(400):
            q = element_question(rng, parts, prompts, 32, bind_shape=True, balance=balance)
            asked.setdefault(q.category, []).append(q.answer == "yes")
        return {c: sum(a) / len(a) for c, a in asked.items()}

    assert shares(False)["object"] > 0.65
    balanced = shares(True)
    assert set(balanced) == {"object", "counting", "color", "attribute", "spatial"}
    assert all(0.38 <= v <= 0.62 for v in balanced.values()), balanced


def test_check_and_element_accuracy_count_true_and_false_claims_equally(tiny_params):
    from tokenfocus.pretrain.checks import element_accuracy

    bb = tiny_params.backbone("idefics3_tiny")
    model, processor = load_model_and_processor(bb.source, bb)
    tok = processor.tokenizer
    for word in ("yes", "no"):  # a model that always says `word`
        wid = tok.convert_tokens_to_ids(word)

        def always(m, i, o, wid=wid):
            out = torch.zeros_like(o)
            out[..., wid] = 1.0
            return out

        hook = model.get_output_embeddings().register_forward_hook(always)
        acc = check_accuracy(model, processor, bb.image_size, ["color", "count"], n=40, seed=1)
        assert acc == {"color": 0.5, "count": 0.5, "all": 0.5}  # half of the claims are true
        el = element_accuracy(model, processor, tiny_params.prompts, bb.image_size, n=40, seed=2)
        assert el["all"] == 0.5
        hook.remove()


def test_adjacent_false_counts_are_one_off_and_any_keeps_every_other_count():
    from tokenfocus.pretrain.curriculum import fresh_scene, true_and_false

    number = {w: c for c, w in COUNTS.items()}
    rng = random.Random(3)
    seen: dict[str, set[int]] = {"any": set(), "adjacent": set()}
    for _ in range(400):
        scene = fresh_scene(rng, 1)
        g = scene.groups[0]
        for mode in seen:
            true, false = true_and_false(scene, "count", g, rng, count_false=mode)
            assert number[true] == g.count and number[false] != g.count
            seen[mode].add(abs(number[false] - g.count))
    assert seen == {"any": {1, 2, 3}, "adjacent": {1}}


def test_token_counts_give_each_position_the_count_of_the_group_drawn_in_its_region():
    from tokenfocus.pretrain.targets import token_counts
    from tokenfocus.render import Group, Scene

    two = Scene([Group("circle", "red", "small", 3), Group("star", "blue", "large", 1)], relation="right of")
    three = Scene(
        [
            Group("circle", "red", "small", 2),
            Group("star", "blue", "large", 1),
            Group("cross", "green", "small", 3),
        ],
        relation="above",
        missing={1},
    )
    y = token_counts([two, three], 4, 4).view(2, 4, 4)
    # right of: the circles' region is the right half; every row alike
    assert y[0].tolist() == [[1, 1, 3, 3]] * 4
    # above: thirds from the top; the stars were not drawn (0); the crosses fill the bottom third
    assert [row[0] for row in y[1].tolist()] == [2, 0, 0, 3] and all(len(set(r)) == 1 for r in y[1].tolist())


def test_count_weights_redraw_the_counts_and_leave_the_default_stream_alone():
    import collections

    plain = Pool.draw(30, 64, seed=4).scenes
    assert [[g.count for g in s.groups] for s in Pool.draw(30, 64, seed=4, count_weights=()).scenes] == [
        [g.count for g in s.groups] for s in plain
    ]
    counts = collections.Counter(
        g.count
        for s in Pool.draw(300, 32, seed=4, count_weights=(1.0, 1.0, 1.0, 1.0)).scenes
        for g in s.groups
    )
    assert counts[4] > 0.15 * sum(counts.values())  # the renderer's odds give four a tenth at most
    assert all(
        g.count <= 3
        for s in Pool.draw(300, 32, seed=4, count_weights=(1, 1, 1, 1)).scenes
        if len(s.groups) == 3
        for g in s.groups
    )


def test_token_relations_mark_where_each_drawn_group_stands_against_the_others():
    from tokenfocus.pretrain.targets import DIRECTIONS, token_relations
    from tokenfocus.render import Group, Scene

    left, right, above, below = (list(map(float, (d == k for k in DIRECTIONS))) for d in DIRECTIONS)
    two = Scene([Group("circle", "red", "small", 3), Group("star", "blue", "large", 1)], relation="right of")
    y = token_relations([two], 2, 4).view(2, 4, 4)
    # right of: the circles hold the right half, so their tokens say "right of", the star's "left of"
    assert y.tolist() == [[left, left, right, right]] * 2
    three = Scene(
        [
            Group("circle", "red", "small", 2),
            Group("star", "blue", "large", 1),
            Group("cross", "green", "small", 3),
        ],
        relation="below",
    )
    rows = token_relations([three], 3, 1).view(3, 4).tolist()
    # below: the star on top, then the circles, then the crosses; the middle group is both
    assert rows == [above, [0.0, 0.0, 1.0, 1.0], below]
    three.missing = {1}  # no star drawn: its region says nothing, the circles are only above
    rows = token_relations([three], 3, 1).view(3, 4).tolist()
    assert rows == [[0.0] * 4, above, below]
    one = Scene([Group("circle", "red", "small", 2)])
    assert not token_relations([one], 2, 2).any()


@pytest.mark.parametrize("key", ["styles", "tower_styles"])
def test_a_bases_own_styles_are_checked_before_anything_trains(tiny_params, tmp_path, key):
    """``backbones.<slug>.pretrain.styles`` replaces styles.pretrain for that base, and
    ``tower_styles`` those of its stage 1; a held-out style in either is refused, naming the key,
    before a step runs and before any base is written."""
    slug = "fastvlm_llama"
    bb = tiny_params.backbone(slug)
    p = dataclasses.replace(
        tiny_params,
        backbones={slug: dataclasses.replace(bb, pretrain={key: ["classic", "studio"]})},
    )
    assert getattr(p.pretrain_for(slug), key) == ["classic", "studio"]
    with pytest.raises(
        StyleError, match=rf"backbones.{slug}.pretrain.{key}: 'studio' belongs to the held-out"
    ):
        pretrain_base(slug, p, out=tmp_path / "base")
    assert not (tmp_path / "base").exists()


def test_tower_styles_draw_the_tower_stages_scenes_and_no_others(tiny_params):
    """``pretrain.tower_styles`` (docs/styles.md): stage 1 draws in them as it would in ``styles``;
    the language-model stages keep ``styles``."""
    bb = tiny_params.backbone("fastvlm_llama")
    patchwork = (tiny_params.styles.book().catalog["patchwork"],)

    def weights(cfg: PretrainConfig, **styles) -> dict[str, torch.Tensor]:
        model, processor = load_model_and_processor(bb.source, bb)
        pretrain(model, processor, cfg, bb.image_size, family=bb.family, slug="fastvlm_llama", **styles)
        return model.state_dict()

    def equal(a: dict, b: dict) -> bool:
        return all(torch.equal(a[k], b[k]) for k in a)

    tower = PretrainConfig(tower_steps=2, steps=0, element_steps=0, batch_size=8, check_scenes=8)
    drawn = weights(tower, tower_styles=patchwork)
    assert equal(drawn, weights(tower, styles=patchwork))
    assert not equal(drawn, weights(tower))  # the classic drawing trains other weights
    pairs = PretrainConfig(tower_steps=0, steps=2, element_steps=0, batch_size=8, check_scenes=8)
    assert equal(weights(pairs, tower_styles=patchwork), weights(pairs))
