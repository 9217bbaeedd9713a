"""NaN and Inf end in one NonFiniteError naming the step and the fix, never a black image."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from seer.errors import NonFiniteError, UsageError
from seer.runtime import finite
from seer.runtime.pipeline import Pipeline
from seer.runtime.samplers.flow_match import FlowMatchEuler
from seer.runtime.taylor import TaylorState

from cli_contract import one_line_error, run

# full at 0, 1, 3, 5, 7; forecast at 2, 4, 6
KW = dict(steps=8, interval=2, warmup=2, order=1, height=64, width=64)
CLI_KW = ["--steps", "8", "--interval", "2", "--warmup", "2", "--order", "1"]


def assert_cli_refuses(args, out, *needles):
    one_line_error(*run([*args, "--out", out]), *needles)
    assert not out.exists()


def poisoned(src, dst, graph):
    """A copy of an engine directory with the largest weight of `graph` set to NaN."""
    shutil.copytree(src, dst)
    model = onnx.load(dst / f"{graph}.onnx")
    init = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    values = numpy_helper.to_array(init).copy()
    values[...] = np.nan
    init.CopyFrom(numpy_helper.from_array(values, init.name))
    onnx.save(model, dst / f"{graph}.onnx")
    return dst


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e38", "60"])
def test_guidance_that_would_overflow_is_refused_up_front(engine_guided, tmp_path, value):
    assert_cli_refuses([engine_guided, "-p", "a red circle", "--guidance", value], tmp_path / "x.png",
                       f"guidance scale {float(value)}", "from 0 to 50")
    with pytest.raises(NonFiniteError):
        Pipeline.load(engine_guided)("a red circle", guidance_scale=float(value), **KW)


def test_negative_guidance_is_refused_and_the_documented_range_runs(engine_guided):
    pipe = Pipeline.load(engine_guided)
    with pytest.raises(UsageError, match="negative"):
        pipe("a red circle", guidance_scale=-1.0, **KW)
    for scale in (0.0, 50.0):
        assert np.isfinite(pipe("a red circle", guidance_scale=scale, return_latents=True, **KW).latents).all()


@pytest.mark.parametrize("graph,step,kind", [("full", 0, "full"), ("forecast", 2, "forecast")])
def test_a_graph_that_outputs_nan(engine_modules, tmp_path, graph, step, kind):
    d = poisoned(engine_modules, tmp_path / "engine", graph)
    with pytest.raises(NonFiniteError, match=f"{'full transformer' if kind == 'full' else 'the forecast'}"):
        Pipeline.load(d, verify=False)("a red circle", **KW)
    assert_cli_refuses([d, "-p", "a red circle", "--no-verify", *CLI_KW], tmp_path / "x.png",
                       f"step {step} of 8 (a {kind} step)")


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_a_non_finite_taylor_factor(engine_modules, tmp_path, monkeypatch, backend):
    update = TaylorState.update

    def overflowing(self, step, derive=True):
        update(self, step, derive)
        if step == 3:
            self.factors[1][...] = np.inf  # as a first-order factor overflowing its dtype would be
    monkeypatch.setattr(TaylorState, "update", overflowing)
    with pytest.raises(NonFiniteError, match=r"step 4 of 8 \(a forecast step\).*--factor-dtype fp32"):
        Pipeline.load(engine_modules, backend=backend, trust_torch_programs=True)("a red circle", **KW)
    assert_cli_refuses([engine_modules, "-p", "a red circle", "--backend", backend, "--trust-torch-programs", *CLI_KW], tmp_path / "x.png",
                       "step 4 of 8 (a forecast step)")


def test_a_non_finite_coefficient(engine_modules, tmp_path, monkeypatch):
    from seer.runtime import plan as plans
    coefficients = plans.forecast_coefficients
    def overflowing(k, valid, max_order):  # k**i / i! beyond float32 (as a long interval at a high order makes it)
        c = coefficients(k, valid, max_order)
        c[-1] = np.inf
        return c
    monkeypatch.setattr(plans, "forecast_coefficients", overflowing)
    with pytest.raises(NonFiniteError, match="coefficients are not finite at denoising step 2 of 8"):
        Pipeline.load(engine_modules)("a red circle", **KW)
    assert_cli_refuses([engine_modules, "-p", "a red circle", *CLI_KW], tmp_path / "x.png", "coefficients")


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_a_sampler_step_that_overflows(engine_modules, tmp_path, monkeypatch, backend):
    sigmas = FlowMatchEuler.sigmas

    def huge_last_step(self, steps, n):
        s = sigmas(self, steps, n)
        s[-1] = -np.finfo(np.float32).max  # the last dt * prediction is beyond float32
        return s
    monkeypatch.setattr(FlowMatchEuler, "sigmas", huge_last_step)
    with pytest.raises(NonFiniteError, match=r"latents became non-finite .* step 7 of 8 \(a full step\)"):
        Pipeline.load(engine_modules, backend=backend, trust_torch_programs=True)("a red circle", **KW)
    assert_cli_refuses([engine_modules, "-p", "a red circle", "--backend", backend, "--trust-torch-programs", *CLI_KW], tmp_path / "x.png",
                       "sampler", "step 7 of 8")


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_non_finite_text_features(engine_modules, monkeypatch, backend):
    pipe = Pipeline.load(engine_modules, backend=backend, trust_torch_programs=True)
    condition = pipe.family.condition

    def nan_t5(*args, **kwargs):
        inputs, info = condition(*args, **kwargs)
        text = inputs["encoder_hidden_states"]
        text = text.copy() if isinstance(text, np.ndarray) else text.clone()  # torch's are inference tensors
        text[0, 0, 0] = np.nan  # T5 overflowing in float16 would look like this
        return {**inputs, "encoder_hidden_states": text}, info
    monkeypatch.setattr(pipe.family, "condition", nan_t5)
    with pytest.raises(NonFiniteError, match="text encoders"):
        pipe("a red circle", **KW)


def test_the_device_flag_on_torch_tensors_never_reads_the_device_per_step(engine_modules, monkeypatch):
    """The torch path records each step's verdict on the device; only first_bad reads it."""
    import torch

    backend = Pipeline.load(engine_modules, backend="torch", trust_torch_programs=True).backend
    watch = finite.StepWatch(backend, max_steps=10)
    watch.reset()
    pred, latents, scratch = torch.zeros(1, 4, 8), torch.zeros(1, 4, 8), torch.zeros(1, 4, 8)
    for name in ("item", "tolist", "numpy", "cpu", "__bool__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, lambda *a, **k: pytest.fail("a host read inside the loop"))
    verdicts = []
    for i in range(6):
        if i == 2:
            latents[0, 1, 2] = torch.inf
        if i == 3:
            pred[0, 0, 0] = torch.nan
        verdicts.append(watch.step(i, pred, latents, scratch))
    monkeypatch.undo()
    assert verdicts == [None] * 6  # nothing known on the host yet
    assert watch.first_bad(backend, 6) == (2, finite.LATENTS)
    watch.reset()
    for i in range(6):
        watch.step(i, torch.zeros(1, 4, 8), torch.zeros(1, 4, 8), scratch)
    assert watch.first_bad(backend, 6) is None


def test_the_numpy_check_stops_at_the_first_bad_step(engine_modules):
    backend = Pipeline.load(engine_modules).backend
    watch = finite.StepWatch(backend, max_steps=10)
    pred, latents, scratch = np.zeros((1, 4, 8), np.float32), np.zeros((1, 4, 8), np.float32), np.zeros((1, 4, 8),
                                                                                                        np.float32)
    assert watch.step(0, pred, latents, scratch) is None
    pred[0, 0, 0] = np.nan
    assert watch.step(1, pred, latents, scratch) == finite.PREDICTION
