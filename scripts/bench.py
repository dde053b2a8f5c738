"""`make bench`: throughput and memory of the scorer and trainer, written to docs/benchmarks.md.

``--dispatch``, ``--grounding``, ``--side-by-side``, ``--pretrain`` and ``--gemm`` measure only
section 7 (the CPU kernels' pins), 8 (grounded elements), 9 (stages side by side), 10
(pre-training's steps) or 11 (fine-tuning and scoring on MKL or OpenBLAS) and splice it into the
file.

Every row names the machine, the backbone, the batch size, the number of runs and the median,
and each fast path is compared with its baseline measured in the same run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tokenfocus.env import apply_env  # noqa: E402

apply_env()  # before torch loads: the kernels' dispatch is read once
import torch  # noqa: E402

from tokenfocus.config import load_params  # noqa: E402
from tokenfocus.evalmuse import load_records  # noqa: E402
from tokenfocus.images import load_images  # noqa: E402

RUNS = 5  # medians of 5: the 2-core machine's timings vary by 10-20% run to run
ELEMENT_RUNS = 11  # element rows are cheap (0.1 s a run) and their ratio is a target: more runs
CPU = (
    next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    if Path("/proc/cpuinfo").exists()
    else platform.processor()
)
MACHINE = (
    f"{platform.machine()} ({CPU}), {os.cpu_count()} cores, torch {torch.__version__}, "
    f"{torch.get_num_threads()} threads, kernels {torch.backends.cpu.get_cpu_capability()}"
)


def median_time(fn, runs=RUNS) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def paired_times(fa, fb, runs=RUNS) -> tuple[float, float, list[float]]:
    """Medians of ``fa`` and ``fb`` timed in alternation, and the ratio a/b of each pair.

    This machine's slow spells last seconds: timing one path's runs and then the other's lets a
    spell fall on one side only, while alternating runs spreads it over both.
    """
    fa(), fb()  # warm-up
    ta, tb = [], []
    for _ in range(runs):
        for fn, times in ((fa, ta), (fb, tb)):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(ta), statistics.median(tb), [a / b for a, b in zip(ta, tb, strict=True)]


def sample(params, n):
    recs = load_records(Path(params.validate.data) / "train_list.json")[:n]
    imgs = load_images(Path(params.validate.data) / "images", [r.img_path for r in recs])
    return recs, [imgs[r.img_path] for r in recs]


def generate_baseline(scorer, images, prompts):
    """What a newcomer writes: one generate() per pair, reading the score tokens' probabilities."""
    from tokenfocus.prompts import overall_text
    from tokenfocus.scoring import encode

    out = []
    for im, p in zip(images, prompts, strict=True):
        batch = encode(scorer.processor, [overall_text(scorer.parts, scorer.prompts, p, None)], [im])
        g = scorer.model.generate(
            **batch,
            max_new_tokens=1,
            output_scores=True,
            return_dict_in_generate=True,
            do_sample=False,
            pad_token_id=scorer.processor.tokenizer.pad_token_id,
        )
        probs = torch.softmax(g.scores[0][0, scorer.tokens.score_ids], -1)
        out.append(float((probs * torch.arange(1, 6)).sum()))
    return out


def bench_overall(params, rows):
    from tokenfocus.scoring import Scorer

    recs, imgs = sample(params, 64)
    prompts = [r.prompt for r in recs]
    for slug, bb in params.backbones.items():
        base = Scorer.load(bb.source)
        t_gen = median_time(lambda s=base: generate_baseline(s, imgs, prompts))
        for bs in (1, 8, 32):
            s = Scorer.load(bb.source, batch_size=bs)
            t = median_time(lambda s=s: s.overall(imgs, prompts))
            rows["overall"].append(
                {
                    "backbone": slug,
                    "batch": bs,
                    "pairs": len(imgs),
                    "runs": RUNS,
                    "median_s": t,
                    "pairs_per_s": len(imgs) / t,
                    "baseline_pairs_per_s": len(imgs) / t_gen,
                    "speedup": t_gen / t,
                }
            )


def bench_elements(params, rows):
    from tokenfocus.scoring import Scorer

    recs, imgs = sample(params, 16)
    prompts = [r.prompt for r in recs]
    words = [
        "red circle (color)",
        "two stars (counting)",
        "square (object)",
        "blue star (color)",
        "small circles (attribute)",
        "star left of circle (spatial)",
        "three squares (counting)",
        "large star (attribute)",
    ]
    for slug, bb in params.backbones.items():
        s = Scorer.load(bb.source, batch_size=32)
        for k in (2, 4, 8, 16):
            els = [[f"{w} {j}" for j in range(k // len(words) + 1) for w in words][:k] for _ in recs]
            els = [[e.replace(" 0", "").replace(" 1", " again") for e in row] for row in els]
            t_plain, t_pre, ratios = paired_times(
                lambda s=s, e=els: s.elements_plain(imgs, prompts, e),
                lambda s=s, e=els: s.elements_prefix(imgs, prompts, e),
                runs=ELEMENT_RUNS,
            )
            a, b = s.elements_plain(imgs, prompts, els), s.elements_prefix(imgs, prompts, els)
            diff = max(abs(a[i][key] - b[i][key]) for i in range(len(recs)) for key in els[i])
            rows["elements"].append(
                {
                    "backbone": slug,
                    "elements": k,
                    "images": len(imgs),
                    "batch": 32,
                    "runs": ELEMENT_RUNS,
                    "plain_s": t_plain,
                    "prefix_s": t_pre,
                    "speedup": t_plain / t_pre,
                    "speedup_range": f"{min(ratios):.2f}-{max(ratios):.2f}",
                    "max_abs_diff": diff,
                }
            )


def bench_shared(params, rows, n: int = 16, k: int = 8):
    """Per-pair cost with k elements: the overall question and the element questions from one image
    prefix (`Scorer.shared`) against today's path (the overall question whole, then the elements
    from a prefix of their own: the image through the tower and the prefill twice per pair). A tiny
    Qwen2-VL at realistic prefixes: 256 and 1,024 image tokens per image, as real checkpoints have."""
    import tempfile

    from tokenfocus.config import BackboneConfig
    from tokenfocus.scoring import Scorer
    from tokenfocus.tiny import build_tiny, corpus_from

    recs, imgs = sample(params, n)
    prompts = [r.prompt for r in recs]
    els = [[e.key for e in r.elements][:k] for r in recs]
    els = [(row * k)[:k] for row in els]  # exactly k per pair (a repeated key is scored again)
    corpus = corpus_from(params.validate.data)
    for size in (256, 512):  # patch 8, 2x2 merge: (size / 16)^2 image tokens
        with tempfile.TemporaryDirectory() as tmp:
            cfg = BackboneConfig(source=tmp, family="qwen2_vl", image_size=size)
            build_tiny("qwen2_vl_bench", cfg, params.prompts, corpus, tmp)
            s = Scorer.load(tmp, batch_size=8)
            big = [im.resize((size, size)) for im in imgs]

            def today(s=s, big=big):
                return s.overall(big, prompts, els), s.elements_prefix(big, prompts, els)

            t_old, t_new, ratios = paired_times(today, lambda s=s, big=big: s.shared(big, prompts, els))
            (d0, p0), (d1, p1) = today(), s.shared(big, prompts, els)
            diff = max(
                float((d0 - d1).abs().max()),
                max(abs(p0[i][key] - p1[i][key]) for i in range(n) for key in els[i]),
            )
            rows["shared"].append(
                {
                    "image_tokens": (size // 16) ** 2,
                    "pairs": n,
                    "elements_per_pair": k,
                    "batch": 8,
                    "runs": RUNS,
                    "today_ms_per_pair": 1000 * t_old / n,
                    "shared_ms_per_pair": 1000 * t_new / n,
                    "speedup": t_old / t_new,
                    "speedup_range": f"{min(ratios):.2f}-{max(ratios):.2f}",
                    "max_abs_diff": diff,
                }
            )


def bench_train_shared(params, rows, batch: int = 8):
    """One training step (the focus loss and its backward) with a pair's overall and element
    questions from one image prefill (`Trainer._answer_logits`, what training runs) against the
    image encoded once per question row. A tiny Qwen2-VL at 256 and 1,024 image tokens."""
    import dataclasses
    import tempfile

    from tokenfocus.config import BackboneConfig
    from tokenfocus.tiny import build_tiny, corpus_from
    from tokenfocus.train import Trainer

    corpus = corpus_from(params.validate.data)
    for size in (256, 512):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = BackboneConfig(source=tmp, family="qwen2_vl", image_size=size, tuning="full")
            build_tiny("qwen2_vl_bench", cfg, params.prompts, corpus, tmp)
            p = dataclasses.replace(
                params,
                backbones={"qwen2_vl_bench": cfg},
                train=dataclasses.replace(params.train, batch_size=batch, out=f"{tmp}/out"),
            )
            tr = Trainer("qwen2_vl_bench", p, out=f"{tmp}/out")
            tr._load_data()
            tr.setup()
            tr.model.eval()  # no dropout: both paths compute the same loss
            recs, keys, _ = tr._batch(0, 0)
            tr.images = {r.img_path: tr.images[r.img_path].resize((size, size)) for r in recs}

            def step(share, tr=tr, recs=recs, keys=keys, p=p):
                tr.share_prefix = share
                tr.model.zero_grad(set_to_none=True)
                out = tr._loss(recs, keys, p.train.steps)
                out["loss"].backward()
                return out["loss"].item()

            t_old, t_new, ratios = paired_times(lambda: step(False), lambda: step(True))
            rows["train_shared"].append(
                {
                    "image_tokens": (size // 16) ** 2,
                    "pairs": batch,
                    "runs": RUNS,
                    "per_row_ms_per_pair": 1000 * t_old / batch,
                    "shared_ms_per_pair": 1000 * t_new / batch,
                    "speedup": t_old / t_new,
                    "speedup_range": f"{min(ratios):.2f}-{max(ratios):.2f}",
                    "loss_abs_diff": abs(step(False) - step(True)),
                }
            )


def bench_scaling(params, rows):
    from tokenfocus.scoring import Scorer

    slug, bb = next(iter(params.backbones.items()))
    s = Scorer.load(bb.source, batch_size=32)
    for mult in (1, 2, 4):
        recs, imgs = sample(params, 64 * mult)
        els = [[e.key for e in r.elements] for r in recs]
        t = median_time(lambda s=s, r=recs, i=imgs, e=els: s(i, [x.prompt for x in r], e))
        rows["scaling"].append(
            {"backbone": slug, "pairs": len(recs), "runs": RUNS, "median_s": t, "s_per_pair": t / len(recs)}
        )


def bench_dtype(params, rows):
    """bf16 vs float32 on the same model (trained where `make run` left one), with the drift."""
    import dataclasses

    from tokenfocus.backbones import load_model_and_processor
    from tokenfocus.scoring import Scorer

    recs, imgs = sample(params, 64)
    prompts, els = [r.prompt for r in recs], [[e.key for e in r.elements] for r in recs]
    for slug, bb in params.backbones.items():
        trained = Path(params.train.out) / slug / "model"
        source = trained if trained.exists() else Path(bb.source)
        out, times = {}, {}
        for dtype in ("float32", "bfloat16"):
            model, proc = load_model_and_processor(source, dataclasses.replace(bb, dtype=dtype), slug=slug)
            s = Scorer(model, proc, params.prompts_for(slug), slug=slug, batch_size=32)
            out[dtype] = s(imgs, prompts, els)
            times[dtype] = median_time(lambda s=s: s(imgs, prompts, els))
        a, b = out["float32"], out["bfloat16"]
        rows["dtype"].append(
            {
                "backbone": slug,
                "weights": "trained" if trained.exists() else "untrained",
                "pairs": len(recs),
                "batch": 32,
                "runs": RUNS,
                "fp32_s": times["float32"],
                "bf16_s": times["bfloat16"],
                "speedup": times["float32"] / times["bfloat16"],
                "max_abs_dscore": max(abs(x.score - y.score) for x, y in zip(a, b, strict=True)),
                "max_abs_dp_yes": max(
                    abs(x.elements[k] - y.elements[k]) for x, y in zip(a, b, strict=True) for k in x.elements
                ),
            }
        )


CHILD = r"""
import json, resource, sys, time, torch, dataclasses
from tokenfocus.config import load_params
mode, slug, tuning = sys.argv[1], sys.argv[2], sys.argv[3]
threads = int(sys.argv[4]) if len(sys.argv) > 4 else 0  # 0: the params' (training), torch's default (scoring)
p = load_params()
if threads:
    torch.set_num_threads(threads)
    p.train = dataclasses.replace(p.train, threads=threads)
if mode == "train":
    from tokenfocus.train import Trainer
    p.backbones[slug].tuning = tuning
    p.train = dataclasses.replace(p.train, steps=10**6, out="/tmp/tokenfocus-bench")
    tr = Trainer(slug, p, out="/tmp/tokenfocus-bench/" + slug + tuning)
    tr._load_data(); tr.setup()
    n = 30
    tr._loss(*tr._batch(0, 0)[:2], 0)["loss"].backward()
    t = time.perf_counter()
    for step in range(n):
        out = tr._loss(*tr._batch(step, 0)[:2], step); out["loss"].backward(); tr.opt.step(); tr.opt.zero_grad()
    rate = n * p.train.batch_size / (time.perf_counter() - t)
else:
    from tokenfocus.scoring import Scorer
    from tokenfocus.evalmuse import load_records
    from tokenfocus.images import load_images
    recs = load_records("data/train_list.json")[:256]
    imgs = load_images("data/images", [r.img_path for r in recs])
    s = Scorer.load(p.backbone(slug).source, batch_size=32)
    t = time.perf_counter()
    s([imgs[r.img_path] for r in recs], [r.prompt for r in recs], [[e.key for e in r.elements] for r in recs])
    rate = len(recs) / (time.perf_counter() - t)
print(json.dumps({"rate": rate, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""

#: A pre-training stage's steps on the random base, the shipped recipe at the given threads:
#: CPU and wall seconds a step, and the CPU seconds of drawing the step's scenes (timed alone).
PRETRAIN_CHILD = r"""
import dataclasses, json, random, sys, time, torch
from tokenfocus.backbones import load_model_and_processor, template_parts
from tokenfocus.config import load_params
from tokenfocus.pretrain.curriculum import Pool
from tokenfocus.pretrain.stages import _rows, question_stage, tower_stage
from tokenfocus.env import torch_threads
from tokenfocus.gemm import products
stage, slug, n, threads, gemm = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
p = load_params(); bb = p.backbone(slug); cfg = dataclasses.replace(p.pretrain_for(slug), threads=threads, gemm=gemm)
torch_threads(cfg.threads)
frac = {"tower": 0.0, "pairs": 0.0, "elements": cfg.element_frac}[stage]
open_frac = (1 - frac) * cfg.open_frac  # as the pre-training stage sets it
styles = p.styles.book().styles("pretrain")
init = f"{p.pretrain.init_root}/{slug}"
model, processor = load_model_and_processor(init, dataclasses.replace(bb, source=init), slug=slug)
processor.tokenizer.padding_side = "left"
cpu, wall = time.process_time(), time.perf_counter()
with products(cfg.gemm, cfg.threads):  # as pretrain() enters it
    if stage == "tower":
        tower_stage(model, processor, bb.family, dataclasses.replace(cfg, tower_steps=n), bb.image_size, slug=slug, styles=styles)
    else:
        question_stage(model, processor, bb.family, cfg, p.prompts_for(slug), bb.image_size, steps=n,
                       element_frac=frac, open_frac=open_frac, name=stage, slug=slug, styles=styles)
step_cpu, step_wall = (time.process_time() - cpu) / n, (time.perf_counter() - wall) / n
cpu = time.process_time()
rng, parts = random.Random(0), template_parts(processor)
for k in range(n):
    if stage == "tower":
        Pool.draw(cfg.batch_size, bb.image_size, k, max_groups=cfg.tower_groups, styles=styles,
                  count_weights=tuple(cfg.count_weights))
    else:
        _rows(rng, k, cfg, parts, p.prompts_for(slug), bb.image_size, frac, open_frac, styles)
print(json.dumps({"step_cpu_s": step_cpu, "step_wall_s": step_wall, "draw_cpu_s": (time.process_time() - cpu) / n}))
"""


def children(n: int, *args, env: dict | None = None, code: str = CHILD) -> list[dict]:
    """``n`` bench children (``code``) with the same arguments, started together; their results."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(n)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"bench child {' '.join(args)} failed:\n{err[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def child(*args, env: dict | None = None) -> dict:
    return children(1, *args, env=env)[0]


def bench_side_by_side(params, rows, slug: str = "fastvlm_gemma"):
    """Two training or scoring processes side by side on this machine, as the retrain flow runs
    its backbones' stages: each at two threads (OpenMP's idle threads spinning, its default, or
    asleep: ``OMP_WAIT_POLICY=PASSIVE``) and each at its share of the cores, one thread, against
    one process alone at two threads."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    settings = [
        ("one process alone", 1, 2, env),
        ("side by side, spinning", 2, 2, env),
        ("side by side, asleep", 2, 2, {**env, "OMP_WAIT_POLICY": "PASSIVE"}),
        ("side by side, a share each", 2, 1, env),
    ]
    for mode in ("score", "train"):
        alone = None
        for name, n, threads, e in settings:
            got = children(n, mode, slug, params.backbone(slug).tuning, str(threads), env=e)
            each = statistics.mean(r["rate"] for r in got)
            alone = alone or each
            rows["side_by_side"].append(
                {
                    "stage": mode,
                    "backbone": slug,
                    "setting": name,
                    "processes": n,
                    "threads_each": threads,
                    "rate_each": each,
                    "rate_total": each * n,
                    "time_vs_alone": alone / each,
                }
            )


def section(number: int, title: str, text: str, rows: list[dict]) -> str:
    """A numbered section of docs/benchmarks.md: its title, the machine, what it measures, its table."""
    return f"\n## {number}. {title}\n\nMachine: {MACHINE}.\n\n{text}\n\n" + table(rows)


def side_by_side_section(rows: dict) -> str:
    """Section 9 of docs/benchmarks.md, from :func:`bench_side_by_side`'s rows."""
    return section(
        9,
        "Stages side by side on one machine: threads and cores",
        "Processes started together, each scoring the benchmark's first 256 pairs with their elements "
        "(`score`, pairs/s) or running 30 training steps (`train`, samples/s), as the retrain flow "
        "runs its backbones' stages side by side. `time_vs_alone`: each process's time against one "
        "process alone at two threads. OpenMP's idle threads spin by default and take the core the "
        "other process needs; asleep (`OMP_WAIT_POLICY=PASSIVE`, what `make test`'s two workers "
        "run with) or at a share of the cores each (`flows.retrain.stage_threads`, what the flow "
        "asks for) they do not.",
        rows["side_by_side"],
    )


def splice(number: int, section: str, rows: dict, keys: tuple[str, ...]) -> None:
    """Write one section into docs/benchmarks.md in place of its old text (or after the section
    before it), and its rows into eval/benchmarks.json: the other sections stay as measured."""
    doc = Path("docs/benchmarks.md").read_text()
    if f"\n## {number}. " in doc:
        start = doc.index(f"\n## {number}. ")
        end = doc.index("\n## ", start + 1)
    else:
        start = end = doc.index("\n## ", doc.index(f"\n## {number - 1}. ") + 1)
    Path("docs/benchmarks.md").write_text(doc[:start] + section + doc[end:])
    saved_path = Path("eval/benchmarks.json")
    saved = json.loads(saved_path.read_text()) if saved_path.exists() else {}
    saved |= {k: rows[k] for k in keys}
    saved_path.parent.mkdir(exist_ok=True)
    saved_path.write_text(json.dumps(saved, indent=1))
    print(section)


def bench_memory(params, rows):
    for slug in params.backbones:
        for tuning in ("full", "lora"):
            r = child("train", slug, tuning)
            rows["train"].append(
                {
                    "backbone": slug,
                    "tuning": tuning,
                    "batch": params.train.batch_size,
                    "steps": 30,
                    "samples_per_s": r["rate"],
                    "peak_rss_gib": r["peak_rss_gib"],
                }
            )
        r = child("score", slug, "-")
        rows["score_memory"].append(
            {"backbone": slug, "pairs": 256, "pairs_per_s": r["rate"], "peak_rss_gib": r["peak_rss_gib"]}
        )


def kernel_env(**values: str) -> dict:
    """This process's environment with the CPU kernel variables replaced by ``values`` alone."""
    from tokenfocus.env import CPU_KERNEL_ENV, NATIVE_SWITCH

    env = {k: v for k, v in os.environ.items() if k not in CPU_KERNEL_ENV}
    return {**env, NATIVE_SWITCH: "native", **values}


def bench_dispatch(params, rows):
    """What pinning the CPU kernels costs, which variable changes the golden pass's bits, and
    whether the bits depend on the CPU's vendor (MKL's vendor check answered the other way by a
    preloaded shim, :func:`tokenfocus.golden.mkl_vendor_shim`)."""
    import tempfile

    from tokenfocus.env import CPU_KERNEL_ENV
    from tokenfocus.golden import host_is_intel, mkl_vendor_shim

    tokenfocus = str(Path(sys.executable).with_name("tokenfocus"))

    def golden(values: dict, preload: Path | None = None) -> dict:
        env = kernel_env(**values) | ({"LD_PRELOAD": str(preload)} if preload else {})
        out = subprocess.run([tokenfocus, "golden"], capture_output=True, text=True, env=env)
        if out.returncode:
            raise SystemExit(f"tokenfocus golden failed under {values}:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout)

    settings = {"native (host dispatch)": {}, **{f"{k}={v} alone": {k: v} for k, v in CPU_KERNEL_ENV.items()}}
    settings["pinned (all, the default)"] = dict(CPU_KERNEL_ENV)
    hashes = {name: golden(values) for name, values in settings.items()}
    native = hashes["native (host dispatch)"]
    for name, h in hashes.items():
        rows["dispatch_bits"].append(
            {
                "setting": name,
                "capability": h["capability"],
                "logits_sha256": h["logits"][:12],
                "grads_sha256": h["grads"][:12],
                "bits_vs_native": "same"
                if (h["logits"], h["grads"]) == (native["logits"], native["grads"])
                else "differ",
            }
        )
    with tempfile.TemporaryDirectory() as tmp:
        shim = mkl_vendor_shim(not host_is_intel(), tmp)
        if shim is not None:
            host, other = ("Intel", "not Intel") if host_is_intel() else ("not Intel", "Intel")
            vendor_bound = CPU_KERNEL_ENV | {"MKL_CBWR": "AVX2,STRICT", "TOKENFOCUS_ONEDNN": "on"}
            for name, values in (
                ("pinned (all, the default)", CPU_KERNEL_ENV),
                ("MKL_CBWR=AVX2,STRICT, oneDNN on", vendor_bound),
            ):
                a = hashes.get(name) or golden(values)
                b = golden(values, shim)
                rows["dispatch_vendor"].append(
                    {
                        "setting": name,
                        "mkl_told": host,
                        "logits_sha256": a["logits"][:12],
                        "grads_sha256": a["grads"][:12],
                        "mkl_told_other": other,
                        "other_logits_sha256": b["logits"][:12],
                        "other_grads_sha256": b["grads"][:12],
                        "bits": "same"
                        if (a["logits"], a["grads"]) == (b["logits"], b["grads"])
                        else "differ",
                    }
                )
    # throughput: native and pinned in alternation, so a slow spell of the machine hits both
    for slug, tuning in (("fastvlm_gemma", "lora"), ("fastvlm_qwen2", "full")):
        rates = {"native": [], "pinned": []}
        for _ in range(3):
            rates["native"].append(child("train", slug, tuning, env=kernel_env())["rate"])
            rates["pinned"].append(child("train", slug, tuning, env=kernel_env(**CPU_KERNEL_ENV))["rate"])
        nat, pin = statistics.median(rates["native"]), statistics.median(rates["pinned"])
        rows["dispatch_speed"].append(
            {
                "backbone": slug,
                "tuning": tuning,
                "batch": params.train.batch_size,
                "runs": 3,
                "native_samples_per_s": nat,
                "pinned_samples_per_s": pin,
                "pinned_over_native": pin / nat,
            }
        )


def bench_pretrain(params, rows, slug: str = "fastvlm_gemma", n: int = 30, rounds: int = 3):
    """What a pre-training step costs, stage by stage: the kernels pinned, with MKL's products at
    one thread and at two and with numpy's OpenBLAS's (``tokenfocus.gemm``, the Gemma recipe's
    ``pretrain.gemm``), MKL's AVX2 branch (a pin on Intel CPUs only: docs/benchmarks.md section 7)
    and the host's own dispatch, in alternation; and what the recipe's steps then cost
    (``recipe_cpu_min``)."""
    from tokenfocus.env import CPU_KERNEL_ENV

    pinned = kernel_env(**CPU_KERNEL_ENV)
    settings = {
        "pinned, MKL": (pinned, 1, "mkl"),
        "pinned, MKL, two threads": (pinned, 2, "mkl"),
        # as portable as MKL's pinned branch: numpy's OpenBLAS on its pinned Haswell kernels
        "pinned, GEMMs on OpenBLAS (pretrain.gemm: openblas)": (pinned, 1, "openblas"),
        "MKL_CBWR=AVX2,STRICT, the rest pinned": (
            kernel_env(**(CPU_KERNEL_ENV | {"MKL_CBWR": "AVX2,STRICT"})),
            1,
            "mkl",
        ),
        "native (host dispatch)": (kernel_env(), 1, "mkl"),
    }
    cfg = params.pretrain_for(slug)
    steps = {"tower": cfg.tower_steps, "pairs": cfg.steps, "elements": cfg.element_steps}
    for stage, recipe in steps.items():
        got = {name: [] for name in settings}
        for _ in range(rounds):
            for name, (env, threads, gemm) in settings.items():
                got[name].append(
                    children(1, stage, slug, str(n), str(threads), gemm, env=env, code=PRETRAIN_CHILD)[0]
                )
        for name, runs in got.items():
            step = statistics.median(r["step_cpu_s"] for r in runs)
            draw = statistics.median(r["draw_cpu_s"] for r in runs)
            rows["pretrain"].append(
                {
                    "stage": stage,
                    "setting": name,
                    "threads": settings[name][1],
                    "steps_timed": n,
                    "runs": rounds,
                    "step_cpu_s": step,
                    "step_wall_s": statistics.median(r["step_wall_s"] for r in runs),
                    "drawing_cpu_s": draw,
                    "drawing_share": draw / step,
                    "recipe_steps": recipe,
                    "recipe_cpu_min": step * recipe / 60,
                }
            )


def pretrain_section(rows: dict) -> str:
    """Section 10 of docs/benchmarks.md, from :func:`bench_pretrain`'s rows."""
    return section(
        10,
        "Pre-training: what a step costs under the pins",
        "Each stage of the Gemma base's shipped curriculum (`pretrain@fastvlm_gemma`: the tower as a "
        "classifier, questions with the tower frozen, element questions) run for a few steps from "
        "the random base, in a process of its own, its AdamW as the recipe sets it, under five "
        "settings in alternation (medians): the pinned kernels with MKL's products at one thread "
        "and at two; the pinned kernels with torch's matrix products and convolutions on numpy's "
        "OpenBLAS (`tokenfocus.gemm`, its Haswell kernels: as portable), which the shipped recipe "
        "runs (`pretrain.gemm: openblas`); MKL's AVX2 branch; and the host's dispatch. "
        "`step_cpu_s` counts every thread's CPU time (what the 60 CPU-minute budget counts), "
        "`step_wall_s` the clock's. `drawing_cpu_s`: the same steps' scenes drawn alone, which no "
        "kernel setting moves. `recipe_cpu_min`: the step's cost times the recipe's steps, without "
        "the checks between stages. Only the pinned rows are portable: MKL's AVX2 branch computes "
        "other bits on another vendor's CPU, and the host's own dispatch other bits on each host "
        "(section 7), so a base pre-trained with either would not be reproduced elsewhere.",
        rows["pretrain"],
    )


#: One backbone's fine-tuning steps or scoring pass as the pipeline runs them (its train params,
#: one thread, its trained model where there is one), on torch's own products or OpenBLAS's
#: (``train.gemm`` / ``score.gemm``): CPU and wall seconds, and what scoring answered.
GEMM_CHILD = r"""
import dataclasses, json, sys, time
from pathlib import Path
from tokenfocus.env import apply_env
apply_env()
import torch
from tokenfocus.config import load_params
mode, slug, gemm, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
p = load_params()
trained = Path(p.train.out) / slug / "model"  # make run's fine-tuned model, where there is one
p.train = dataclasses.replace(p.train, gemm=gemm, steps=10**6, out="/tmp/tokenfocus-bench")
answers = []
if mode == "train":
    from tokenfocus.train import Trainer
    tr = Trainer(slug, p, out="/tmp/tokenfocus-bench/gemm-" + slug)
    tr._load_data(); tr.setup()
    with tr.products():
        tr._loss(*tr._batch(0, 0)[:2], 0)["loss"].backward(); tr.opt.zero_grad()  # warm-up
        cpu, wall = time.process_time(), time.perf_counter()
        for step in range(1, n + 1):
            out = tr._loss(*tr._batch(step, 0)[:2], step); out["loss"].backward(); tr.opt.step(); tr.opt.zero_grad()
        cpu, wall = (time.process_time() - cpu) / n, (time.perf_counter() - wall) / n
else:
    from tokenfocus.evalmuse import load_records
    from tokenfocus.gemm import backbone_products
    from tokenfocus.images import load_images
    from tokenfocus.scoring import Scorer
    recs = load_records("data/train_list.json")[:n]
    imgs = load_images("data/images", [r.img_path for r in recs])
    args = [[imgs[r.img_path] for r in recs], [r.prompt for r in recs], [[e.key for e in r.elements] for r in recs]]
    s = Scorer.load(trained if trained.exists() else slug, threads=p.score.threads, grounding=p.score.grounding)
    with backbone_products(gemm, p.score.threads, s.model):
        s(*[a[:2] for a in args])  # warm-up
        cpu, wall = time.process_time(), time.perf_counter()
        results = s(*args)
        cpu, wall = (time.process_time() - cpu) / n, (time.perf_counter() - wall) / n
    answers = [[r.score, *r.elements.values()] for r in results]
print(json.dumps({"cpu_s": cpu, "wall_s": wall, "answers": answers}))
"""


def bench_gemm(params, rows, steps: int = 30, pairs: int = 64, rounds: int = 3):
    """Each default backbone's fine-tuning step and scoring pass on torch's own products (MKL's
    pinned branch) and on numpy's OpenBLAS (``train.gemm`` / ``score.gemm``: what the pipeline
    runs), in alternation, one thread, medians of ``rounds``; and how far the two BLAS's answers
    lie apart on the same weights."""
    for slug in params.backbones:
        for mode, n in (("train", steps), ("score", pairs)):
            got = {"mkl": [], "openblas": []}
            for _ in range(rounds):
                for gemm in got:
                    got[gemm].append(children(1, mode, slug, gemm, str(n), code=GEMM_CHILD)[0])
            cpu = {g: statistics.median(r["cpu_s"] for r in runs) for g, runs in got.items()}
            a, b = got["mkl"][0]["answers"], got["openblas"][0]["answers"]
            rows["gemm"].append(
                {
                    "backbone": slug,
                    "stage": mode,
                    "per": "step" if mode == "train" else "pair",
                    "timed": n,
                    "runs": rounds,
                    "mkl_cpu_s": cpu["mkl"],
                    "openblas_cpu_s": cpu["openblas"],
                    "openblas_wall_s": statistics.median(r["wall_s"] for r in got["openblas"]),
                    "cpu_ratio": cpu["openblas"] / cpu["mkl"],
                    "max_abs_diff": max(
                        (abs(x - y) for u, v in zip(a, b, strict=True) for x, y in zip(u, v, strict=True)),
                        default=None,
                    ),  # fmt: skip
                }
            )


def gemm_section(rows: dict) -> str:
    """Section 11 of docs/benchmarks.md, from :func:`bench_gemm`'s rows."""
    return section(
        11,
        "Fine-tuning and scoring on MKL or OpenBLAS (`train.gemm`, `score.gemm`)",
        "Each default backbone as the pipeline runs it (its train params, one thread, its fine-tuned "
        "model where `make run` left one, else its base), in a process of its own: a fine-tuning "
        "step (CPU seconds, the batch's drawing and loading included) and the scoring of the "
        "benchmark's first pairs with their elements (CPU seconds a pair, the grounding's views "
        "included), on torch's own products (MKL's pinned branch) and on numpy's OpenBLAS "
        "(`tokenfocus.gemm`, what the pipeline runs), in alternation. `cpu_ratio`: OpenBLAS's CPU "
        "time over MKL's. `max_abs_diff`: scoring's largest difference between the two, over the "
        "1-5 scores and the element P(yes), on the same weights.",
        rows["gemm"],
    )


def bench_grounding(params, rows, n: int = 128):
    """The cost of grounded spatial and counting elements: the same pairs scored with every element
    asked, and with the spatial ones read from where their objects stand and the counting ones from
    the parts of the image as well (`score.grounding`)."""
    from tokenfocus.evalmuse import parse_element_key
    from tokenfocus.scoring import Scorer

    recs, imgs = sample(params, n)
    prompts, els = [r.prompt for r in recs], [[e.key for e in r.elements] for r in recs]
    spatial = [sum(parse_element_key(k).category == "spatial" for k in row) for row in els]
    counting = [sum(parse_element_key(k).category == "counting" for k in row) for row in els]
    for slug, bb in params.backbones.items():
        s = Scorer.load(bb.source, batch_size=params.score.batch_size, grounding=params.score.grounding)
        grounding = s.grounding

        def run(cfg, s=s):
            s.grounding = cfg
            return s.score_pairs(imgs, prompts, els)

        once = dataclasses.replace(grounding, mirror_categories=[])
        t_asked, t_grounded, ratios = paired_times(lambda: run(None), lambda g=once: run(g))
        # and the mirrored view on top (`score.grounding.mirror_categories`), as the pipeline scores
        t_once, t_mirrored, _ = paired_times(lambda g=once: run(g), lambda g=grounding: run(g))
        rows["grounding"].append(
            {
                "backbone": slug,
                "pairs": len(recs),
                "pairs_with_relation": sum(1 for k in spatial if k),
                "pairs_with_count": sum(1 for k in counting if k),
                "elements": sum(len(row) for row in els),
                "cuts": len(grounding.cuts),
                "runs": RUNS,
                "asked_s": t_asked,
                "grounded_s": t_grounded,
                "cost": t_grounded / t_asked,
                "cost_range": f"{min(1 / r for r in ratios):.2f}-{max(1 / r for r in ratios):.2f}",
                "mirrored_s": t_mirrored,
                "mirror_cost": t_mirrored / t_once,
            }
        )


def grounding_section(rows: dict) -> str:
    """Section 8 of docs/benchmarks.md, from :func:`bench_grounding`'s rows."""
    return section(
        8,
        "Spatial and counting elements read from parts of the image: what it costs",
        "The benchmark's first pairs, each with all its elements, scored with every element asked "
        "(`asked_s`) and with the spatial and counting ones read from parts of the image "
        "(`grounded_s`: per pair with a relation, each object asked on both parts of the image at "
        "every cut across the relation's axis; per pair with a count, the counted object and one "
        "to four of it asked on each band between the cuts, across and down, and on each of the "
        "image's four cells; `score.grounding`), the two "
        "in alternation on the shipped bases. `cost` is the ratio of the medians, `cost_range` the "
        "lowest and highest of one alternating pair. `mirrored_s`: as `grounded_s`, with the "
        "objects, colours, sizes and counts asked on the mirrored image too "
        "(`score.grounding.mirror_categories`, as the pipeline scores), timed in alternation with "
        "it; `mirror_cost` the ratio of the two medians of that alternation. What they buy: docs/styles.md.",
        rows["grounding"],
    )


def dispatch_section(rows: dict) -> str:
    """Section 7 of docs/benchmarks.md, from :func:`bench_dispatch`'s rows."""
    return (
        "\n## 7. CPU kernels pinned to one code path: which variable changes the bits, and what pinning costs\n\n"
        + f"Machine: {MACHINE}.\n\n"
        + "`tokenfocus golden` (one forward and backward of the Gemma base through the training loss) "
        + "under each setting (tokenfocus/env.py); `native` is what an unpinned machine computes, and "
        + "differs by host. `OPENBLAS_CORETYPE` alone leaves the pass as it is: it pins numpy's "
        + "BLAS (the stacker, the logistic fit), which the pass does not use.\n\n"
        + table(rows["dispatch_bits"])
        + "\nThe CPU's vendor: MKL picks its code by asking whether the CPU is an Intel one. A shim "
        + "preloaded into the golden pass answers the other way (tokenfocus/golden.py), so one host "
        + "computes what the other vendor's CPUs compute; on an AMD host, the shim claiming Intel "
        + "reproduced an Intel host's bits exactly. MKL's `AVX2` branch is no pin across vendors "
        + "(a non-Intel CPU falls back to its AUTO branch); its `COMPATIBLE` branch is:\n\n"
        + table(rows["dispatch_vendor"])
        + "\nTraining throughput (30 steps, one process each, native and pinned in alternation; medians):\n\n"
        + table(rows["dispatch_speed"])
    )


def table(rows: list[dict]) -> str:
    if not rows:
        return "_none_\n"
    keys = list(rows[0])
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    return (
        "| "
        + " | ".join(keys)
        + " |\n|"
        + "---|" * len(keys)
        + "\n"
        + "".join("| " + " | ".join(fmt(r[k]) for k in keys) + " |\n" for r in rows)
    )


def main() -> None:
    apply_env()
    torch.set_num_threads(2)
    params = load_params()
    rows = {"overall": [], "elements": [], "scaling": [], "train": [], "score_memory": [], "dtype": []}
    rows |= {
        "dispatch_bits": [],
        "dispatch_vendor": [],
        "dispatch_speed": [],
        "shared": [],
        "train_shared": [],
        "grounding": [],
        "side_by_side": [],
        "pretrain": [],
        "gemm": [],
    }
    if sys.argv[1:] == ["--dispatch"]:
        bench_dispatch(params, rows)
        return splice(7, dispatch_section(rows), rows, ("dispatch_bits", "dispatch_vendor", "dispatch_speed"))
    if sys.argv[1:] == ["--grounding"]:
        bench_grounding(params, rows)
        return splice(8, grounding_section(rows), rows, ("grounding",))
    if sys.argv[1:] == ["--side-by-side"]:
        bench_side_by_side(params, rows)
        return splice(9, side_by_side_section(rows), rows, ("side_by_side",))
    if sys.argv[1:] == ["--pretrain"]:
        bench_pretrain(params, rows)
        return splice(10, pretrain_section(rows), rows, ("pretrain",))
    if sys.argv[1:] == ["--gemm"]:
        bench_gemm(params, rows)
        return splice(11, gemm_section(rows), rows, ("gemm",))
    bench_overall(params, rows)
    bench_elements(params, rows)
    bench_shared(params, rows)
    bench_train_shared(params, rows)
    bench_scaling(params, rows)
    bench_dtype(params, rows)
    bench_memory(params, rows)
    bench_dispatch(params, rows)
    bench_grounding(params, rows)
    bench_side_by_side(params, rows)
    bench_pretrain(params, rows)
    bench_gemm(params, rows)
    timing = Path("eval/pipeline_timing.json")
    text = (
        f"# Benchmarks (generated by `make bench`)\n\nMachine: {MACHINE}. Models: the default tiny backbones "
        f"(the built bases, not fine-tuned; speed does not depend on the weights). Times are medians of {RUNS} runs after a warm-up.\n\n"
        "## 1. Overall scoring throughput vs a per-pair `generate()` baseline\n\n"
        + table(rows["overall"])
        + "\n## 2. Element scoring: prefix reuse vs one full forward per question (16 images)\n\n"
        + f"The two paths run in alternation, {ELEMENT_RUNS} times each; `speedup` is the ratio of "
        + "their medians, `speedup_range` the lowest and highest ratio of one alternating pair.\n\n"
        + table(rows["elements"])
        + "\n### One image prefix per pair: the overall and the element questions (tiny Qwen2-VL)\n\n"
        + "`today`: the overall question run whole, then the element questions from a prefix of their "
        + "own (the image through the tower and the prefill twice per pair). `shared`: the image once, "
        + "then the overall question, and the element questions' shared words, from its cache "
        + "(`Scorer.shared`, what scoring runs). Target: at least 1.6x at 256 image tokens, and no "
        + "output changed beyond 1e-4 (`max_abs_diff`: score probabilities and element P(yes)).\n\n"
        + table(rows["shared"])
        + "\n## 3. Training throughput and peak RSS (one process each)\n\n"
        + table(rows["train"])
        + "\n### One image prefix per pair in training (tiny Qwen2-VL, full fine-tuning)\n\n"
        + "One step of the focus loss and its backward over a batch of pairs, each with its overall "
        + "and one element question. `per_row`: the image through the tower and the prefill once per "
        + "question row; `shared`: once per pair, both questions from its cache (what training runs).\n\n"
        + table(rows["train_shared"])
        + "\n### Scoring peak RSS (256 pairs with elements)\n\n"
        + table(rows["score_memory"])
        + "\n## 4. The default pipeline (`make run`)\n\n"
        + (
            table(json.loads(timing.read_text())["stages"]) + f"\nTotal `dvc repro`: "
            f"{json.loads(timing.read_text())['total_s']:.0f} s\n"
            if timing.exists()
            else "_Run `make run` first._\n"
        )
        + "\n## 5. Scaling: scoring time vs dataset size\n\n"
        + table(rows["scaling"])
        + "\n## 6. bf16 vs float32 (scores and element P(yes) of 64 pairs)\n\n"
        + "bf16 is a per-backbone `dtype` in params.yaml (it sets the training dtype too); the default "
        + "stays float32 unless this row "
        + "shows both a speed-up and a drift well inside the tolerance (0.01 on the 1-5 score).\n\n"
        + table(rows["dtype"])
        + dispatch_section(rows)
        + grounding_section(rows)
        + side_by_side_section(rows)
        + pretrain_section(rows)
        + gemm_section(rows)
    )
    for extra in (Path("docs/dp-bench.md"), Path("docs/retrain-bench.md"), Path("docs/loadtest.md")):
        if extra.exists():
            text += "\n" + extra.read_text()
    Path("docs").mkdir(exist_ok=True)
    Path("docs/benchmarks.md").write_text(text)
    Path("eval").mkdir(exist_ok=True)
    Path("eval/benchmarks.json").write_text(json.dumps(rows, indent=1))
    print(text)


if __name__ == "__main__":
    main()
