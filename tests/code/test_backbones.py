import dataclasses

import pytest
import torch

from tests.conftest import FAMILIES, PATH_BACKBONES
from tokenfocus.backbones import BackboneError, load_model_and_processor
from tokenfocus.config import BackboneConfig, PromptConfig
from tokenfocus.evalmuse import load_records
from tokenfocus.images import load_images
from tokenfocus.prompts import answer_tokens
from tokenfocus.scoring import encode
from tokenfocus.tiny import build_tiny, families


def test_at_least_three_families():
    assert {"idefics3", "llava", "gemma3", "fastvlm", "fastvlm_qwen2", "fastvlm_gemma"} <= set(families())


@pytest.mark.parametrize("slug", [*FAMILIES, *PATH_BACKBONES])
def test_build_save_reload_identical_logits(tiny_params, small_data, slug, tmp_path):
    bb = tiny_params.backbone(slug)
    model, processor = load_model_and_processor(bb.source, bb)
    assert type(model).__name__.endswith("ForConditionalGeneration")  # a real transformers class
    rec = load_records(small_data / "train_list.json")[0]
    img = load_images(small_data / "images", [rec.img_path])[rec.img_path]
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": rec.prompt}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    batch = encode(processor, [text], [img])
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    again, proc2 = load_model_and_processor(tmp_path / "m", bb)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, again(**encode(proc2, [text], [img])).logits)
    tok = processor.tokenizer
    ids = answer_tokens(tok, PromptConfig(), slug=slug)
    assert len(set(ids.score_ids)) == 5 and ids.yes_id != ids.no_id


def test_unknown_family_is_a_clear_error(tmp_path):
    with pytest.raises(BackboneError, match="unknown tiny family 'nope'"):
        build_tiny(
            "x", BackboneConfig(source=str(tmp_path), family="nope"), PromptConfig(), ["a"], tmp_path / "x"
        )


@pytest.mark.parametrize("source", ["models/base/not_built", "./not_built", "/nowhere/at/all"])
def test_missing_local_folder_says_how_to_build_it(source):
    with pytest.raises(BackboneError, match=rf"x_tiny: no folder {source}; build the tiny bases"):
        load_model_and_processor(source, BackboneConfig(source=source), slug="x_tiny")


def test_hub_ids_are_not_taken_for_missing_folders():
    from tokenfocus.backbones import _looks_local

    assert not _looks_local("Qwen/Qwen2-VL-2B-Instruct") and not _looks_local("gpt2")
    assert _looks_local("models/base/idefics3_tiny") and _looks_local("../x")


def test_multi_token_answer_word_names_backbone_and_word(tiny_params):
    bb = tiny_params.backbone("idefics3_tiny")
    _, processor = load_model_and_processor(bb.source, bb)
    bad = dataclasses.replace(PromptConfig(), yes_token="yes yes")
    with pytest.raises(BackboneError, match=r"idefics3_tiny: answer word 'yes yes' is 2 tokens"):
        answer_tokens(processor.tokenizer, bad, slug="idefics3_tiny")
    unknown = dataclasses.replace(PromptConfig(), no_token="zebra")
    with pytest.raises(BackboneError, match="'zebra' is unknown"):
        answer_tokens(processor.tokenizer, unknown, slug="idefics3_tiny")


def test_image_only_processors_load_by_name_through_autoprocessor(tiny_params):
    """Qwen2-VL's stock processor needs torchvision for its video part; the saved image-only
    variant is what AutoProcessor returns, with the image processor and no video slot."""
    import json
    from pathlib import Path

    from tokenfocus import processors

    for slug in ("qwen2_vl_tiny", "qwen2_5_vl_tiny", "internvl_tiny"):
        bb = tiny_params.backbone(slug)
        saved = json.loads((Path(bb.source) / "processor_config.json").read_text())["processor_class"]
        assert (
            saved.startswith(processors.PREFIX)
            and saved[len(processors.PREFIX) :] in processors.image_only_names()
        )
        _, processor = load_model_and_processor(bb.source, bb)
        assert type(processor).__name__ == saved and hasattr(processor, "image_processor")
        assert "video_processor" not in type(processor).get_attributes()
    # a family without a video slot keeps its stock processor
    _, llava = load_model_and_processor(
        tiny_params.backbone("llava_siglip_tiny").source, tiny_params.backbone("llava_siglip_tiny")
    )
    assert type(llava).__name__ == "LlavaProcessor"


def test_a_stock_video_processor_checkpoint_gets_its_image_only_variant_without_torchvision(tmp_path):
    """A real checkpoint's processor_config names the stock class; where torchvision does not load
    (here), the variant is chosen by that name, from data, and elsewhere the stock one is kept."""
    import json

    from tokenfocus import processors

    (tmp_path / "processor_config.json").write_text(json.dumps({"processor_class": "Qwen2_5_VLProcessor"}))
    if processors.torchvision_works():
        assert processors.processor_class(tmp_path) is None
    else:
        assert processors.processor_class(tmp_path) is processors.image_only("Qwen2_5_VLProcessor")
    (tmp_path / "processor_config.json").write_text(json.dumps({"processor_class": "LlavaProcessor"}))
    assert processors.processor_class(tmp_path) is None


def test_remote_code_runs_only_when_a_backbone_asks_and_the_log_says_so(tmp_path, caplog):
    """A checkpoint whose config points at code of its own (``auto_map``): by default that code
    never runs; with ``trust_remote_code: true`` it does, and the log warns first."""
    import json
    import shutil
    from pathlib import Path

    from tokenfocus.backbones import load_model_and_processor
    from tokenfocus.config import BackboneConfig, load_params

    root = Path(__file__).resolve().parents[2]
    assert all(not bb.trust_remote_code for bb in load_params(root / "params.yaml").backbones.values())
    src = tmp_path / "remote"
    shutil.copytree(root / "models/base/fastvlm_qwen2", src)
    marker = tmp_path / "ran.txt"
    (src / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import PreTrainedModel as EvilModel\n"
    )
    cfg = json.loads((src / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForImageTextToText": "evil.EvilModel"}
    (src / "config.json").write_text(json.dumps(cfg))
    with caplog.at_level("WARNING"):
        try:
            load_model_and_processor(src, BackboneConfig(source=str(src)), slug="remote")
        except Exception:  # noqa: BLE001 - refusing is fine; running the code is not
            pass
    assert not marker.exists(), "remote code ran without trust_remote_code"
    assert "trust_remote_code" not in caplog.text
    # trusted, in a process of its own: remote code registers its classes with transformers' Auto
    # mappings for the whole process, and would stand in for the real class in later tests
    import subprocess
    import sys

    code = (
        "import logging; logging.basicConfig(level=logging.WARNING)\n"
        "from tokenfocus.backbones import load_model_and_processor\n"
        "from tokenfocus.config import BackboneConfig\n"
        "try:\n"
        f"    load_model_and_processor({str(src)!r}, BackboneConfig(source={str(src)!r}, trust_remote_code=True), slug='remote')\n"
        "except Exception as exc:\n"
        "    print('the stand-in class failed to build:', type(exc).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "trust_remote_code=True" in out.stderr, out.stderr[-2000:]
    assert marker.exists()
