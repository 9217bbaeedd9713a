"""16-bit engine directories against diffusers' FluxPipeline in the same dtype, on the same weights,
prompt and seed: bfloat16 through the torch programs (ONNX Runtime's CPU provider has no bfloat16
kernels), float16 through ONNX Runtime; and the roundings the runtime reproduces, against torch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from seer.export import common as export_common, flux_export
from seer.export.tiny import MAX_SEQUENCE_LENGTH
from seer.runtime.pipeline import Pipeline
from seer.runtime.precision import round_to
from seer.runtime.samplers.flow_match import FlowMatchEuler

PROMPT = "a red circle at the top left"
STEPS = 8


def rel_err(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def diffusers_latents(model, dtype, height=128, width=128, seed=7):
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(model, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(PROMPT, height=height, width=width, num_inference_steps=STEPS, guidance_scale=3.5,
               max_sequence_length=MAX_SEQUENCE_LENGTH, generator=torch.Generator().manual_seed(seed),
               output_type="latent")
    return out.images.float().numpy()


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory, tiny_model):
    """flux-tiny saved in bfloat16, as FLUX.1-dev is shipped."""
    from diffusers import FluxPipeline

    path = tmp_path_factory.mktemp("flux-tiny-bf16")
    FluxPipeline.from_pretrained(tiny_model, dtype=torch.bfloat16).save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def engine_bf16(tmp_path_factory, bf16_checkpoint):
    out = tmp_path_factory.mktemp("engines") / "bf16"
    # no precision given: the checkpoint's own, bfloat16
    flux_export.export_flux(str(bf16_checkpoint), out, max_order=1, log=lambda m: None)
    return out


@pytest.fixture(scope="module")
def engine_fp16(tmp_path_factory, tiny_model):
    out = tmp_path_factory.mktemp("engines") / "fp16"
    flux_export.export_flux("flux-tiny", out, precision="fp16", max_order=1, log=lambda m: None)
    return out


def test_bf16_torch_programs_match_diffusers_in_bf16(engine_bf16, bf16_checkpoint):
    ref16 = diffusers_latents(bf16_checkpoint, torch.bfloat16)
    ref32 = diffusers_latents(bf16_checkpoint, torch.float32)
    g = Pipeline.load(engine_bf16, backend="torch", trust_torch_programs=True)(PROMPT, seed=7, steps=STEPS, height=128, width=128,
                                                    no_cache=True, return_latents=True)
    # The same kernels on the same CPU and the same roundings as diffusers (the timestep cast to
    # bfloat16 and divided there, the scheduler's dt * prediction in bfloat16 with dt cast first, the
    # sum in float32): equal to diffusers' bfloat16 pipeline to far below one bfloat16 rounding
    # (2**-8 = 3.9e-3), while float32 anywhere in the loop lands about 1.6e-2 away, as far as
    # diffusers' own float32 run is.
    assert rel_err(ref16, ref32) > 4e-3
    assert rel_err(g.latents, ref16) < 1e-3


def test_fp16_onnxruntime_matches_diffusers_in_fp16(engine_fp16, tiny_model):
    ref16 = diffusers_latents(tiny_model, torch.float16)
    ref32 = diffusers_latents(tiny_model, torch.float32)
    g = Pipeline.load(engine_fp16)(PROMPT, seed=7, steps=STEPS, height=128, width=128, no_cache=True,
                                   return_latents=True)
    # Other kernels (ONNX Runtime's, and T5 in float32 where diffusers runs it in float16): within a
    # few float16 roundings (2**-11 = 4.9e-4) of diffusers' float16 run, and clearly closer to it than
    # float32 is (measured: 1.6e-3 against a float16-float32 distance of 4.1e-3).
    err = rel_err(g.latents, ref16)
    assert err < 5e-3 and err < 0.5 * rel_err(ref16, ref32)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_cached_16_bit_runs_forecast_close_to_their_no_cache_run(engine_bf16, engine_fp16, backend):
    pipe = Pipeline.load(engine_bf16 if backend == "torch" else engine_fp16, backend=backend,
                         trust_torch_programs=True)
    kw = dict(seed=3, steps=20, height=64, width=96, return_latents=True)
    ref = pipe(PROMPT, no_cache=True, **kw).latents
    cached = pipe(PROMPT, interval=3, order=1, warmup=3, **kw)
    assert sum(cached.schedule.full) < 20 and np.isfinite(cached.latents).all()
    assert 0 < rel_err(cached.latents, ref) < 0.5


def test_manifest_records_each_graphs_precision(engine_bf16, engine_fp16):
    def table(d):
        m = json.loads((d / "manifest.json").read_text())
        io = {g: {t["name"]: t["dtype"] for t in [*e["inputs"], *e["outputs"]]} for g, e in m["graphs"].items()}
        return m, {g: e["precision"] for g, e in m["graphs"].items()}, io

    m, precision, io = table(engine_bf16)
    assert m["schema_version"] == 4 and m["precision"] == "bfloat16" and m["cache"]["factor_dtype"] == "bfloat16"
    assert precision == {"clip": "bfloat16", "t5": "bfloat16", "full": "bfloat16", "forecast": "bfloat16",
                         "vae_decoder": "float32"}
    assert io["full"]["hidden_states"] == io["full"]["features"] == io["forecast"]["factor_0"] == "bfloat16"
    # the step inputs stay float32: the graphs cast them as diffusers' transformer does
    assert io["full"]["timestep"] == io["full"]["rope_cos"] == io["forecast"]["coefficients"] == "float32"
    m, precision, io = table(engine_fp16)
    # T5 overflows in float16: it runs in float32 and hands the transformer float16
    assert precision["t5"] == "float32" and io["t5"]["encoder_hidden_states"] == "float16"
    assert precision["full"] == precision["clip"] == "float16" and precision["vae_decoder"] == "float32"


def test_16_bit_graphs_are_tensorrt_ready(engine_bf16, engine_fp16):
    from seer.engines.trt_check import check_onnx

    for d in (engine_bf16, engine_fp16):
        for f in sorted(d.glob("*.onnx")):
            assert check_onnx(f) == [], f


def test_bf16_directory_on_onnxruntime_names_the_fix(engine_bf16):
    from seer.runtime.cli import main

    r = CliRunner().invoke(main, [str(engine_bf16), "-p", "x"])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and r.output.startswith("error: ")
    assert "bfloat16" in r.output and "--backend torch" in r.output and "--precision fp16" in r.output


@pytest.fixture(scope="module")
def four_channels(tmp_path_factory):
    """Another layout: a VAE of 4 latent channels (16 packed), untrained."""
    from seer.export.tiny import build_untrained

    path = tmp_path_factory.mktemp("flux-4ch")
    build_untrained(path, seed=1, latent_channels=4).save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def engine_four_channels(tmp_path_factory, four_channels):
    """float16 graphs with float32 Taylor factors, exported as a model too large to check whole or to
    store torch programs for by default would be (both limits set to 0): the slice path."""
    calls = []
    real = flux_export.export_graph

    def spy(module, inputs, names, dims, directory, name, torch_program, **kw):
        t = getattr(module, "t", None)
        calls.append((name, kw.get("check", True), t and (len(t.transformer_blocks), len(t.single_transformer_blocks))))
        return real(module, inputs, names, dims, directory, name, torch_program, **kw)

    out = tmp_path_factory.mktemp("engines") / "four"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(export_common, "FULL_CHECK_LIMIT", 0)
        mp.setattr(flux_export, "TORCH_PROGRAMS_LIMIT", 0)
        mp.setattr(flux_export, "export_graph", spy)
        flux_export.export_flux(str(four_channels), out, precision="fp16", factor_dtype="fp32", max_order=1,
                                log=lambda m: None)
    return out, calls


def test_slices_are_checked_when_graphs_are_too_large_to_check_whole(engine_four_channels):
    out, calls = engine_four_channels
    # every large graph: first a checked slice (one block of each kind) in a scratch folder, then
    # the whole graph, unchecked; the VAE is always checked whole
    assert [c for c in calls if c[0] == "full"] == [("full", True, (1, 1)), ("full", False, (2, 4))]
    assert [c[:2] for c in calls if c[0] in ("clip", "t5")] == [("clip", True), ("clip", False), ("t5", True),
                                                                 ("t5", False)]
    assert ("vae_decoder", True, None) in calls
    m = json.loads((out / "manifest.json").read_text())
    assert m["formats"] == ["onnx"]  # no torch programs above the limit unless asked
    assert not any("scratch" in f or "tmp" in f for f in m["files"])


def test_other_layout_non_square_matches_diffusers_with_float32_factors(engine_four_channels, four_channels):
    out, _ = engine_four_channels
    pipe = Pipeline.load(out)
    assert pipe.manifest["latent"]["channels"] == 4 and pipe.dtypes["factors"] == "float32"
    assert pipe.dtypes["features"] == "float16"
    ref16 = diffusers_latents(four_channels, torch.float16, height=64, width=96)
    g = pipe(PROMPT, seed=7, steps=STEPS, height=64, width=96, no_cache=True, return_latents=True)
    assert g.latents.shape == ref16.shape and g.image.size == (96, 64)
    assert rel_err(g.latents, ref16) < 5e-3
    cached = pipe(PROMPT, seed=7, steps=STEPS, height=64, width=96, interval=2, warmup=2, order=1,
                  return_latents=True)
    assert 0 < rel_err(cached.latents, g.latents) < 0.5


# -- the roundings, against torch and diffusers' scheduler --------------------------------------

def test_round_to_matches_torch_casts():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(10000).astype(np.float32) * 10.0 ** rng.integers(-8, 8, 10000),
                        np.float32([1 + 2**-8, 1 + 3 * 2**-8, 1 - 2**-9, 65504.0, 3e38, -0.0, 0.0])])
    x = x.astype(np.float32)
    for dtype in ("bfloat16", "float16"):
        want = torch.from_numpy(x).to(getattr(torch, dtype)).float().numpy()
        np.testing.assert_array_equal(round_to(x, dtype), want)


# numpy has no bfloat16: the runtime keeps bfloat16 in torch tensors
@pytest.mark.parametrize("dtype,arrays", [("bfloat16", "torch"), ("float16", "torch"), ("float32", "torch"),
                                          ("float16", "numpy"), ("float32", "numpy")])
def test_euler_step_is_the_schedulers_bit_for_bit(dtype, arrays):
    from diffusers import FlowMatchEulerDiscreteScheduler
    sampler = FlowMatchEuler()
    steps, n = 12, 64
    plan = sampler.plan(steps, n, dtype)
    sigmas = plan.sigmas
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    sched.set_timesteps(steps, sigmas=np.linspace(1.0, 1 / steps, steps), mu=sampler.mu(n))
    np.testing.assert_array_equal(sched.sigmas.numpy(), sigmas)
    tdt = getattr(torch, dtype)
    assert np.array_equal(plan.model_timesteps, (sched.timesteps.to(tdt) / 1000).float().numpy())
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, n, 16, generator=g).to(tdt)
    ours = latents.clone() if arrays == "torch" else latents.numpy().copy()
    wide = torch.zeros(1, n, 16) if arrays == "torch" else np.zeros((1, n, 16), np.float32)
    narrow = None if dtype == "float32" else (torch.zeros(1, n, 16, dtype=tdt) if arrays == "torch"
                                               else np.zeros((1, n, 16), np.float16))
    for i, t in enumerate(sched.timesteps):
        pred = torch.randn(1, n, 16, generator=g).to(tdt)
        latents = sched.step(pred, t, latents, return_dict=False)[0]
        sampler.step(plan, i, ours, pred if arrays == "torch" else pred.numpy(), wide, narrow)
        np.testing.assert_array_equal(np.asarray(ours.float() if arrays == "torch" else ours, np.float32),
                                      latents.float().numpy())
