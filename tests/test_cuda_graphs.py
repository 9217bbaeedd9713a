"""CUDA-graph bookkeeping (which inputs are staged, when a new graph is captured) on CPU tensors,
and the torch CUDA backend with and without CUDA graphs where a GPU is present."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seer.runtime.cuda_graphs import CudaGraphs

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (none on seer's CI)")


def test_small_inputs_are_staged_and_large_ones_keyed_by_address():
    graphs = CudaGraphs(torch, stream=None, stage_bytes=64)
    timesteps = torch.zeros(50, 2)
    factors = [torch.zeros(8, 1, 16, 64) for _ in range(3)]
    out = torch.zeros(1, 16, 64)

    def key(step, order):
        inputs = {"timestep": timesteps[step], **{f"factor_{i}": factors[j] for i, j in enumerate(order)}}
        return graphs.key("forecast", inputs, {"sample": out})

    # every step's timestep is another view (another address): staged, so the key does not change
    assert key(3, [0, 1, 2]) == key(40, [0, 1, 2])
    # rotated factor buffers are other addresses: another graph
    assert key(3, [0, 1, 2]) != key(3, [1, 2, 0])
    # another shape: another graph
    bigger = graphs.key("forecast", {"timestep": timesteps[0], "factor_0": torch.zeros(8, 1, 32, 64)}, {"sample": out})
    assert bigger != graphs.key("forecast", {"timestep": timesteps[0], "factor_0": factors[0]}, {"sample": out})
    # another output buffer: another graph
    assert graphs.key("x", {}, {"sample": out}) != graphs.key("x", {}, {"sample": out.clone()})


@needs_cuda
def test_torch_cuda_graphs_match_eager(engine_modules):
    from seer.runtime.pipeline import Pipeline

    kw = dict(seed=3, steps=12, interval=3, order=2, warmup=2, return_latents=True)
    eager = Pipeline.load(engine_modules, backend="torch", device="cuda", trust_torch_programs=True)
    graphed = Pipeline.load(engine_modules, backend="torch", device="cuda", cuda_graphs=True,
                            trust_torch_programs=True)
    ref = eager("a red circle at the top left", **kw).latents
    for _ in range(2):  # the second request replays the graphs captured by the first
        got = graphed("a red circle at the top left", **kw).latents
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    g = graphed.backend.graphs
    assert g.replays > g.captures > 0 and g.captures <= 12  # factors rotate among a few buffers
