"""`make loadtest`: a soak of the served champion on loopback, good and bad requests mixed.

500 requests from 50 concurrent clients (``--requests``, ``--clients``), one record each; only
127.0.0.1 is contacted. Every good request must come back 200 with a score, every bad one 400 with
a message that names the problem. Reports the p50/p95 latency and the server's RSS (the whole
process tree: the `mlflow` launcher, uvicorn and its workers) before and after the soak. The aims
(issue 16): p95 under 1 s at 50 concurrent on 2 cores, RSS growth under 10%. Writes
docs/loadtest.md; exits 1 if a request got a wrong answer.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tokenfocus.config import load_params  # noqa: E402
from tokenfocus.env import apply_env  # noqa: E402
from tokenfocus.serving.server import free_port, serve_threads, start  # noqa: E402

# Bad kinds, each with the words the 400's message must contain.
BAD = {
    "empty prompt": "missing or empty 'prompt'",
    "path outside the allowed root": "outside the allowed root",
    "not an image": "cannot decode image",
    "neither base64 nor a path": "neither valid base64 nor a path",
}


def payloads(params, n: int) -> list[tuple[str, dict]]:
    """``n`` (kind, body) pairs: 3 good for every 2 bad, the bad ones cycling through BAD."""
    data = Path(params.validate.data)
    test = json.loads((data / "test.json").read_text())
    bad_kinds = list(BAD)
    out = []
    for i in range(n):
        r = test[i % len(test)]
        img = base64.b64encode((data / "images" / r["img_path"]).read_bytes()).decode()
        good = {"prompt": r["prompt"], "image": img, "elements": list(r["element_score"])}
        if i % 5 < 3:
            out.append(("good", good))
            continue
        kind = bad_kinds[(i // 5 * 2 + i % 5 - 3) % len(bad_kinds)]
        rec = {
            "empty prompt": {**good, "prompt": ""},
            "path outside the allowed root": {**good, "image": "../../etc/passwd"},
            "not an image": {**good, "image": base64.b64encode(b"not a png" * 20).decode()},
            "neither base64 nor a path": {**good, "image": "@" * 100},
        }[kind]
        out.append((kind, rec))
    return [(k, {"dataframe_records": [rec]}) for k, rec in out]


def tree_rss(proc: psutil.Process) -> int:
    """Resident bytes of a process and all its descendants."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--out", default="docs/loadtest.md")
    ap.add_argument("--model-uri", default=None, help="default: models:/<name>@champion")
    args = ap.parse_args()
    apply_env()
    params = load_params()
    sc = params.serve
    server, url = start(params, port=free_port(), model_uri=args.model_uri)
    try:
        jobs = payloads(params, args.requests)
        # Warm-up: a few concurrent rounds of good requests, so every worker has scored (and
        # allocated its buffers) before the start RSS is read: growth is then what the soak adds.
        # Same concurrency as the soak: the batches, threads and allocator arenas it will use.
        good = [body for kind, body in jobs if kind == "good"][: args.clients]
        with ThreadPoolExecutor(args.clients) as pool:
            for _ in range(3):
                for r in pool.map(lambda b: requests.post(f"{url}/invocations", json=b, timeout=120), good):
                    r.raise_for_status()
        rss0 = tree_rss(psutil.Process(server.pid))

        def send(job):
            kind, body = job
            t = time.perf_counter()
            r = requests.post(f"{url}/invocations", json=body, timeout=120)
            dt = time.perf_counter() - t
            if kind == "good":
                ok = r.status_code == 200 and 1 <= r.json()["predictions"][0]["total_score"] <= 5
            else:
                ok = r.status_code == 400 and BAD[kind] in r.json().get("message", "")
            return kind, r.status_code, dt, ok

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(send, jobs))
        wall = time.perf_counter() - t0
        rss1 = tree_rss(psutil.Process(server.pid))
    finally:
        server.terminate()
        server.wait(timeout=30)

    def pct(xs, q):
        xs = sorted(xs)
        return xs[round(q * (len(xs) - 1))]

    good = [r for r in results if r[0] == "good"]
    bad = [r for r in results if r[0] != "good"]
    lat = [r[2] for r in results]
    good_errors = sum(1 for r in good if not r[3])
    bad_wrong = sum(1 for r in bad if not r[3])
    growth = (rss1 - rss0) / rss0
    threads = serve_threads(sc.threads, sc.workers)
    rows = [
        ("all", lat),
        ("good", [r[2] for r in good]),
        ("bad", [r[2] for r in bad]),
    ]
    table = "\n".join(
        f"| {name} | {len(xs)} | {statistics.median(xs):.3f} | {pct(xs, 0.95):.3f} | {max(xs):.3f} |"
        for name, xs in rows
    )
    text = (
        "## Load test (generated by `make loadtest`)\n\n"
        f"{len(results)} requests ({len(good)} good, {len(bad)} bad: "
        + ", ".join(f"{sum(1 for r in bad if r[0] == k)} {k}" for k in BAD)
        + f") from {args.clients} concurrent clients, one record each, against `mlflow models serve` "
        f"on 127.0.0.1: {sc.workers} worker(s) x {threads} torch thread(s), micro-batches of up to "
        f"{sc.max_batch} pairs, {psutil.cpu_count()} cores.\n\n"
        f"- good requests answered with an error: **{good_errors}**\n"
        f"- bad requests not answered 400 with a message naming the problem: **{bad_wrong}**\n"
        f"- throughput: {len(results) / wall:.1f} requests/s ({wall:.1f} s wall)\n"
        f"- server RSS (process tree): {rss0 / 2**20:.0f} MiB after warm-up, {rss1 / 2**20:.0f} MiB "
        f"after the soak ({growth:+.1%})\n\n"
        "| requests | n | p50 latency (s) | p95 latency (s) | max (s) |\n|---|---|---|---|---|\n"
        f"{table}\n\n"
        f"Aims: p95 under 1 s (all requests: {'met' if pct(lat, 0.95) < 1 else 'not met'}), "
        f"RSS growth under 10% ({'met' if growth < 0.10 else 'not met'}).\n"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 0 if good_errors == 0 and bad_wrong == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
