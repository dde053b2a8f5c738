import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tokenfocus.predictions import split_records
from tokenfocus.train import Trainer
from tokenfocus.typed import ConfigError


def _params(tiny_params, slug, **train):
    p = dataclasses.replace(tiny_params, train=dataclasses.replace(tiny_params.train, **train))
    return p


@pytest.mark.parametrize("slug", ["qwen2_vl_tiny", "qwen2_5_vl_tiny"])  # full, and LoRA
def test_resume_after_interruption_reaches_the_same_weights(tiny_params, tmp_path, slug):
    p = _params(tiny_params, slug, steps=6, checkpoint_every=2, eval_every=3)
    full = Trainer(slug, p, out=tmp_path / "full")
    full.run()
    Trainer(slug, p, out=tmp_path / "cut").run(stop_after=3)  # "killed" after step 3
    state = (tmp_path / "cut" / "checkpoint" / "state.json").read_text()
    assert '"step": 2' in state  # the last checkpoint before the kill
    resumed = Trainer(slug, p, out=tmp_path / "cut")
    summary = resumed.run()
    assert summary["steps"] == 6
    a = load_file(tmp_path / "full" / "checkpoint" / "weights.safetensors")
    b = load_file(tmp_path / "cut" / "checkpoint" / "weights.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("slug", ["gemma3_tiny", "qwen2_5_vl_tiny"])
def test_lora_trains_only_the_adapter_and_saves_only_the_adapter(tiny_params, tmp_path, slug):
    p = _params(tiny_params, slug, steps=2, eval_every=2, checkpoint_every=2)
    tr = Trainer(slug, p, out=tmp_path / "lora")
    tr._load_data()
    tr.setup()
    before = {n: q.detach().clone() for n, q in tr.model.named_parameters()}
    trainable = {n for n, q in tr.model.named_parameters() if q.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    # only the language model's projections: the vision tower (`vision_tower`, or Qwen's `visual`,
    # whose MLP also has gate/up/down_proj) stays frozen
    assert all(".language_model." in n for n in trainable)
    tr.run()
    after = dict(tr.model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert changed and changed <= trainable
    saved = tmp_path / "lora" / "model"
    assert (saved / "adapter_config.json").exists()
    assert not list(saved.glob("model*.safetensors"))
    keys = load_file(saved / "adapter_model.safetensors").keys()
    assert keys and all("lora_" in k for k in keys)
    targets = json.loads((saved / "adapter_config.json").read_text())["target_modules"]
    assert targets == sorted(targets)  # not in a process's hash order: the same bytes on a rerun


@pytest.mark.parametrize(
    "slug,loss",
    [
        ("llava_siglip_tiny", "focus"),
        ("llava_siglip_tiny", "lm"),
        ("qwen2_vl_tiny", "focus"),
        ("qwen2_5_vl_tiny", "focus"),
        ("llava_llama2", "lm"),  # a Metaspace tokenizer: the answer follows " [/INST]"
        ("gemma3_spm", "focus"),
    ],
)
def test_both_losses_run_and_save_a_scorable_model(tiny_params, tmp_path, slug, loss):
    from tokenfocus.scoring import Scorer

    p = _params(tiny_params, slug, steps=2, eval_every=2, checkpoint_every=2, loss=loss)
    summary = Trainer(slug, p, out=tmp_path / loss).run()
    assert summary["loss"] == loss and summary["steps"] == 2
    scorer = Scorer.load(tmp_path / loss / "model")
    assert scorer.slug == slug
    # it scores, and not as the base does: the saved model is the trained one
    from tokenfocus.evalmuse import load_records
    from tokenfocus.images import load_images

    data = Path(p.validate.data)
    recs = load_records(data / "train_list.json")[:4]
    images = load_images(data / "images", [r.img_path for r in recs])
    args = (
        [images[r.img_path] for r in recs],
        [r.prompt for r in recs],
        [[e.key for e in r.elements] for r in recs],
    )
    trained = scorer(*args)
    base = Scorer.load(p.backbone(slug).source)(*args)
    assert all(1.0 <= r.score <= 5.0 for r in trained)
    moved = [abs(a.score - b.score) for a, b in zip(trained, base, strict=True)]
    moved += [
        abs(a.elements[k] - b.elements[k]) for a, b in zip(trained, base, strict=True) for k in a.elements
    ]
    assert max(moved) > 1e-4, "the saved model scores exactly as the base: training was not saved"


def test_checkpoint_of_another_config_is_not_resumed(tiny_params, tmp_path):
    p = _params(tiny_params, "idefics3_tiny", steps=2, checkpoint_every=2, eval_every=2)
    Trainer("idefics3_tiny", p, out=tmp_path / "a").run()
    same = Trainer("idefics3_tiny", p, out=tmp_path / "a")
    same._load_data()
    same.setup()
    assert same._resume().step == 2
    other = Trainer(
        "idefics3_tiny",
        _params(tiny_params, "idefics3_tiny", steps=2, checkpoint_every=2, eval_every=2, lr=0.0001),
        out=tmp_path / "a",
    )
    other._load_data()
    other.setup()
    assert other._resume().step == 0


def test_a_fresh_start_does_not_count_an_earlier_runs_cpu_time(tiny_params, tmp_path):
    """Regression: a run that started afresh (another config) added its CPU time to the earlier
    run's, so the loss study and the pipeline reported e.g. 22 CPU-min for a 7-minute run."""
    p = _params(tiny_params, "idefics3_tiny", steps=2, checkpoint_every=2, eval_every=2)
    first = Trainer("idefics3_tiny", p, out=tmp_path / "a").run()["cpu_minutes"]
    timing = tmp_path / "a.timing.json"
    timing.write_text(json.dumps({"cpu_seconds": 6000.0}))  # as if the earlier run had taken 100 min
    other = _params(tiny_params, "idefics3_tiny", steps=2, checkpoint_every=2, eval_every=2, lr=0.0001)
    again = Trainer("idefics3_tiny", other, out=tmp_path / "a").run()["cpu_minutes"]
    assert 0 < again < 10 * max(first, 0.05) < 100


def test_checkpoint_of_another_base_at_the_same_path_is_not_resumed(tiny_params, tmp_path):
    """Regression: after a base was re-pre-trained (here: 64 -> 128 wide), ``dvc repro`` resumed
    the old base's checkpoint into the new model and crashed on a size mismatch."""
    import shutil

    slug = "idefics3_tiny"
    base = tmp_path / "base"
    shutil.copytree(tiny_params.backbone(slug).source, base)
    p = _params(tiny_params, slug, steps=2, checkpoint_every=2, eval_every=2)
    Trainer(slug, p, out=tmp_path / "a", source=base).run()

    def resumed_step() -> int:
        tr = Trainer(slug, p, out=tmp_path / "a", source=base)
        tr._load_data()
        tr.setup()
        return tr._resume().step

    assert resumed_step() == 2  # the same base: resumed
    meta = json.loads((base / "tokenfocus.json").read_text())
    (base / "tokenfocus.json").write_text(json.dumps({**meta, "pretrain": {"cpu_minutes": 1.0}}))
    assert resumed_step() == 0  # the same path, another base: afresh


def test_checkpoint_of_other_data_is_not_resumed(tiny_params, tmp_path):
    """Regression: ``dvc repro`` runs a train stage again when its data changed (here: a label, or
    a redrawn copy's image), and the finished run's checkpoint of the old data was resumed at its
    last step and saved as the new model, untrained on the new data."""
    import shutil

    slug = "idefics3_tiny"
    data = tmp_path / "data"
    shutil.copytree(tiny_params.validate.data, data)
    p = _params(tiny_params, slug, steps=2, checkpoint_every=2, eval_every=2)
    p = dataclasses.replace(p, validate=dataclasses.replace(p.validate, data=str(data)))
    Trainer(slug, p, out=tmp_path / "a").run()

    def resumed_step() -> int:
        tr = Trainer(slug, p, out=tmp_path / "a")
        tr._load_data()
        tr.setup()
        return tr._resume().step

    assert resumed_step() == 2  # the same data: resumed
    for image in data.rglob("*.png"):  # the same bytes written at another time (another clone)
        os.utime(image, ns=(1, 1))
    assert resumed_step() == 2  # the signature is saved in a versioned output: no times in it
    rows = json.loads((data / "train_list.json").read_text())
    trained = {r.img_path for r in split_records(p, "train")}
    row = next(r for r in rows if r["img_path"] in trained)
    row["total_score"] = [5 if min(row["total_score"]) < 5 else 1] * len(row["total_score"])
    original = (data / "train_list.json").read_text()
    (data / "train_list.json").write_text(json.dumps(rows))
    assert resumed_step() == 0  # a train pair's label changed: afresh
    (data / "train_list.json").write_text(original)
    assert resumed_step() == 2
    copy = sorted((data / "styled").iterdir())[0] / "images" / row["img_path"]
    copy.write_bytes(copy.read_bytes() + b"\0")  # a redrawn copy fine-tuning may swap in
    assert resumed_step() == 0


@pytest.mark.parametrize(("slug", "tuning"), [("fastvlm_llama", "full"), ("fastvlm_gemma", "lora")])
def test_scoring_the_saved_model_reproduces_the_trainers_validation_metrics(
    tiny_params, tmp_path, slug, tuning
):
    """The saved model (weights, or adapter on its base) scores val as the trainer measured it.

    Regression: under LoRA the frozen convolutional tower's BatchNorm kept updating its running
    statistics in training mode; the adapter does not save them, so the saved model scored
    differently (measured 0.191 logged vs 0.163 re-scored).
    """
    from tokenfocus.images import load_images
    from tokenfocus.scoring import Scorer
    from tokenfocus.train.trainer import evaluate_split

    assert tiny_params.backbone(slug).tuning == tuning
    p = _params(tiny_params, slug, steps=4, eval_every=4, checkpoint_every=4, lr=0.01, val_elements=True)
    tr = Trainer(slug, p, out=tmp_path / slug)
    tr.run()
    state = json.loads((tmp_path / slug / "checkpoint" / "state.json").read_text())
    logged = next(h for h in state["history"] if h["step"] == state["best_step"])
    scorer = Scorer.load(tmp_path / slug / "model", batch_size=p.score.batch_size)
    images = load_images(f"{p.validate.data}/images", [r.img_path for r in tr.val_records])
    again = evaluate_split(scorer, tr.val_records, images)
    # a LoRA adapter is merged into its base for scoring: float rounding in the scores. The rank
    # statistics keep 1e-4; PLCC comes after a 4-parameter logistic fit, which on a model this weak
    # (PLCC ~0.18) magnifies it: ~1e-6 on the Intel host, 3.8e-4 measured on an AMD EPYC one. 2e-3
    # still fails the regression below (0.028). Element accuracy is a threshold at 0.5: the rounding
    # may carry one element across it (206 against 207 of 240 on a Sapphire Rapids class host).
    one_element = 1 / sum(len(r.elements) for r in tr.val_records)
    for key, tol in (("srcc", 1e-4), ("plcc", 2e-3), ("element_acc", one_element + 1e-9)):
        assert again[key] == pytest.approx(logged[key], abs=tol), key
    base = Scorer.load(p.backbone(slug).source, batch_size=p.score.batch_size)
    assert evaluate_split(base, tr.val_records, images) != again  # training changed the model


def test_training_twice_gives_the_same_metrics_and_weights(tiny_params, tmp_path):
    """Same commit, same params, same numbers: seeded batches, dropout and initialisation."""
    p = _params(tiny_params, "fastvlm_llama", steps=4, eval_every=2, checkpoint_every=4)
    runs = [Trainer("fastvlm_llama", p, out=tmp_path / f"run{k}").run() for k in range(2)]
    assert all(r.pop("cpu_minutes") > 0 for r in runs)
    assert runs[0] == runs[1]
    files = ("metrics.json", "checkpoint/state.json")  # a DVC output: the same bytes on a rerun
    assert all((tmp_path / "run0" / f).read_bytes() == (tmp_path / "run1" / f).read_bytes() for f in files)
    hist = [
        json.loads((tmp_path / f"run{k}" / "checkpoint" / "state.json").read_text())["history"]
        for k in range(2)
    ]
    assert hist[0] == hist[1] and len(hist[0]) == 2
    a, b = (load_file(tmp_path / f"run{k}" / "model" / "model.safetensors") for k in range(2))
    assert all(torch.equal(a[k], b[k]) for k in a)


def _with_lora(params, slug, **lora):
    bb = params.backbone(slug)
    bb = dataclasses.replace(bb, lora=dataclasses.replace(bb.lora, **lora))
    return dataclasses.replace(params, backbones={**params.backbones, slug: bb})


@pytest.mark.parametrize("whole", [[], ["multi_modal_projector"]], ids=["adapter", "projector"])
def test_a_lora_model_is_merged_for_scoring_and_scores_as_the_adapter_does(tiny_params, tmp_path, whole):
    from tokenfocus.backbones import load_model_and_processor
    from tokenfocus.evalmuse import load_records
    from tokenfocus.images import load_images
    from tokenfocus.scoring import Scorer

    slug = "gemma3_tiny"
    p = _with_lora(tiny_params, slug, modules_to_save=whole)
    p = _params(p, slug, steps=2, eval_every=2, checkpoint_every=2, lr=0.01)
    Trainer(slug, p, out=tmp_path / "t").run()
    merged = Scorer.load(tmp_path / "t" / "model")
    assert not any("lora_" in n for n, _ in merged.model.named_parameters())  # one weight per layer
    # a module trained whole travels in the adapter, and the merged model carries its trained copy
    saved = load_file(tmp_path / "t" / "model" / "adapter_model.safetensors").keys()
    assert any("multi_modal_projector" in k for k in saved) == bool(whole)
    base_model, _ = load_model_and_processor(p.backbone(slug).source, p.backbone(slug))
    base_w, merged_w = dict(base_model.named_parameters()), dict(merged.model.named_parameters())
    projector = [n for n in base_w if ".multi_modal_projector." in n]
    assert projector
    moved = [n for n in projector if not torch.equal(base_w[n], merged_w[n])]
    assert bool(moved) == bool(whole)
    model, processor = load_model_and_processor(tmp_path / "t" / "model", p.backbone(slug), merge_lora=False)
    assert any("lora_" in n for n, _ in model.named_parameters())
    adapter = Scorer(model, processor, merged.prompts, slug=slug)
    recs = load_records(f"{p.validate.data}/train_list.json")[:6]
    ims = load_images(f"{p.validate.data}/images", [r.img_path for r in recs])
    args = (
        [ims[r.img_path] for r in recs],
        [r.prompt for r in recs],
        [[e.key for e in r.elements] for r in recs],
    )
    a, b = merged(*args), adapter(*args)
    base = Scorer.load(p.backbone(slug).source)(*args)
    assert max(abs(x.score - y.score) for x, y in zip(a, base, strict=True)) > 1e-3  # the adapter acts
    for x, y in zip(a, b, strict=True):
        assert x.score == pytest.approx(y.score, abs=1e-5)
        assert all(x.elements[k] == pytest.approx(y.elements[k], abs=1e-5) for k in x.elements)


def test_modules_trained_whole_learn_at_their_own_rate(tiny_params, tmp_path):
    """lora.modules_lr: the projector trained whole at 1e-8 beside an adapter at 1e-2 barely moves."""
    slug = "gemma3_tiny"
    p = _with_lora(tiny_params, slug, modules_to_save=["multi_modal_projector"], modules_lr=1e-8)
    p = _params(p, slug, steps=2, eval_every=2, checkpoint_every=2, lr=0.01, weight_decay=0.0)
    t = Trainer(slug, p, out=tmp_path / "t")
    t.setup()
    assert [g["initial_lr"] for g in t.opt.param_groups] == [0.01, 1e-8]
    names = {id(q): n for n, q in t.model.named_parameters()}
    assert all(".modules_to_save." in names[id(q)] for q in t.opt.param_groups[1]["params"])
    assert not any(".modules_to_save." in names[id(q)] for q in t.opt.param_groups[0]["params"])
    before = {n: q.detach().clone() for n, q in t.model.named_parameters() if q.requires_grad}
    t.run()
    after = dict(t.model.named_parameters())
    moved = {n: (after[n] - w).abs().max().item() for n, w in before.items()}
    projector = [m for n, m in moved.items() if ".modules_to_save." in n]
    adapter = [m for n, m in moved.items() if "lora_" in n]
    assert projector and adapter
    assert max(projector) < 1e-6 < 1e-3 < max(adapter)  # Adam steps are about the rate in size
    with pytest.raises(ConfigError, match=r"lora.modules_lr must be >= 0"):
        dataclasses.replace(p.backbone(slug).lora, modules_lr=-1e-4)
    with pytest.raises(ConfigError, match=r"lora.modules_to_save names no module"):
        dataclasses.replace(p.backbone(slug).lora, modules_to_save=[])


def test_a_module_to_save_that_the_model_lacks_is_named(tiny_params):
    from tokenfocus.backbones import load_model_and_processor
    from tokenfocus.lora import apply_lora

    slug = "gemma3_tiny"
    p = _with_lora(tiny_params, slug, modules_to_save=["multi_modal_projector", "projektor"])
    model, _ = load_model_and_processor(p.backbone(slug).source, p.backbone(slug))
    with pytest.raises(ValueError, match=r"gemma3_tiny: lora.modules_to_save \['projektor'\]"):
        apply_lora(model, slug, p)


def test_bf16_full_fine_tuning_keeps_float32_master_weights(tiny_params, tmp_path):
    """An update far under bf16's resolution (lr 1e-6: about 1/1000 of an ulp) survives in the fp32
    master weights; bf16 weights would round every one of them away."""
    import dataclasses

    slug = "idefics3_tiny"
    p = _params(tiny_params, slug, steps=2, eval_every=2, checkpoint_every=2, lr=1e-6, warmup_frac=0.0)
    p.backbones = {**p.backbones, slug: dataclasses.replace(p.backbone(slug), dtype="bfloat16")}
    tr = Trainer(slug, p, out=tmp_path / "bf16")
    tr._load_data()
    tr.setup()
    assert tr.model.dtype == torch.float32
    with tr.amp():  # the forward runs in bf16
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    before = {n: q.detach().clone() for n, q in tr.model.named_parameters()}
    tr.run()
    after = {n: q.detach() for n, q in tr.model.named_parameters()}
    moved = sum(int((before[n] != after[n]).sum()) for n in before)
    seen_in_bf16 = sum(int((before[n].bfloat16() != after[n].bfloat16()).sum()) for n in before)
    assert moved > 0.5 * sum(q.numel() for q in before.values())
    assert seen_in_bf16 < 0.1 * moved  # bf16 weights would have lost these updates


def test_full_fine_tuning_in_float16_is_refused_with_the_reason(tiny_params, tmp_path):
    import dataclasses

    from tokenfocus.backbones import BackboneError

    slug = "idefics3_tiny"
    p = _params(tiny_params, slug, steps=1)
    p.backbones = {**p.backbones, slug: dataclasses.replace(p.backbone(slug), dtype="float16")}
    tr = Trainer(slug, p, out=tmp_path / "fp16")
    tr._load_data()
    with pytest.raises(BackboneError, match="float16 is not supported .*loss scaling"):
        tr.setup()


@pytest.mark.parametrize(
    ("slug", "loss"),
    [
        *[(s, "focus") for s in ("idefics3_tiny", "qwen2_vl_tiny", "internvl_tiny", "gemma3_spm")],
        # the lm baseline reads every answer token (answer + end of turn) after the shared prefix
        *[(s, "lm") for s in ("qwen2_vl_bpe", "llava_llama2")],
    ],
)
def test_the_shared_image_prefix_gives_the_plain_paths_loss_and_gradients(tiny_params, tmp_path, slug, loss):
    """A pair's overall and element questions run from one image prefill in training: the loss and
    every trainable gradient equal the plain path's (the image encoded once per row), and the
    tower sees each image once instead of twice."""
    p = _params(tiny_params, slug, mse_warmup_frac=0.0, loss=loss)  # every loss term in play
    tr = Trainer(slug, p, out=tmp_path / "t")
    tr._load_data()
    tr.setup()
    tr.model.eval()  # no dropout: both paths see the same network
    pixels = []
    tr.model.register_forward_pre_hook(
        lambda _m, _a, kw: pixels.append(kw["pixel_values"].numel()) if "pixel_values" in kw else None,
        with_kwargs=True,
    )
    recs, keys, _ = tr._batch(0, 0)
    runs = {}
    for share in (False, True):
        tr.share_prefix = share
        pixels.clear()
        tr.model.zero_grad(set_to_none=True)
        out = tr._loss(recs, keys, p.train.steps)
        out["loss"].backward()
        grads = {n: q.grad.clone() for n, q in tr.model.named_parameters() if q.grad is not None}
        runs[share] = (out["loss"].item(), grads, sum(pixels))
        assert tr.share_prefix == share  # the shared path ran: no fallback
    (plain, g_plain, px_plain), (shared, g_shared, px_shared) = runs[False], runs[True]
    assert px_shared * 2 == px_plain  # one image pass per pair, not two
    assert shared == pytest.approx(plain, rel=1e-5)
    assert g_plain.keys() == g_shared.keys() and g_plain
    norm = torch.sqrt(sum((g**2).sum() for g in g_plain.values())).item()
    assert norm > 1e-3  # the gradients carry signal, so their equality means something
    worst = max((g_plain[n] - g_shared[n]).abs().max().item() for n in g_plain)
    assert worst < 1e-4 * norm


def test_gradient_checkpointing_encodes_the_image_per_row(tiny_params, tmp_path):
    """A checkpointed layer drops the cache it is given in training (transformers), so questions
    extended from a shared prefix could run without their image: the trainer does not share there,
    and the checkpointed per-row loss is the plain one."""
    slug = "qwen2_vl_tiny"
    p = _params(tiny_params, slug)
    p.backbones = {**p.backbones, slug: dataclasses.replace(p.backbone(slug), gradient_checkpointing=True)}
    tr = Trainer(slug, p, out=tmp_path / "t")
    tr._load_data()
    tr.setup()
    assert not tr.share_prefix
    tr.model.train()  # checkpointing acts in training only
    recs, keys, _ = tr._batch(0, 0)
    per_row = tr._loss(recs, keys, p.train.steps)["loss"].item()
    tr.model.gradient_checkpointing_disable()  # the per-row loss is the right one
    assert tr._loss(recs, keys, p.train.steps)["loss"].item() == pytest.approx(per_row, rel=1e-5)


def test_style_augmentation_swaps_in_a_redrawn_scene_by_seed_and_step(
    tiny_params, tmp_path, data_copy, caplog
):
    """With augment_styles odds a training image is one of its scene's redrawings (styled/<k>/),
    chosen from (seed, step, place) alone; data without redrawings (EvalMuse) trains on its own
    images, with a warning."""
    import shutil

    from PIL import Image

    slug = "idefics3_tiny"
    p = _params(tiny_params, slug, augment_styles=0.5)
    p.validate = dataclasses.replace(p.validate, data=str(data_copy))
    tr = Trainer(slug, p, out=tmp_path / "t")
    tr._load_data()
    assert len(tr.styled) == 2
    recs, _, _ = tr._batch(0, 0)
    files = {
        "benchmark": lambda r: data_copy / "images" / r.img_path,
        **{
            f"styled{k}": (lambda r, k=k: data_copy / "styled" / str(k) / "images" / r.img_path)
            for k in (0, 1)
        },
    }
    seen = []
    for step in range(6):
        for i, r in enumerate(recs):
            got = np.asarray(tr._image(r, step, 0, i))
            assert (got == np.asarray(tr._image(r, step, 0, i))).all()  # a function of (step, place)
            seen += [
                name
                for name, f in files.items()
                if (np.asarray(Image.open(f(r)).convert("RGB")) == got).all()
            ]
    assert len(seen) == 6 * len(recs)  # each image is exactly one of the three drawings
    assert {"benchmark", "styled0", "styled1"} == set(seen)
    assert 0.3 < seen.count("benchmark") / len(seen) < 0.7
    shutil.rmtree(data_copy / "styled")
    plain = Trainer(slug, p, out=tmp_path / "u")
    with caplog.at_level("WARNING", logger="tokenfocus.train"):
        plain._load_data()
    assert "no style augmentation" in caplog.text
    for i, r in enumerate(recs):
        got = np.asarray(plain._image(r, 0, 0, i))
        assert (got == np.asarray(Image.open(files["benchmark"](r)).convert("RGB"))).all()


def test_counterfactual_elements_contradict_a_present_element_in_key_and_prompt(tiny_params, tmp_path):
    """With train.counterfactual, a present counting or spatial element is asked with its count one
    off or its relation turned round, in its key and in the prompt the question quotes, with the
    target 1 - label; the keys drawn stay those of a run without it."""
    from tokenfocus.evalmuse import parse_element_key
    from tokenfocus.prompts import OPPOSITES

    slug = "idefics3_tiny"
    plain = Trainer(slug, _params(tiny_params, slug), out=tmp_path / "a")
    swapping = Trainer(slug, _params(tiny_params, slug, counterfactual=1.0), out=tmp_path / "b")
    plain._load_data()
    swapping._load_data()
    assert set(swapping.count_words) <= {"two", "three", "four"}  # SynthMuse claims up to four
    kinds = set()
    for step in range(8):
        recs, keys, none = plain._batch(step, 0)
        recs2, keys2, swaps = swapping._batch(step, 0)
        assert [r.img_path for r in recs] == [r.img_path for r in recs2] and keys == keys2
        assert none == [None] * len(recs)
        for r, k, sw in zip(recs, keys, swaps, strict=True):
            el = parse_element_key(k)
            if sw is None:
                continue
            prompt, key, label = sw
            assert r.element_score[k] >= 0.5 and label == pytest.approx(1 - r.element_score[k])
            new = parse_element_key(key)
            assert new.category == el.category in ("counting", "spatial")
            gone = [w for w in el.text.split() if w not in new.text.split()]
            came = [w for w in new.text.split() if w not in el.text.split()]
            # one word (or relation) differs, and the prompt differs there alone
            assert prompt != r.prompt and len(prompt.split()) == len(r.prompt.split())
            diff = [(a, b) for a, b in zip(r.prompt.split(), prompt.split(), strict=True) if a != b]
            if el.category == "counting":
                assert diff == list(zip(gone, came, strict=True)) and came[0] in swapping.count_words
            else:
                rel = next(o for o in sorted(OPPOSITES, key=len, reverse=True) if o in el.text)
                assert new.text == el.text.replace(rel, OPPOSITES[rel])
                assert prompt == r.prompt.replace(rel, OPPOSITES[rel], 1)
            kinds.add(el.category)
    assert kinds == {"counting", "spatial"}
    # the swaps reach the loss: the same rows without them give another element loss
    swapping.setup()
    recs, keys, swaps = swapping._batch(0, 0)
    assert any(swaps)
    with_swaps = swapping._loss(recs, keys, 0, swaps=swaps)["element"].item()
    assert swapping._loss(recs, keys, 0)["element"].item() != pytest.approx(with_swaps)


def test_short_keys_rewrite_a_share_of_pairs_in_evalmuses_form_with_the_long_keys_labels(
    tiny_params, tmp_path
):
    """With train.short_keys, that share of a batch's pairs is keyed in EvalMuse's short form, both
    the element list and the asked key, with the long key's label; at 0 nothing changes, and the
    short form reaches the loss, asked with its object named as the scorer asks it."""
    from tokenfocus.batches import short_keyed
    from tokenfocus.synth import shorten

    slug = "idefics3_tiny"
    tr = Trainer(slug, _params(tiny_params, slug, short_keys=0.5), out=tmp_path / "t")
    tr._load_data()
    recs = tr.train_records[:200]
    keys = [r.elements[i % len(r.elements)].key for i, r in enumerate(recs)]
    rngs = [np.random.default_rng([0, i]) for i in range(len(recs))]
    names, asked = short_keyed(recs, keys, 0.0, rngs)
    assert names == [[e.key for e in r.elements] for r in recs] and asked == keys
    names, asked = short_keyed(recs, keys, 0.5, [np.random.default_rng([0, i]) for i in range(len(recs))])
    short = 0
    for r, k, n, a in zip(recs, keys, names, asked, strict=True):
        full = [e.key for e in r.elements]
        if n != full:
            short += 1
            assert n == shorten(full, r.prompt) and a == n[full.index(k)]
            if a != k:  # a span of the prompt, with the long key's category (one two groups share stays long)
                words, cat = a.split(" (")
                assert words.lower() in r.prompt.lower() and k.endswith(f" ({cat}")
        else:
            assert a == k
    eligible = sum(shorten(f, r.prompt) != f for r in recs for f in [[e.key for e in r.elements]])
    # short_keys_overall false: the overall question's list stays long, the asked keys as above
    names2, asked2 = short_keyed(
        recs, keys, 0.5, [np.random.default_rng([0, i]) for i in range(len(recs))], False
    )
    assert asked2 == asked and names2 == [[e.key for e in r.elements] for r in recs]
    assert 0.3 < short / eligible < 0.7
    # the rewriting reaches the loss, and the labels are the long keys'
    tr.setup()
    batch_recs, batch_keys, _ = tr._batch(0, 0)
    long_run = Trainer(slug, _params(tiny_params, slug), out=tmp_path / "u")
    long_run.setup()
    long_run._load_data()
    short_loss, long_loss = tr._loss(batch_recs, batch_keys, 0), long_run._loss(batch_recs, batch_keys, 0)
    for part in ("loss", "element"):  # the element question's own loss too: its key is short
        assert short_loss[part].item() != pytest.approx(long_loss[part].item())
    # the short keys asked with their objects named (score.grounding.name_categories), as the
    # scorer asks them: without, the questions (and so the loss) are others
    tr.scorer.grounding = dataclasses.replace(tr.scorer.grounding, name_categories=[])
    bare = tr._loss(batch_recs, batch_keys, 0)
    for part in ("loss", "element"):
        assert bare[part].item() != pytest.approx(short_loss[part].item())


@pytest.mark.parametrize("slug", ["fastvlm_llama", "qwen2_vl_tiny", "idefics3_tiny", "internvl_tiny"])
def test_freeze_tower_trains_all_but_the_vision_tower(tiny_params, tmp_path, slug):
    """backbones.<slug>.freeze_tower in full fine-tuning: the tower (FastVLM's and LLaVA's
    ``vision_tower``, Qwen2-VL's ``visual``, Idefics3's ``vision_model``) keeps the base's weights;
    the projector (Qwen2-VL's ``merger`` inside ``visual`` too) and the language model train."""
    bbs = dict(tiny_params.backbones)
    bbs[slug] = dataclasses.replace(bbs[slug], tuning="full", freeze_tower=True)
    p = dataclasses.replace(
        _params(tiny_params, slug, steps=2, eval_every=2, checkpoint_every=2), backbones=bbs
    )
    tr = Trainer(slug, p, out=tmp_path / "frozen")
    tr._load_data()
    tr.setup()
    before = {n: q.detach().clone() for n, q in tr.model.named_parameters()}
    tower = {n for n, q in tr.model.named_parameters() if not q.requires_grad}
    assert tower and all(
        any(f".{t}." in n for t in ("vision_tower", "visual", "vision_model")) for n in tower
    )
    tr.run()
    changed = {n for n, q in tr.model.named_parameters() if not torch.equal(before[n], q.detach())}
    assert changed and not changed & tower
    assert any(t in n for n in changed for t in ("projector", "connector", "merger", "mlp1"))
    assert any("language_model" in n or "text_model" in n for n in changed)


def test_more_element_questions_per_pair_average_each_rounds_loss(tiny_params, tmp_path):
    """train.elements_per_pair: the first round is the batch's own keys; each further round draws
    a key of the pair's per row from (seed, step, place, round), so a shard of the batch draws the
    same rows' keys; the element loss is the mean of the rounds' element losses, the overall loss
    that of one round."""
    slug = "qwen2_vl_tiny"
    p = _params(tiny_params, slug, mse_warmup_frac=0.0, elements_per_pair=3, counterfactual=0.5)
    tr = Trainer(slug, p, out=tmp_path / "t")
    tr._load_data()
    tr.setup()
    tr.model.eval()  # no dropout: the rounds are compared row for row
    recs, keys, swaps = tr._batch(0, 0)
    pos = list(range(len(recs)))
    rounds = tr._rounds(recs, keys, swaps, 0, 0, pos)
    assert len(rounds) == 3 and rounds[0] == (keys, swaps)
    for asked, _ in rounds[1:]:
        assert all(k in r.element_score for r, k in zip(recs, asked, strict=True))
    assert rounds[1][0] != rounds[2][0] != keys  # other draws, not copies of the first
    half = pos[1::2]  # a rank's shard: the same rows get the same keys
    shard = tr._rounds([recs[i] for i in half], [keys[i] for i in half], [swaps[i] for i in half], 0, 0, half)
    assert [[ks[i] for i in half] for ks, _ in rounds] == [ks for ks, _ in shard]
    with torch.no_grad():
        three = tr._loss(recs, keys, 0, swaps=swaps)
        tr.cfg = dataclasses.replace(tr.cfg, elements_per_pair=1)
        one = [tr._loss(recs, ks, 0, swaps=sw) for ks, sw in rounds]
    assert three["element"].item() == pytest.approx(sum(o["element"].item() for o in one) / 3, rel=1e-4)
    assert three["ce"].item() == pytest.approx(one[0]["ce"].item(), rel=1e-5)
    assert three["mse"].item() == pytest.approx(one[0]["mse"].item(), rel=1e-5)


def test_freeze_tower_refuses_a_model_without_a_known_tower_by_name():
    from tokenfocus.backbones import tower_parameters

    with pytest.raises(ValueError, match="Linear: no vision tower .*freeze_tower: false"):
        tower_parameters(torch.nn.Linear(2, 2))


def test_select_last_saves_the_last_steps_weights_not_the_best_val_ones(tiny_params, tmp_path):
    """``train.select: last``: the model is the schedule's end, where the best val SRCC came earlier."""
    p = _params(tiny_params, "fastvlm_llama", steps=4, eval_every=1, checkpoint_every=4, lr=0.01)
    for select in ("val", "last"):
        Trainer(
            "fastvlm_llama",
            dataclasses.replace(p, train=dataclasses.replace(p.train, select=select)),
            out=tmp_path / select,
        ).run()
    state = json.loads((tmp_path / "val" / "checkpoint" / "state.json").read_text())
    assert state["best_step"] < 4  # the premise: the best val SRCC came before the last step
    final = load_file(tmp_path / "last" / "checkpoint" / "weights.safetensors")  # step 4's weights
    for select, equal in (("val", False), ("last", True)):
        model = load_file(tmp_path / select / "model" / "model.safetensors")
        assert all(torch.equal(model[k], final[k]) for k in final) == equal, select
        summary = json.loads((tmp_path / select / "metrics.json").read_text())
        assert summary["model_step"] == (4 if equal else state["best_step"])


def test_select_names_itself_when_unknown():
    from tokenfocus.config import ConfigError, TrainConfig

    with pytest.raises(ConfigError, match="train.select must be val or last, got 'best'"):
        TrainConfig(select="best")


def test_average_from_saves_the_mean_of_the_last_steps_weights_and_resumes_to_it(tiny_params, tmp_path):
    """``train.average_from``: the model is the mean of the weights after each step from that
    fraction of training on (here steps 2, 3 and 4 of 4), measured at the end in those weights, and
    a run killed midway resumes to the same mean (the checkpoint keeps it)."""
    p = _params(
        tiny_params, "fastvlm_llama", steps=4, eval_every=4, checkpoint_every=1, lr=0.01, select="last"
    )
    plain = Trainer("fastvlm_llama", p, out=tmp_path / "plain")
    steps = []  # the trained weights after steps 2, 3 and 4, from a run that does not average
    for stop in (2, 1, 1):
        plain.run(stop_after=stop)
        steps.append(load_file(tmp_path / "plain" / "checkpoint" / "weights.safetensors"))
        plain = Trainer("fastvlm_llama", p, out=tmp_path / "plain")
    averaged = dataclasses.replace(p, train=dataclasses.replace(p.train, average_from=0.5))
    Trainer("fastvlm_llama", averaged, out=tmp_path / "mean").run()
    cut = Trainer("fastvlm_llama", averaged, out=tmp_path / "cut")
    cut.run(stop_after=3)  # killed after step 3, resumed from its checkpoint
    Trainer("fastvlm_llama", averaged, out=tmp_path / "cut").run()
    final = steps[-1]
    model = load_file(tmp_path / "mean" / "model" / "model.safetensors")
    for k in final:
        if final[k].is_floating_point():
            mean = sum(s[k] for s in steps) / 3
            torch.testing.assert_close(model[k], mean, rtol=0, atol=1e-6)
    assert any(not torch.equal(model[k], final[k]) for k in final)  # not the last step's weights
    resumed = load_file(tmp_path / "cut" / "model" / "model.safetensors")
    assert all(torch.equal(resumed[k], model[k]) for k in model)
    # the run's last validation measured the saved model (full tuning: the same bits), not the
    # last step's weights
    from tokenfocus.images import load_images
    from tokenfocus.scoring import Scorer
    from tokenfocus.train.trainer import evaluate_split

    logged = json.loads((tmp_path / "mean" / "checkpoint" / "state.json").read_text())["history"][-1]
    records = cut.val_records
    images = load_images(f"{p.validate.data}/images", [r.img_path for r in records])
    scorer = Scorer.load(tmp_path / "mean" / "model", batch_size=p.score.batch_size)
    again = evaluate_split(scorer, records, images, elements=False)
    assert logged["step"] == 4
    for key in ("srcc", "plcc"):  # PLCC after a 4-parameter logistic fit: float rounding
        assert again[key] == pytest.approx(logged[key], abs=1e-5), key


def test_average_from_needs_select_last_and_a_fraction():
    from tokenfocus.config import ConfigError, TrainConfig

    with pytest.raises(ConfigError, match="train.average_from .* needs train.select: last"):
        TrainConfig(select="val", average_from=0.5)
    with pytest.raises(ConfigError, match=r"train.average_from must be in \[0, 1\], got 1.5"):
        TrainConfig(select="last", average_from=1.5)


def test_the_weight_average_of_bf16_weights_is_kept_in_float32():
    """A real checkpoint's LoRA adapter may train in bf16: over a long run each step's share of the
    mean, 1/count of a difference, falls below bf16's resolution, and a bf16 mean would stop
    moving (here it would stay near the first steps' 1.0; the true mean is 1.5)."""
    from tokenfocus.train.average import WeightAverage

    weight = torch.ones(4, dtype=torch.bfloat16)
    average = WeightAverage([weight], start=1)
    for step in range(1, 2001):
        weight.fill_(1.0 + step / 2000)  # rises evenly from 1.0 to 2.0
        average.update(step)
    assert average.mean[0].dtype == torch.float32
    with average.applied():
        assert weight.dtype == torch.bfloat16
        torch.testing.assert_close(weight.float(), torch.full((4,), 1.5), rtol=0, atol=0.01)
    assert torch.equal(weight, torch.full((4,), 2.0, dtype=torch.bfloat16))  # restored after


def test_the_saved_model_records_its_validations_answer_mass_and_scoring_checks_against_it(
    tiny_params, tmp_path, caplog
):
    """Fine-tuning with the focus loss reads the answer tokens' logits alone, so the rest of the
    vocabulary may take the first token's probability (the shipped Gemma: 0.63 of it on val). The
    saved folder records what the last val pass (the saved weights) carried, and a scorer of that
    folder warns only far below it; without the record the same model warns."""
    from tokenfocus.images import load_images
    from tokenfocus.scoring import MIN_ANSWER_MASS, Scorer
    from tokenfocus.train.trainer import evaluate_split

    slug = "fastvlm_gemma"
    p = _params(tiny_params, slug, steps=2, eval_every=2, checkpoint_every=2)
    tr = Trainer(slug, p, out=tmp_path / slug)
    tr.run()
    record = json.loads((tmp_path / slug / "model" / "tokenfocus.json").read_text())["answer_mass"]
    assert record["rows"] == len(tr.val_records) and 0 < record["low"] <= record["mean"] <= 1
    images = load_images(f"{p.validate.data}/images", [r.img_path for r in tr.val_records])
    caplog.clear()
    scorer = Scorer.load(tmp_path / slug / "model", batch_size=p.score.batch_size)
    assert scorer.mass.record == record
    with scorer.mass.collect() as again:
        evaluate_split(scorer, tr.val_records, images, elements=False)
    assert again["rows"] == record["rows"]
    assert again["mean"] == pytest.approx(record["mean"], abs=2e-4)  # LoRA merged: float rounding
    # the premise: this model's answers carry under half of the first token, as a base's would not
    assert scorer.mass.first < MIN_ANSWER_MASS
    assert not [r for r in caplog.records if "answer tokens carry" in r.getMessage()]
    bare = Scorer(scorer.model, scorer.processor, scorer.prompts, slug=slug, batch_size=p.score.batch_size)
    evaluate_split(bare, tr.val_records, images, elements=False)
    assert [r for r in caplog.records if "answer tokens carry" in r.getMessage()]
