"""The schedule and the Taylor math against their oracles: diffusers' TaylorSeer hook (its own
decisions and its own TaylorSeerState) and a float64 dict-based reference of the official
TaylorSeer update, written from the paper's description."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from seer.errors import UsageError
from seer.runtime.schedule import Schedule
from seer.runtime.taylor import TaylorState, forecast, forecast_coefficients


def official_full_steps(steps: int, interval: int, first_enhance: int) -> list[int]:
    """The official counter-based decision: full during warm-up, then whenever the counter of
    forecast steps since the last full step reaches interval - 1."""
    full, counter = [], 0
    for step in range(steps):
        if step < first_enhance or counter == interval - 1:
            full.append(step)
            counter = 0
        else:
            counter += 1
    return full


@pytest.mark.parametrize("steps,interval,warmup", [(50, 6, 3), (50, 4, 1), (28, 4, 3), (50, 5, 1), (30, 1, 1),
                                                   (10, 20, 2), (7, 3, 7)])
def test_taylorseer_schedule_matches_official_counter(steps, interval, warmup):
    assert Schedule.taylorseer(steps, interval, warmup).full_steps == official_full_steps(steps, interval, warmup)


def test_flux_default_schedule_hand_derived():
    s = Schedule.taylorseer(50, interval=6, warmup=3)
    assert s.full_steps == [0, 1, 2, 8, 14, 20, 26, 32, 38, 44]
    assert s.ideal_speedup == 5.0
    assert s.derive_from == 2
    assert Schedule.taylorseer(50, 6, 3, final_full=2).full_steps[-3:] == [44, 48, 49]


def _diffusers_decisions(steps: int, interval: int, before: int, after: int | None) -> list[int]:
    """Run diffusers' TaylorSeer hook on a tiny FLUX transformer and record which steps ran attention."""
    from diffusers import FluxTransformer2DModel, TaylorSeerCacheConfig

    torch.manual_seed(0)
    model = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                   attention_head_dim=8, num_attention_heads=2, joint_attention_dim=8,
                                   pooled_projection_dim=8, axes_dims_rope=(2, 2, 4)).eval()
    model.enable_cache(TaylorSeerCacheConfig(cache_interval=interval, disable_cache_before_step=before,
                                             disable_cache_after_step=after, max_order=1,
                                             taylor_factors_dtype=torch.float32))
    calls = []
    attn = model.transformer_blocks[0].attn
    inner = attn.processor

    def counting(*a, **k):
        calls.append(step)
        return inner(*a, **k)

    attn.processor = counting
    x, ctx = torch.randn(1, 4, 4), torch.randn(1, 3, 8)
    with torch.no_grad():
        for step in range(steps):
            with model.cache_context("cond"):
                model(hidden_states=x, encoder_hidden_states=ctx, pooled_projections=torch.randn(1, 8),
                      timestep=torch.tensor([1.0 - step / steps]), img_ids=torch.zeros(4, 3),
                      txt_ids=torch.zeros(3, 3))
    return sorted(set(calls))


@pytest.mark.parametrize("steps,interval,before,after", [(20, 5, 3, None), (20, 4, 1, None), (20, 3, 6, 18)])
def test_diffusers_schedule_matches_diffusers_hook(steps, interval, before, after):
    expected = _diffusers_decisions(steps, interval, before, after)
    assert Schedule.diffusers(steps, interval, before, after).full_steps == expected


def test_schedule_rejects_bad_settings():
    with pytest.raises(UsageError, match="interval must be at least 1"):
        Schedule.taylorseer(50, interval=0)
    with pytest.raises(UsageError, match="warm-up must be between 1 and the number of steps"):
        Schedule.taylorseer(10, interval=6, warmup=11)
    with pytest.raises(UsageError, match="steps must be at least 1"):
        Schedule.no_cache(0)


class OfficialTaylor:
    """float64 reference: factors kept in a dict per order, replaced wholesale at each full step."""

    def __init__(self, max_order: int, first_enhance: int):
        self.max_order, self.first_enhance = max_order, first_enhance
        self.cache: dict[int, np.ndarray] = {}
        self.activated: list[int] = []

    def full(self, step: int, feature: np.ndarray) -> None:
        self.activated.append(step)
        new = {0: feature.astype(np.float64)}
        if len(self.activated) > 1:
            d = self.activated[-1] - self.activated[-2]
            for i in range(self.max_order):
                if i in self.cache and step > self.first_enhance - 2:
                    new[i + 1] = (new[i] - self.cache[i]) / d
                else:
                    break
        self.cache = new

    def forecast(self, step: int) -> np.ndarray:
        k = step - self.activated[-1]
        return sum(self.cache[i] * k**i / math.factorial(i) for i in self.cache)


def _run_ours(schedule: Schedule, order: int, features: dict[int, np.ndarray], slots: int | None = None):
    shape = next(iter(features.values())).shape
    state = TaylorState(order, lambda: np.zeros(shape, np.float32), slots=slots)
    out = {}
    for step in range(schedule.steps):
        if schedule.full[step]:
            state.spare[...] = features[step]
            state.update(step, derive=step >= schedule.derive_from)
        else:
            out[step] = forecast(state.factors, state.coefficients(step))
    return out, state


@pytest.mark.parametrize("order", [0, 1, 2, 3])
@pytest.mark.parametrize("interval,warmup", [(6, 3), (4, 2), (3, 1)])
def test_taylor_state_matches_float64_official_reference(order, interval, warmup):
    rng = np.random.default_rng(order * 10 + interval)
    schedule = Schedule.taylorseer(30, interval, warmup)
    # smooth in the step index, like real features, plus noise so every order matters
    base = rng.standard_normal((4, 3, 5))
    features = {s: (base * np.cos(0.1 * s) + 0.05 * s**2 / 30 + 0.01 * rng.standard_normal(base.shape))
                .astype(np.float32) for s in schedule.full_steps}
    ref = OfficialTaylor(order, first_enhance=warmup)
    ours, _ = _run_ours(schedule, order, features, slots=4)
    for step in range(schedule.steps):
        if schedule.full[step]:
            ref.full(step, features[step])
        else:
            expected = ref.forecast(step)
            np.testing.assert_allclose(ours[step], expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_order_ramps_up_one_full_step_at_a_time():
    schedule = Schedule.taylorseer(20, interval=4, warmup=3)
    f = {s: np.full((2,), float(s * s), np.float32) for s in schedule.full_steps}
    state = TaylorState(2, lambda: np.zeros((2,), np.float32))
    valid = []
    for s in schedule.full_steps:
        state.spare[...] = f[s]
        state.update(s, derive=s >= schedule.derive_from)
        valid.append(state.valid)
    # steps 0 and 1: no derivative (gate), step 2: first order (d=1), step 6: second order
    assert schedule.full_steps[:5] == [0, 1, 2, 6, 10]
    assert valid[:5] == [1, 1, 2, 3, 3]
    # F = s^2, by hand at the last full step 18 (previous 14, 10): F=324, D1=(324-196)/4=32,
    # D2=(32-(196-100)/4)/4=2 -- the exact second derivative of s^2
    np.testing.assert_allclose([state.factors[i][0] for i in range(3)], [324, 32, 2])
    np.testing.assert_allclose(forecast_coefficients(3, 2, 3), [1, 3, 0, 0])


def test_taylor_state_matches_diffusers_state():
    """diffusers' TaylorSeerState (no warm-up gate) is the oracle for derive_from=0."""
    from diffusers.hooks.taylorseer_cache import TaylorSeerState

    schedule = Schedule.diffusers(25, cache_interval=4, disable_cache_before_step=2)
    rng = np.random.default_rng(1)
    features = {s: rng.standard_normal((3, 4)).astype(np.float32) * (1 + s) for s in schedule.full_steps}
    ref = TaylorSeerState(taylor_factors_dtype=torch.float64, max_order=2)
    ours, _ = _run_ours(schedule, 2, features)
    for step in range(schedule.steps):
        ref.current_step = step
        if schedule.full[step]:
            ref.update((torch.from_numpy(features[step]).double(),))
        else:
            np.testing.assert_allclose(ours[step], ref.predict()[0].numpy(), rtol=1e-5, atol=1e-4)


def test_update_swaps_buffers_without_allocating():
    buffers = []

    def alloc():
        buffers.append(np.zeros((8,), np.float32))
        return buffers[-1]

    state = TaylorState(2, alloc)
    ids = {id(b) for b in buffers}
    for s in range(6):
        state.spare[...] = s
        state.update(s)
    assert len(buffers) == 4 and {id(b) for b in [*state.factors, state.spare]} == ids


def test_reset_forgets_previous_request():
    state = TaylorState(1, lambda: np.zeros((2,), np.float32))
    state.spare[...] = 5
    state.update(0)
    state.reset()
    with pytest.raises(ValueError):
        state.coefficients(3)
    state.spare[...] = 1
    state.update(0)
    assert state.valid == 1
