"""`make gpu-check`: scoring plus 5 training steps of every tiny family on CUDA, where there is one.

The same code path as the CPU run: each family is built (`tokenfocus.tiny`), loaded with
``device`` set in its backbone params, scored by :class:`tokenfocus.scoring.Scorer` and trained by
:class:`tokenfocus.train.Trainer`. Checks, per family: the model sits on the device; its scores
match the same model's CPU scores (fp32; cuDNN/TF32 kernels allow ~1e-3); 5 focus-loss steps give
finite losses and move the weights; the trained model scores on the device; with two or more
GPUs, 5 data-parallel steps over all of them (torchrun, nccl). Without CUDA it says
"no CUDA device" and exits 0. ``--device cpu`` runs the same checks on the CPU (used by the tests).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: Every tiny family, with the tuning its check uses (at least one LoRA).
CHECKS = {
    "idefics3": "full",
    "llava": "full",
    "gemma3": "lora",
    "fastvlm": "full",
    "fastvlm_qwen2": "full",
    "fastvlm_gemma": "lora",
    "qwen2_vl": "full",
    "qwen2_5_vl": "lora",
    "internvl": "full",
}
TOLERANCE = 2e-3


def check_family(family: str, tuning: str, params, device: str, work: Path, pairs) -> dict:
    """Build; score on ``device`` (batched, prefix reuse) and on the CPU (one pair at a time, plain);
    train 5 steps on ``device``; return the figures."""
    import torch

    from tokenfocus.config import BackboneConfig, LoraConfig
    from tokenfocus.scoring import Scorer
    from tokenfocus.tiny import build
    from tokenfocus.train import Trainer

    slug = f"{family}_check"
    lora = LoraConfig(r=8, alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    bb = BackboneConfig(
        source=str(work / "base" / slug), family=family, tuning=tuning, lora=lora, device=device
    )
    p = dataclasses.replace(params, backbones={slug: bb})
    build(slug, p, out=bb.source)
    images, prompts, elements = pairs
    t = time.perf_counter()
    on_device = Scorer.load(bb.source, batch_size=8)
    on_device.model.to(device)  # a folder load reads the device from its own metadata, if any
    assert on_device.model.device.type == torch.device(device).type, on_device.model.device
    got = on_device(images, prompts, elements)
    score_s = time.perf_counter() - t
    # the reference takes the other path too: one pair at a time, every element question in full
    # (no prefix reuse), so that on the CPU as well the check compares two independent paths
    reference = Scorer(
        on_device.model.to("cpu"),
        on_device.processor,
        on_device.prompts,
        slug=slug,
        batch_size=1,
        prefix_reuse=False,
    )
    on_cpu = reference(images, prompts, elements)
    drift = max(
        max(abs(a.score - b.score) for a, b in zip(got, on_cpu, strict=True)),
        max(abs(a.elements[k] - b.elements[k]) for a, b in zip(got, on_cpu, strict=True) for k in a.elements),
    )
    assert drift < TOLERANCE, f"{family}: {device} scores differ from the CPU's by {drift:.2e}"
    train = dataclasses.replace(p.train, out=str(work / "trained"), steps=5, eval_every=5, checkpoint_every=5)
    p = dataclasses.replace(p, train=train)
    t = time.perf_counter()
    trainer = Trainer(slug, p)
    losses = []
    trainer.log_fn = lambda metrics, step: losses.append(metrics.get("train_loss"))
    trainer._load_data()
    trainer.setup()
    before = {n: q.detach().clone() for n, q in trainer.model.named_parameters() if q.requires_grad}
    summary = trainer.run()
    train_s = time.perf_counter() - t
    moved = any(
        not torch.equal(before[n], q.detach()) for n, q in trainer.model.named_parameters() if n in before
    )
    assert moved, f"{family}: 5 training steps left every weight unchanged"
    assert all(x is None or math.isfinite(x) for x in losses), f"{family}: non-finite loss {losses}"
    assert next(trainer.model.parameters()).device.type == torch.device(device).type
    trained = Scorer.load(Path(train.out) / slug / "model", batch_size=8)
    trained.model.to(device)
    assert all(1 <= r.score <= 5 for r in trained(images, prompts, elements))
    return {
        "family": family,
        "tuning": tuning,
        "device": str(trainer.model.device if hasattr(trainer.model, "device") else device),
        "score_s": round(score_s, 2),
        "train_5_steps_s": round(train_s, 2),
        "cpu_drift": f"{drift:.1e}",
        "steps": summary["steps"],
    }


def check_data_parallel(params, device: str, work: Path, nproc: int) -> dict:
    """5 data-parallel steps of the fastvlm_gemma (LoRA) family over ``nproc`` ranks, launched as
    users launch them: `tokenfocus train` with ``backbones.<slug>.nproc`` set (torchrun, nccl on
    CUDA, gloo on the CPU). Checks: every rank ran, rank 0 wrote the model."""
    import json
    import subprocess

    import yaml

    from tokenfocus.config import BackboneConfig, LoraConfig
    from tokenfocus.tiny import build

    slug = "dp_check"
    lora = LoraConfig(r=8, alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    bb = BackboneConfig(
        source=str(work / "base" / slug),
        family="fastvlm_gemma",
        tuning="lora",
        lora=lora,
        device=device,
        nproc=nproc,
    )
    p = dataclasses.replace(
        params,
        backbones={slug: bb},
        train=dataclasses.replace(
            params.train,
            out=str(work / "dp"),
            steps=5,
            eval_every=5,
            checkpoint_every=5,
            batch_size=2 * nproc,
        ),
    )
    build(slug, p, out=bb.source)
    path = work / "params-dp.yaml"
    path.write_text(yaml.safe_dump(dataclasses.asdict(p), sort_keys=False))
    t = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "tokenfocus", "train", "-b", slug, "--params", str(path), "--no-track"],
        capture_output=True,
        text=True,
    )  # from the project root, where params' data and splits are
    assert run.returncode == 0, f"data-parallel training failed:\n{run.stderr[-3000:]}"
    summary = json.loads(run.stdout[run.stdout.index("{") :])
    assert summary["ranks"] == nproc and summary["steps"] == 5, summary
    assert (work / "dp" / slug / "model" / "adapter_config.json").exists()
    return {"ranks": nproc, "device": device, "train_5_steps_s": round(time.perf_counter() - t, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="default: cuda when there is one")
    ap.add_argument("--families", nargs="*", default=list(CHECKS))
    ap.add_argument(
        "--ranks", type=int, default=None, help="data-parallel check ranks (default: the GPUs, if 2+)"
    )
    args = ap.parse_args(argv)

    import torch

    from tokenfocus.config import load_params
    from tokenfocus.env import apply_env
    from tokenfocus.evalmuse import load_records
    from tokenfocus.images import load_images
    from tokenfocus.split import main as split_main

    apply_env()
    device = args.device or ("cuda" if torch.cuda.is_available() else None)
    if device is None:
        print("no CUDA device: nothing to check (gpu-check runs where torch sees a GPU)")
        return 0
    unknown = sorted(set(args.families) - set(CHECKS))
    if unknown:
        print(f"error: unknown families {unknown}; known: {sorted(CHECKS)}", file=sys.stderr)
        return 2
    params = load_params()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        params = dataclasses.replace(
            params,
            split=dataclasses.replace(params.split, out=str(work / "splits.json")),
            pretrain=dataclasses.replace(params.pretrain, init_root=str(work / "init")),
        )
        split_main(params.split, params.validate.data)
        recs = load_records(Path(params.validate.data) / "test.json")[:8]
        imgs = load_images(Path(params.validate.data) / "images", [r.img_path for r in recs])
        pairs = (
            [imgs[r.img_path] for r in recs],
            [r.prompt for r in recs],
            [[e.key for e in r.elements] for r in recs],
        )
        rows = [check_family(f, CHECKS[f], params, device, work, pairs) for f in args.families]
        ranks = args.ranks or (torch.cuda.device_count() if device.startswith("cuda") else 1)
        dp = check_data_parallel(params, device, work, ranks) if ranks >= 2 else None
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    print(f"gpu-check: {len(rows)} families scored and trained on {device}")
    if dp:
        print(
            f"gpu-check: 5 data-parallel steps over {dp['ranks']} ranks on {device} in {dp['train_5_steps_s']} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
