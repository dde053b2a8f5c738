"""`make scale`: the dress rehearsal at EvalMuse-40K's shape, written to docs/scaling.md.

SynthMuse is generated at 4,000, 10,000 and 40,000 pairs, three quarters labelled in
``train_list.json`` (with per-annotator lists) and a quarter in ``test.json``, as EvalMuse-40K's
30,000 + 10,000. On each, the pipeline after fine-tuning runs as its CLI commands, each in its own
process: synth -> validate -> split -> score (every backbone) -> stack -> evaluate -> register ->
predict. Scoring uses the models fine-tuned by `make run` (fine-tuning keeps its step budget
whatever the data size; the table reports the epochs that budget would be). Each stage's wall time
and peak RSS (the stage process's own, through a small launcher: see ``LAUNCH``) are recorded.

Targets: every stage's seconds per pair within 1.3x from the smallest size to the largest, and no
stage above 4 GiB of peak RSS at the largest.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SIZES = (4000, 10000, 40000)
RATIO_TARGET, RSS_TARGET_GIB = 1.3, 4.0


def layout(n: int, work: Path, repo: Path, backbones: list[str] | None = None) -> Path:
    """A project folder for ``n`` pairs: the repository's params, its data generated at that size,
    every output inside the folder, and the trained models and bases read from ``repo``."""
    d = work / str(n)
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    p = yaml.safe_load((repo / "params.yaml").read_text())
    ipp = p["synth"]["images_per_prompt"]
    p["synth"]["n_prompts"] = max(2, round(0.75 * n / ipp))
    p["synth"]["n_test_prompts"] = max(1, round(0.25 * n / ipp))
    p["synth"]["styled_copies"] = 0  # fine-tuning's redrawings: the harness scores, never fine-tunes
    p["stack"]["fit_styled"] = 0  # so the stacker fits on val alone, as on real data
    if backbones:
        p["backbones"] = {k: v for k, v in p["backbones"].items() if k in backbones}
    for entry in p["backbones"].values():
        entry["source"] = str((repo / entry["source"]).resolve())
    p["train"]["out"] = str((repo / p["train"]["out"]).resolve())
    p["tracking"]["quality_floor"] = {}  # scale, not quality: register whatever scores
    # a LoRA adapter names its base relative to the project folder (models/base/<slug>)
    (d / "models").mkdir()
    (d / "models" / "base").symlink_to((repo / "models" / "base").resolve(), target_is_directory=True)
    (d / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    return d


def stages(d: Path) -> list[tuple[str, list[str]]]:
    """(name, command) of every stage after fine-tuning, in pipeline order."""
    tf = str(Path(sys.executable).with_name("tokenfocus"))
    p = yaml.safe_load((d / "params.yaml").read_text())
    out = [("synth", [tf, "synth"]), ("validate", [tf, "validate"]), ("split", [tf, "split"])]
    out += [(f"score@{slug}", [tf, "score", "-b", slug]) for slug in p["backbones"]]
    out += [("stack", [tf, "stack"]), ("evaluate", [tf, "report"]), ("register", [tf, "register"])]
    data = p["validate"]["data"]
    out.append(("predict", [tf, "predict", "--input", f"{data}/test.json", "--images", f"{data}/images"]))
    return out


#: Runs one stage and writes its peak RSS (kB). Why a launcher: Linux keeps a process's RSS
#: high-water mark across exec, and a child forked (or vforked) from a large process starts from
#: the parent's; this small process is the stage's only parent, so the figure is the stage's own.
LAUNCH = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call(sys.argv[2:])\n"
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
    "sys.exit(code)\n"
)


def measure(cmd: list[str], cwd: Path, log) -> tuple[float, float]:
    """Run one stage's process; its wall seconds and peak RSS (GiB)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}"}
    env.pop("MLFLOW_RUN_ID", None)
    rss_file = cwd / ".peak_rss_kb"
    t = time.perf_counter()
    code = subprocess.call(
        [sys.executable, "-c", LAUNCH, str(rss_file), *cmd],
        cwd=cwd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    seconds = time.perf_counter() - t
    if code:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {code}) in {cwd}; see its log")
    return seconds, int(rss_file.read_text()) / 2**20  # kB -> GiB


EPOCHS = """
import json, sys
from tokenfocus.config import load_params
from tokenfocus.predictions import split_records
p = load_params("params.yaml")
n = len(split_records(p, "train"))
out = {}
for slug in p.backbones:
    c = p.train_for(slug)
    out[slug] = c.steps * c.batch_size * c.grad_accum / max(1, n)
print(json.dumps(out))
"""


def epochs(d: Path) -> dict[str, float]:
    """The epochs over this size's train split that the fine-tuning step budget amounts to (read
    in a child process, in the size's folder, so the harness itself never loads torch)."""
    out = subprocess.run([sys.executable, "-c", EPOCHS], cwd=d, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(sizes=SIZES, work: Path | None = None, repo: Path = ROOT, backbones=None) -> dict:
    """Every stage at every size; returns ``{"rows": [...], "epochs": {...}}``."""
    work = work or repo / "work" / "scale"
    rows, eps = [], {}
    for n in sizes:
        d = layout(n, work, repo, backbones)
        with open(d / "stages.log", "w") as log:
            for name, cmd in stages(d):
                seconds, rss = measure(cmd, d, log)
                rows.append(
                    {
                        "stage": name,
                        "pairs": n,
                        "seconds": seconds,
                        "s_per_pair": seconds / n,
                        "peak_rss_gib": rss,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
        eps[n] = epochs(d)
    return {"rows": rows, "epochs": eps}


def verdict(rows: list[dict]) -> list[dict]:
    """Per stage: cost per pair at the largest size over the smallest, and the largest's RSS."""
    out = []
    for stage in dict.fromkeys(r["stage"] for r in rows):
        mine = sorted((r for r in rows if r["stage"] == stage), key=lambda r: r["pairs"])
        ratio = mine[-1]["s_per_pair"] / mine[0]["s_per_pair"]
        rss = mine[-1]["peak_rss_gib"]
        out.append(
            {
                "stage": stage,
                "s_per_pair_ratio": round(ratio, 2),
                "peak_rss_gib_at_largest": rss,
                "meets": "yes" if ratio <= RATIO_TARGET and rss <= RSS_TARGET_GIB else "no",
            }
        )
    return out


def write(result: dict, md: Path, png: Path) -> str:
    """docs/scaling.md (tables) and its plot."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench import MACHINE, table

    rows = result["rows"]
    sizes = sorted({r["pairs"] for r in rows})
    plot(rows, png)
    eps = [{"pairs": n, **{k: round(v, 2) for k, v in e.items()}} for n, e in result["epochs"].items()]
    text = (
        "# Scaling: the pipeline at EvalMuse-40K's shape (generated by `make scale`)\n\n"
        f"Machine: {MACHINE}. SynthMuse at {', '.join(f'{n:,}' for n in sizes)} pairs (three quarters "
        "labelled, a quarter in test.json, as EvalMuse-40K's 30,000 + 10,000). Each stage is its own "
        "process; `peak_rss_gib` is that process's peak resident memory. Scoring uses the models "
        "that `make run` fine-tuned.\n\n"
        + table(rows)
        + f"\n![cost per pair and peak RSS against pairs]({png.name})\n\n"
        + f"## Against the targets (s/pair within {RATIO_TARGET}x from {sizes[0]:,} to {sizes[-1]:,}; "
        + f"peak RSS at most {RSS_TARGET_GIB:g} GiB at {sizes[-1]:,})\n\n"
        + table(verdict(rows))
        + "\n## Fine-tuning: its step budget in epochs of each size's train split\n\n"
        + table(eps)
    )
    md.write_text(text)
    return text


def plot(rows: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for stage in dict.fromkeys(r["stage"] for r in rows):
        mine = sorted((r for r in rows if r["stage"] == stage), key=lambda r: r["pairs"])
        xs = [r["pairs"] for r in mine]
        a.plot(xs, [1000 * r["s_per_pair"] for r in mine], marker="o", label=stage)
        b.plot(xs, [r["peak_rss_gib"] for r in mine], marker="o", label=stage)
    for ax, label in ((a, "ms per pair"), (b, "peak RSS (GiB)")):
        ax.set_xscale("log")
        ax.set_xlabel("pairs")
        ax.set_ylabel(label)
    a.set_yscale("log")
    b.axhline(RSS_TARGET_GIB, color="grey", linestyle="--")
    a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--work", type=Path, default=ROOT / "work" / "scale")
    args = ap.parse_args()
    result = run(args.sizes, args.work)
    (args.work / "scaling.json").write_text(json.dumps(result, indent=1))
    print(write(result, ROOT / "docs" / "scaling.md", ROOT / "docs" / "scaling.png"))


if __name__ == "__main__":
    main()
