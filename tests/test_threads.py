"""One Pipeline, many threads: every request returns what it returns when run alone."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from seer.errors import UsageError
from seer.runtime.pipeline import Pipeline

# different prompts, seeds, batches and two resolutions, so that requests of one shape share buffers
# and requests of the other shape replace them
REQUESTS = [
    dict(prompt="a red circle at the top left", seed=1, height=64, width=64),
    dict(prompt="a blue square", seed=2, height=96, width=64),
    dict(prompt=["a green triangle", "a small red square"], seed=3, height=64, width=64),
    dict(prompt="a yellow circle at the bottom right", seed=4, height=96, width=64),
    dict(prompt="a purple square at the center", seed=5, height=64, width=64, order=2),
    dict(prompt="a blue circle", seed=6, height=96, width=64, no_cache=True),
    dict(prompt="a red triangle", seed=7, height=64, width=64),
    dict(prompt="an orange square", seed=8, height=96, width=64),
]
COMMON = dict(steps=10, interval=3, warmup=2, return_latents=True)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_concurrent_requests_equal_each_alone(engine_modules, backend):
    alone = Pipeline.load(engine_modules, backend=backend, trust_torch_programs=True)
    expected = [alone(**COMMON, **r).latents for r in REQUESTS]

    pipe = Pipeline.load(engine_modules, backend=backend, trust_torch_programs=True)
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def worker(k: int) -> None:
        try:
            start.wait()
            if k == 0:
                pipe.warmup(height=96, width=64)  # warm-up goes through the same lock
            for i in range(k, len(REQUESTS), 4):
                results[i] = pipe(**COMMON, **REQUESTS[i]).latents
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i, want in enumerate(expected):
        np.testing.assert_array_equal(results[i], want, err_msg=f"request {i}")
    assert not np.array_equal(expected[0], expected[6])  # the requests differ, so a mix-up would show


def test_a_request_started_from_on_step_is_refused_not_deadlocked(engine_modules):
    pipe = Pipeline.load(engine_modules)
    seen = []

    def on_step(i, full, latents):
        if i == 0:
            with pytest.raises(UsageError, match="one request at a time"):
                pipe("a blue square", steps=2)
            seen.append(i)

    pipe("a red circle", steps=3, on_step=on_step)
    assert seen == [0]
    assert pipe("a red circle", steps=2).image  # the lock was released
