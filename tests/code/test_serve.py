"""The served model's micro-batcher and serve params (no server: see tests/pipeline for that)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tokenfocus.config import ConfigError, ServeConfig
from tokenfocus.serving.server import MicroBatcher, serve_command, serve_threads


class SlowDouble:
    """Doubles each image number; sleeps so that concurrent requests pile up behind it."""

    def __init__(self, fail_on: int | None = None):
        self.batches: list[int] = []
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def __call__(self, images, prompts, elements):
        with self.lock:
            self.batches.append(len(images))
        time.sleep(0.05)
        if self.fail_on in images:
            raise ValueError(f"cannot score {self.fail_on}")
        return [(i * 2, p, e) for i, p, e in zip(images, prompts, elements, strict=True)]


def _requests(n):
    # request k has k % 3 + 1 pairs, numbered so every answer can be traced to its request
    return [
        ([k * 10 + j for j in range(k % 3 + 1)], [f"p{k}"] * (k % 3 + 1), [[]] * (k % 3 + 1))
        for k in range(n)
    ]


def test_concurrent_requests_are_batched_and_each_gets_its_own_answers():
    fn = SlowDouble()
    batcher = MicroBatcher(fn, max_batch=8)
    reqs = _requests(24)
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda r: batcher(*r), reqs))
    for (images, prompts, _), got in zip(reqs, answers, strict=True):
        assert [a[0] for a in got] == [i * 2 for i in images]
        assert {a[1] for a in got} == set(prompts)
    assert sum(fn.batches) == sum(len(r[0]) for r in reqs)
    assert max(fn.batches) <= 8
    assert batcher.calls < len(reqs)  # some requests shared a forward pass


def test_a_lone_request_is_scored_at_once_and_max_batch_one_never_batches():
    fn = SlowDouble()
    assert MicroBatcher(fn, max_batch=16)([3], ["p"], [[]])[0][0] == 6
    fn = SlowDouble()
    batcher = MicroBatcher(fn, max_batch=1)
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda r: batcher(*r), [([k], ["p"], [[]]) for k in range(6)]))
    assert fn.batches == [1] * 6


def test_a_request_larger_than_max_batch_is_still_scored_whole():
    fn = SlowDouble()
    got = MicroBatcher(fn, max_batch=2)(list(range(5)), ["p"] * 5, [[]] * 5)
    assert [a[0] for a in got] == [0, 2, 4, 6, 8] and fn.batches == [5]


def test_an_error_reaches_every_request_of_its_batch_and_the_batcher_keeps_working():
    fn = SlowDouble(fail_on=10)
    batcher = MicroBatcher(fn, max_batch=64)

    def call(r):
        try:
            return batcher(*r)
        except ValueError as exc:
            return str(exc)

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(call, [([k * 10], ["p"], [[]]) for k in range(4)]))
    assert answers[1] == "cannot score 10"
    assert all(a == "cannot score 10" or a[0][0] == k * 20 for k, a in enumerate(answers))
    assert batcher([7], ["p"], [[]])[0][0] == 14


def test_serve_params_reach_the_command_line_and_environment():
    import dataclasses

    from tokenfocus.config import Params

    params = Params()
    p = dataclasses.replace(
        params, serve=dataclasses.replace(params.serve, workers=2, threads=0, max_batch=4)
    )
    cmd, env = serve_command(p, port=5099)
    assert cmd[cmd.index("--workers") + 1] == "2"
    assert env["TOKENFOCUS_SERVE_MAX_BATCH"] == "4"
    assert env["MALLOC_MMAP_THRESHOLD_"] == "1048576"  # flat RSS under a soak (serve_command)
    assert env["TOKENFOCUS_SERVE_THREADS"] == str(serve_threads(0, 2))
    assert serve_threads(3, 2) == 3


@pytest.mark.parametrize("key,value", [("workers", 0), ("max_batch", 0), ("threads", -1)])
def test_bad_serve_params_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"serve.{key} must be"):
        ServeConfig(**{key: value})
