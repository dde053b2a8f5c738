"""Image-only variants of the processors that carry a video slot (Qwen2-VL, Qwen2.5-VL, InternVL, ...).

Their stock processors build a video processor, and that needs torchvision, which cannot load beside
a CPU-only torch. For image-text alignment the video part is never used, so the variant here is the
stock class with the ``video_processor`` argument left out, and nothing else changed. Which stock
processors get a variant is data (``image_only_processors`` in ``tiny_families.yaml``), not an
if-chain per family.

A tiny base is saved with its variant's name (``ImageOnlyQwen2VLProcessor``); :func:`register` makes
``AutoProcessor`` find it by that name, in every process that loads a model. A real checkpoint keeps
its stock processor wherever torchvision works; :func:`processor_class` swaps in the variant only on a
machine without it.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
from importlib import resources
from pathlib import Path

import yaml

log = logging.getLogger(__name__)
PREFIX = "ImageOnly"


@functools.cache
def image_only_names() -> tuple[str, ...]:
    """The stock processor classes (by name) that get an image-only variant."""
    text = resources.files("tokenfocus").joinpath("tiny_families.yaml").read_text(encoding="utf-8")
    return tuple(yaml.safe_load(text).get("_image_only_processors", []))


@functools.cache
def image_only(name: str) -> type:
    """The image-only variant of the stock processor class ``name``: same behaviour, no video slot.

    Why a generated ``__init__``: ``ProcessorMixin`` reads a processor's parts from its ``__init__``
    signature and, when loading, its saved options from the function's own argument names, so the
    variant needs a real function with the stock arguments (``image_seq_length``, ...) less
    ``video_processor``.
    """
    import transformers

    base = getattr(transformers, name)
    sig = inspect.signature(base.__init__)
    names = [
        n
        for n, p in sig.parameters.items()
        if n not in ("self", "video_processor") and p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    ]
    defaults = {
        n: None if sig.parameters[n].default is inspect.Parameter.empty else sig.parameters[n].default
        for n in names
    }
    src = (
        f"def __init__(self, {', '.join(f'{n}=_defaults[{n!r}]' for n in names)}, **kwargs):\n"
        f"    _base.__init__(self, {', '.join(f'{n}={n}' for n in names)}, video_processor=None, **kwargs)\n"
    )
    namespace = {"_defaults": defaults, "_base": base}
    exec(src, namespace)  # noqa: S102 - the source is built above from the stock signature only
    cls = type(PREFIX + name, (base,), {"__init__": namespace["__init__"], "__module__": __name__})
    globals()[cls.__name__] = cls  # importable by name (pickling, Dask workers)
    return cls


def stock_or_image_only(name: str) -> type:
    """The processor class a tiny base is built with: the image-only variant where there is one."""
    import transformers

    return image_only(name) if name in image_only_names() else getattr(transformers, name)


@functools.cache
def torchvision_works() -> bool:
    """Whether torchvision imports here (PyPI's build does not load beside a CPU-only torch)."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # ImportError, or a RuntimeError from its operators
        return False
    return True


def register() -> None:
    """Make ``AutoProcessor`` find every image-only variant by its saved name (idempotent)."""
    from transformers import AutoProcessor

    for name in image_only_names():
        AutoProcessor.register(f"tokenfocus:{PREFIX}{name}", image_only(name), exist_ok=True)


def processor_class(source: str | Path) -> type | None:
    """The variant to load a real checkpoint's processor with, or None to let ``AutoProcessor`` pick.

    Only a stock processor with a video slot, on a machine where torchvision does not work, gets
    its variant; a saved variant is found by ``AutoProcessor`` itself once :func:`register` ran.
    """
    if torchvision_works():
        return None
    config = Path(source) / "processor_config.json"
    if not config.exists():  # a hub id: its file in the local cache, if there
        from transformers.utils import cached_file

        try:
            found = cached_file(
                str(source), "processor_config.json", _raise_exceptions_for_missing_entries=False
            )
        except OSError:
            found = None
        if not found:
            return None
        config = Path(found)
    name = json.loads(config.read_text()).get("processor_class", "")
    if name in image_only_names():
        log.info("%s: %s without its video part (torchvision does not load here)", source, name)
        return image_only(name)
    return None
