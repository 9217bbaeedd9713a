"""seer's DDIM sampler (runtime/samplers/ddim.py) against its oracle, diffusers' DDIMScheduler
(eta = 0): the timesteps exactly, the schedule tables, and 20-step loops with a deterministic fake
model on numpy arrays and torch tensors, in float32 and with 16-bit latents.

Tolerances (max |ours - diffusers| / max |diffusers| over the final latents of 20 steps):
- float32: 2e-5. Measured: <= 1e-6 without clip_sample, <= 9e-6 with it (clipping x_0 = (x - ...) /
  sqrt(alpha) at alpha ~ 3e-4 amplifies float32 roundings; diffusers itself is as far from a float64
  run of the same formulas). The step folds diffusers' scalars into fewer in-place operations, and
  torch's float32 linspace rounds a few betas 1 ulp differently.
  With rescale_betas_zero_snr the alpha tables themselves differ by up to 4e-5 relative (diffusers'
  rescaling subtracts nearly equal float32 numbers, and torch's CPU sqrt is not correctly rounded;
  ours is), yet the loops stay within 1e-6.
- 16-bit latents and predictions against diffusers in float32: float16 5e-3, bfloat16 3e-2 over 20
  steps (measured 2.3e-3 and 1.4e-2; diffusers run in float16 / bfloat16 lands 2-4e-3 / 1.5-3e-2
  away); and every single step equals the float32 step rounded once to the latents' dtype.
"""

from __future__ import annotations

import dataclasses
import tracemalloc
import warnings

import numpy as np
import pytest
import torch

from seer.errors import EngineDirError, UsageError
from seer.runtime.samplers.ddim import DDIM, DDIMPlan

diffusers = pytest.importorskip("diffusers")

# facebook/DiT-XL-2-256's scheduler: DDIM over DDPM's linear betas 1e-4 .. 0.02, 1000 timesteps
DIT_XL_2_256 = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.0001,
                "beta_end": 0.02, "beta_schedule": "linear", "trained_betas": None, "clip_sample": False,
                "set_alpha_to_one": True, "steps_offset": 0, "prediction_type": "epsilon"}
SD = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def oracle(**config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return diffusers.DDIMScheduler(**{k: v for k, v in config.items() if not k.startswith("_")})


# -- timesteps: exact ---------------------------------------------------------------------------

@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize("train", [1000, 999])
def test_timesteps_equal_diffusers(spacing, offset, train):
    ours = DDIM(num_train_timesteps=train, timestep_spacing=spacing, steps_offset=offset)
    ref = oracle(num_train_timesteps=train, timestep_spacing=spacing, steps_offset=offset)
    checked = 0
    for steps in [*range(1, 60), 61, 100, 250, 333, 500, 998, 999, 1000]:
        if steps > train:
            continue
        ref.set_timesteps(steps)
        expected = ref.timesteps.numpy()
        if len(expected) != steps or expected.max() >= train or expected.min() < 0:
            # diffusers makes a timestep it cannot step from (trailing: one more than asked, -1;
            # leading + offset: past the table); seer refuses that step count by name
            with pytest.raises(UsageError, match=f"{steps} steps"):
                ours.plan(steps, 0)
            continue
        plan = ours.plan(steps, 0)
        assert plan.model_timesteps.dtype == np.float32 and plan.model_timesteps.shape == (steps,)
        np.testing.assert_array_equal(plan.model_timesteps, expected.astype(np.float32))
        np.testing.assert_array_equal(plan.timesteps, expected)
        np.testing.assert_array_equal(plan.prev_timesteps, expected - train // steps)
        checked += 1
    assert checked > 50


def test_trailing_refusal_names_the_counts_that_work():
    with pytest.raises(UsageError, match="choose 60 or 62 steps"):
        DDIM(timestep_spacing="trailing").plan(61, 0)


@pytest.mark.parametrize("steps", [0, -3, 1001, 2.0, True, "20"])
def test_bad_step_counts_refused(steps):
    with pytest.raises(UsageError, match="steps"):
        DDIM().plan(steps, 0)


def test_max_steps():
    assert DDIM().max_steps == 1000 and DDIM(num_train_timesteps=37).max_steps == 37


# -- the schedule tables ------------------------------------------------------------------------

@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("rescale", [False, True])
@pytest.mark.parametrize("alpha_one", [True, False])
def test_alpha_tables(schedule, rescale, alpha_one):
    cfg = {**(SD if schedule == "scaled_linear" else {"beta_schedule": schedule}),
           "rescale_betas_zero_snr": rescale, "set_alpha_to_one": alpha_one}
    ours, ref = DDIM.from_diffusers(cfg), oracle(**cfg)
    # torch's float32 linspace and its CPU sqrt are not correctly rounded; ours are
    rtol = 1e-4 if rescale else (0 if schedule == "squaredcos_cap_v2" else 1e-6)
    np.testing.assert_allclose(ours.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=rtol, atol=1e-12)
    assert ours.final_alpha_cumprod == pytest.approx(float(ref.final_alpha_cumprod), rel=rtol)
    ref.set_timesteps(20)
    plan = ours.plan(20, 0)
    for i, t in enumerate(ref.timesteps.tolist()):
        prev = t - 1000 // 20
        a_prev = ref.alphas_cumprod[prev] if prev >= 0 else ref.final_alpha_cumprod
        assert plan.alpha_prod_t[i] == pytest.approx(float(ref.alphas_cumprod[t]), rel=rtol, abs=1e-12)
        assert plan.alpha_prod_t_prev[i] == pytest.approx(float(a_prev), rel=rtol)


# -- 20-step loops against diffusers ------------------------------------------------------------

CASES = {
    "dit-xl-2-256": DIT_XL_2_256,
    "dit-xl-2-256-clip": {**DIT_XL_2_256, "clip_sample": True},
    "defaults": {},
    "leading-offset1": {"steps_offset": 1, "clip_sample": False},
    "trailing": {"timestep_spacing": "trailing"},
    "trailing-noclip": {"timestep_spacing": "trailing", "clip_sample": False},
    "linspace": {"timestep_spacing": "linspace", "clip_sample": False},
    "linspace-alpha0-offset1": {"timestep_spacing": "linspace", "set_alpha_to_one": False, "steps_offset": 1},
    "alpha0": {"set_alpha_to_one": False, "clip_sample": False},
    "scaled_linear": {**SD, "clip_sample": False, "steps_offset": 1, "set_alpha_to_one": False},
    "scaled_linear-clip": {**SD},
    "cosine": {"beta_schedule": "squaredcos_cap_v2", "clip_sample": False},
    "cosine-clip2": {"beta_schedule": "squaredcos_cap_v2", "clip_sample_range": 2.0},
    "v": {"prediction_type": "v_prediction", "clip_sample": False},
    "v-clip": {"prediction_type": "v_prediction", "clip_sample_range": 0.5},
    "v-trailing-alpha0": {"prediction_type": "v_prediction", "timestep_spacing": "trailing",
                          "set_alpha_to_one": False, "clip_sample": False},
    "sample": {"prediction_type": "sample", "clip_sample": False},
    "sample-clip": {"prediction_type": "sample", "timestep_spacing": "linspace"},
    "sample-scaled": {**SD, "prediction_type": "sample", "clip_sample": False},
    "zsnr-v-trailing": {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction",
                        "timestep_spacing": "trailing", "clip_sample": False},
    "zsnr-v-leading-clip": {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction"},
    "zsnr-eps-cosine": {"rescale_betas_zero_snr": True, "clip_sample": False, "beta_schedule": "squaredcos_cap_v2"},
}
SHAPE = (2, 4, 8, 8)
STEPS = 20


def fake_model(x, noise):
    """A deterministic stand-in for the transformer: bounded, input-dependent, float32."""
    return 0.5 * np.tanh(x.astype(np.float32)) + noise


def diffusers_loop(cfg, steps=STEPS):
    sched = oracle(**cfg)
    sched.set_timesteps(steps)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal(SHAPE, dtype=np.float32))
    noise = rng.standard_normal(SHAPE, dtype=np.float32) * np.float32(0.3)
    for t in sched.timesteps:
        pred = torch.from_numpy(fake_model(x.numpy(), noise))
        x = sched.step(pred, t, x, eta=0.0).prev_sample
    return x.numpy()


def seer_loop(cfg, *, lib="numpy", dtype="float32", steps=STEPS):
    ddim = DDIM.from_diffusers(cfg)
    plan = ddim.plan(steps, 0)
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal(SHAPE, dtype=np.float32)
    noise = rng.standard_normal(SHAPE, dtype=np.float32) * np.float32(0.3)
    if lib == "numpy":
        latents = x0.astype(dtype)
        wide = np.zeros(SHAPE, np.float32)
        to_np, from_np = (lambda a: a), (lambda a: a.astype(dtype))
    else:
        tdtype = getattr(torch, dtype)
        latents = torch.from_numpy(x0).to(tdtype)
        wide = torch.zeros(SHAPE)
        to_np, from_np = (lambda a: a.float().numpy()), (lambda a: torch.from_numpy(a).to(tdtype))
    ids = (id(latents), id(wide))
    for i in range(plan.steps):
        pred = from_np(fake_model(to_np(latents), noise))  # the prediction in the latents' dtype
        before = to_np(pred).copy()
        ddim.step(plan, i, latents, pred, wide)
        np.testing.assert_array_equal(to_np(pred), before)  # never written
    assert (id(latents), id(wide)) == ids
    return to_np(latents).astype(np.float32)


def rel_err(got, want):
    return float(np.max(np.abs(got.astype(np.float64) - want)) / np.max(np.abs(want)))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_loop_float32_equals_diffusers(case, lib):
    cfg = CASES[case]
    want = diffusers_loop(cfg)
    got = seer_loop(cfg, lib=lib)
    assert np.all(np.isfinite(want))
    assert rel_err(got, want) <= 2e-5, (case, rel_err(got, want))


@pytest.mark.parametrize("case", ["dit-xl-2-256", "trailing-noclip", "v", "sample"])
@pytest.mark.parametrize("lib,dtype", [("numpy", "float16"), ("torch", "float16"), ("torch", "bfloat16")])
def test_loop_16bit_latents_near_diffusers_float32(case, lib, dtype):
    """20 steps with 16-bit latents and predictions against diffusers in float32: what rounding to
    16 bits at every step costs (diffusers itself run in float16 lands 2e-3 away, in bfloat16 2e-2)."""
    cfg = CASES[case]
    got, want = seer_loop(cfg, lib=lib, dtype=dtype), diffusers_loop(cfg)
    tol = 5e-3 if dtype == "float16" else 3e-2
    assert rel_err(got, want) <= tol, (case, dtype, rel_err(got, want))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("lib,dtype", [("numpy", "float16"), ("torch", "float16"), ("torch", "bfloat16")])
def test_16bit_step_is_the_float32_step_rounded_once(case, lib, dtype):
    """Every step of a 20-step run, from 16-bit latents and prediction: seer's result is diffusers'
    float32 step on the same (widened) values, rounded once to the latents' dtype."""
    cfg = CASES[case]
    ddim, sched = DDIM.from_diffusers(cfg), oracle(**cfg)
    sched.set_timesteps(STEPS)
    plan = ddim.plan(STEPS, 0)
    tdtype = getattr(torch, dtype)
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.standard_normal(SHAPE, dtype=np.float32)).to(tdtype)
    noise = rng.standard_normal(SHAPE, dtype=np.float32) * np.float32(0.3)
    half_ulp = 2.0**-11 if dtype == "float16" else 2.0**-8
    for i, t in enumerate(sched.timesteps):
        pred = torch.from_numpy(fake_model(x.float().numpy(), noise)).to(tdtype)
        want = sched.step(pred.float(), t, x.float(), eta=0.0).prev_sample.numpy().astype(np.float64)
        if lib == "numpy":
            latents, p = x.float().numpy().astype(dtype), pred.float().numpy().astype(dtype)
            wide = np.empty(SHAPE, np.float32)
        else:
            latents, p, wide = x.clone(), pred, torch.empty(SHAPE)
        ddim.step(plan, i, latents, p, wide)
        got = latents.astype(np.float64) if lib == "numpy" else latents.double().numpy()
        # one rounding to the 16-bit dtype, plus the float32 differences measured above
        bound = half_ulp * np.abs(want) + 2e-5 * np.max(np.abs(want))
        assert np.all(np.abs(got - want) <= bound), (i, float(np.max(np.abs(got - want) - bound)))
        x = torch.from_numpy(want.astype(np.float32)).to(tdtype)


def test_zero_snr_epsilon_at_the_terminal_timestep_is_refused():
    # diffusers divides by sqrt(alpha_prod_t) = 0 there and returns NaN
    ddim = DDIM(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    with pytest.raises(UsageError, match="v_prediction"):
        ddim.plan(20, 0)


# -- the step allocates nothing -----------------------------------------------------------------

@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_numpy_step_allocates_no_array(kind, dtype):
    ddim = DDIM(prediction_type=kind, clip_sample=True)
    plan = ddim.plan(10, 0)
    shape = (2, 4, 128, 128)  # 512 KiB in float32
    rng = np.random.default_rng(1)
    latents = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
    pred = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
    wide = np.empty(shape, np.float32)
    ddim.step(plan, 0, latents, pred, wide)  # warm numpy's own caches
    tracemalloc.start()
    try:
        ddim.step(plan, 1, latents, pred, wide)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, peak  # numpy's casting buffers at most, never an array


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_torch_step_allocates_nothing(kind):
    """float32 tensors. (Mixed dtypes on the CPU make transient casts inside torch itself:
    TensorIterator promotes a narrower CPU input by copying it; CUDA casts inside the kernel.)"""
    from torch.profiler import ProfilerActivity, profile

    ddim = DDIM(prediction_type=kind, clip_sample=True)
    plan = ddim.plan(10, 0)
    latents, pred, wide = torch.randn(2, 4, 64, 64), torch.randn(2, 4, 64, 64), torch.empty(2, 4, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            ddim.step(plan, 1, latents, pred, wide)
    allocated = max((e.cpu_memory_usage for e in prof.events()), default=0)
    assert allocated < 1024, allocated  # 64 KiB tensors: nothing of their size


# -- configuration ------------------------------------------------------------------------------

def test_manifest_round_trip():
    for cfg in [*CASES.values(), {}]:
        ddim = DDIM.from_diffusers(cfg)
        m = ddim.to_manifest()
        assert m["type"] == "ddim" and set(m) == {"type"} | {f.name for f in dataclasses.fields(DDIM)}
        assert DDIM.from_manifest(m) == ddim
        import json

        assert DDIM.from_manifest(json.loads(json.dumps(m))) == ddim


def test_from_diffusers_reads_a_scheduler_config():
    ref = oracle(**DIT_XL_2_256)
    ddim = DDIM.from_diffusers(dict(ref.config))
    assert ddim == DDIM(clip_sample=False)
    assert DDIM.from_diffusers({}) == DDIM()  # diffusers' defaults are ours


@pytest.mark.parametrize("setting,value", [("thresholding", True), ("trained_betas", [0.1] * 1000),
                                           ("beta_schedule", "sigmoid"), ("prediction_type", "flow"),
                                           ("timestep_spacing", "karras")])
def test_from_diffusers_refuses_what_it_cannot_reproduce(setting, value):
    with pytest.raises(UsageError, match=setting):
        DDIM.from_diffusers({**DIT_XL_2_256, setting: value})


@pytest.mark.parametrize("bad", [{"type": "flow_match_euler"}, {"type": "ddim", "eta": 0.5},
                                 {"type": "ddim", "beta_schedule": "cosine"}, {"type": "ddim", "steps_offset": -1},
                                 {"type": "ddim", "clip_sample": 1}, {"type": "ddim", "num_train_timesteps": 1.5},
                                 {"type": "ddim", "beta_end": float("nan")}])
def test_damaged_manifest_refused(bad):
    with pytest.raises(EngineDirError):
        DDIM.from_manifest(bad)


def test_plan_is_immutable():
    plan = DDIM().plan(10, 0)
    assert isinstance(plan, DDIMPlan)
    with pytest.raises(ValueError):
        plan.alpha_prod_t[0] = 0.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.timesteps = None
