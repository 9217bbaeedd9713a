"""End to end on flux-tiny: export, then run, against diffusers' FluxPipeline as the oracle."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from seer.export.tiny import MAX_SEQUENCE_LENGTH
from seer.runtime.pipeline import Pipeline

PROMPT = "a red circle at the top left"
SIZE = 128
STEPS = 8


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def diffusers_latents(tiny_model):
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(tiny_model, dtype=torch.float32)
    out = pipe(PROMPT, height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=3.5,
               max_sequence_length=MAX_SEQUENCE_LENGTH, generator=torch.Generator("cpu").manual_seed(7), output_type="latent")
    return out.images.numpy()


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_no_cache_matches_diffusers(engine_modules, diffusers_latents, backend):
    pipe = Pipeline.load(engine_modules, backend=backend, trust_torch_programs=True)
    g = pipe(PROMPT, seed=7, steps=STEPS, height=SIZE, width=SIZE, no_cache=True, return_latents=True)
    # float32 end to end; the only differences are kernel order (ONNX Runtime vs torch) and the
    # rotary tables rounded to float32 before use instead of after.
    assert rel_err(g.latents, diffusers_latents) < 1e-4
    assert g.image.size == (SIZE, SIZE)


def _trajectory(pipe, **kw):
    seen = []
    g = pipe(PROMPT, seed=3, steps=20, height=SIZE, width=SIZE, return_latents=True,
             on_step=lambda i, full, lat: seen.append((full, pipe.backend.numpy(lat).copy())), **kw)
    return g, seen


def test_cached_onnxruntime_matches_torch_step_by_step(engine_modules):
    ort_g, ort_steps = _trajectory(Pipeline.load(engine_modules, backend="onnxruntime"), interval=4, order=2, warmup=2)
    pt_g, pt_steps = _trajectory(Pipeline.load(engine_modules, backend="torch", trust_torch_programs=True), interval=4, order=2, warmup=2)
    assert [f for f, _ in ort_steps] == [f for f, _ in pt_steps] == list(ort_g.schedule.full)
    assert not all(ort_g.schedule.full)
    for i, ((_, a), (_, b)) in enumerate(zip(ort_steps, pt_steps)):
        assert rel_err(a, b) < 1e-4, f"step {i}"


def test_forecast_steps_skip_the_full_graph(engine_modules):
    pipe = Pipeline.load(engine_modules)
    calls = []
    run = pipe.backend.run
    pipe.backend.run = lambda graph, *a, **k: (calls.append(graph), run(graph, *a, **k))[1]
    g = pipe(PROMPT, steps=50, interval=6, order=1, warmup=3)
    assert g.schedule.full_steps == [0, 1, 2, 8, 14, 20, 26, 32, 38, 44]
    assert calls.count("full") == 10 and calls.count("forecast") == 40


def test_forecast_is_close_to_the_full_run(engine_modules):
    pipe = Pipeline.load(engine_modules)
    ref = pipe(PROMPT, steps=20, no_cache=True, return_latents=True).latents
    cached = pipe(PROMPT, steps=20, interval=3, order=1, warmup=3, return_latents=True).latents
    assert 0 < rel_err(cached, ref) < 0.5


def test_two_requests_in_a_row_equal_each_alone(engine_modules):
    pipe = Pipeline.load(engine_modules)
    kw = dict(steps=12, interval=3, order=2, warmup=2, return_latents=True)
    a_alone = pipe("a blue square", seed=1, **kw).latents
    b_after_a = pipe("a green triangle", seed=2, **kw).latents
    b_alone = Pipeline.load(engine_modules)("a green triangle", seed=2, **kw).latents
    np.testing.assert_array_equal(b_after_a, b_alone)
    assert not np.array_equal(a_alone, b_alone)


def test_lite_cache_runs_and_forecasts_the_output(engine_lite):
    pipe = Pipeline.load(engine_lite)
    ref = pipe(PROMPT, steps=20, no_cache=True, return_latents=True).latents
    cached = pipe(PROMPT, steps=20, interval=3, order=1, warmup=3, return_latents=True).latents
    assert np.isfinite(cached).all() and 0 < rel_err(cached, ref) < 0.5
    ops = {n.op_type for n in onnx.load(engine_lite / "forecast.onnx").graph.node}
    assert not ops & {"MatMul", "Gemm", "Softmax"}


def test_forecast_graph_runs_no_attention_and_no_mlp(engine_modules):
    full = onnx.load(engine_modules / "full.onnx")
    fc = onnx.load(engine_modules / "forecast.onnx")
    fc_ops = [n.op_type for n in fc.graph.node]
    assert "Softmax" not in fc_ops and "Softmax" in {n.op_type for n in full.graph.node}
    # x_embedder, 2 linears per conditioning MLP (timestep, pooled text, and guidance where the model
    # has it), the fused gates, norm_out's linear and proj_out
    guided = Pipeline.load(engine_modules).config["guidance"]
    assert sum(op in ("MatMul", "Gemm") for op in fc_ops) == 1 + 2 * (3 if guided else 2) + 3
    size = lambda m: sum(np.prod(t.dims) for t in m.graph.initializer)  # noqa: E731
    assert size(fc) < 0.6 * size(full)


def test_pipeline_resizes_and_batches(engine_modules):
    pipe = Pipeline.load(engine_modules)
    g = pipe(["a red circle", "a blue square"], steps=4, height=64, width=96, interval=2, warmup=1)
    assert [im.size for im in g.images] == [(96, 64), (96, 64)]


@pytest.mark.parametrize("guidance", [3.5, 5.0])
def test_guidance_distilled_model_matches_diffusers(engine_guided, guided_model, guidance):
    """FLUX.1-dev's path (guidance embedding), on an untrained model of the flux-tiny layout."""
    from diffusers import FluxPipeline

    ref = FluxPipeline.from_pretrained(guided_model, dtype=torch.float32)(
        PROMPT, height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=guidance,
        max_sequence_length=MAX_SEQUENCE_LENGTH, generator=torch.Generator("cpu").manual_seed(7),
        output_type="latent").images.numpy()
    pipe = Pipeline.load(engine_guided)
    assert pipe.config["guidance"]
    g = pipe(PROMPT, seed=7, steps=STEPS, height=SIZE, width=SIZE, guidance_scale=guidance, no_cache=True,
             return_latents=True)
    assert rel_err(g.latents, ref) < 1e-4
    cached = pipe(PROMPT, seed=7, steps=STEPS, height=SIZE, width=SIZE, guidance_scale=guidance, interval=2,
                  order=1, warmup=2, return_latents=True)
    assert 0 < rel_err(cached.latents, ref) < 0.5


@pytest.mark.parametrize("engine", ["engine_modules", "engine_lite"])
def test_warmup_runs_every_graph(request, engine):
    """A warm-up that skips a graph leaves its first-run cost in the first timed request."""
    pipe = Pipeline.load(request.getfixturevalue(engine))
    ran, real_run = [], pipe.backend.run
    pipe.backend.run = lambda graph, *a, **kw: ran.append(graph) or real_run(graph, *a, **kw)
    pipe.warmup()
    assert set(ran) == set(pipe.manifest["graphs"])
    assert ran.count("forecast") >= 1 and ran.count("full") >= 2  # a Taylor update between full steps
