"""DDIM (eta = 0), in numpy: diffusers' DDIMScheduler, deterministic.

Reproduces DDIMScheduler.__init__, set_timesteps and step (eta = 0, so no variance noise) of
diffusers 0.42:

- betas in float32 per `beta_schedule`: "linear" (linspace(beta_start, beta_end)),
  "scaled_linear" (linspace of the square roots, squared) and "squaredcos_cap_v2" (the cosine
  alpha-bar discretised in float64, capped at 0.999); optionally rescaled to zero terminal SNR;
  alphas_cumprod as torch's CPU cumprod forms it (a float64 running product, each value rounded
  to float32); the alpha product after the last step is 1 (`set_alpha_to_one`) or alphas_cumprod[0].
- the timesteps of each `timestep_spacing` ("leading" with `steps_offset`, "trailing",
  "linspace"), and, for every spacing, the previous timestep `t - num_train_timesteps // steps`
  (as diffusers forms it, even where that is not the next timestep of the list).
- the step: the predicted x_0 and epsilon from the model output ("epsilon", "v_prediction" or
  "sample"), x_0 clipped to +-clip_sample_range when `clip_sample`, then
  `sqrt(alpha_prev) x_0 + sqrt(1 - alpha_prev) eps`.

What differs from diffusers, by at most a few float32 roundings: torch's float32 linspace rounds some
betas 1 ulp away from the correctly rounded values used here, and the step folds its scalars into
fewer in-place operations (it allocates nothing: one float32 scratch buffer holds the running sum).

The transformer sees the integer timestep t as a float32 value, exact for any dtype of the graphs:
DiT-style embedders convert the timestep to float32 before anything else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any

import numpy as np

from ...errors import EngineDirError, UsageError

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


@dataclass(frozen=True)
class DDIMPlan:
    """The per-step values of one request, computed once on the host (arrays are read-only)."""

    model_timesteps: np.ndarray
    """float32 [steps]: the transformer's `timestep` input at step i (the integer timestep t)."""
    timesteps: np.ndarray
    """int64 [steps]: t, what diffusers' `scheduler.timesteps` holds."""
    prev_timesteps: np.ndarray
    """int64 [steps]: t - num_train_timesteps // steps (negative: past the end of the chain)."""
    alpha_prod_t: np.ndarray
    """float32 [steps]: alphas_cumprod[t]."""
    alpha_prod_t_prev: np.ndarray
    """float32 [steps]: alphas_cumprod[prev_t], or the final alpha product where prev_t < 0."""

    @property
    def steps(self) -> int:
        return len(self.timesteps)


@dataclass(frozen=True)
class DDIM:
    """diffusers' DDIMScheduler with eta = 0; the field names and defaults are its config's."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    prediction_type: str = "epsilon"
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    timestep_spacing: str = "leading"
    rescale_betas_zero_snr: bool = False

    type = "ddim"  # not a field: the manifest's sampler "type"

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem:
            raise ValueError(problem)

    def _problem(self) -> str | None:
        def is_int(v):
            return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))

        def is_real(v):
            return is_int(v) or (isinstance(v, (float, np.floating)) and math.isfinite(v))

        if not is_int(self.num_train_timesteps) or not 1 <= self.num_train_timesteps <= 100_000:
            return f"num_train_timesteps must be an integer in [1, 100000], not {self.num_train_timesteps!r}"
        for name in ("beta_start", "beta_end"):
            v = getattr(self, name)
            if not is_real(v) or not 0 <= v < 1:
                return f"{name} must be a number in [0, 1), not {v!r}"
        if self.beta_schedule not in BETA_SCHEDULES:
            return f"beta_schedule {self.beta_schedule!r} is not supported (choose one of {', '.join(BETA_SCHEDULES)})"
        if self.prediction_type not in PREDICTION_TYPES:
            return (f"prediction_type {self.prediction_type!r} is not supported "
                    f"(choose one of {', '.join(PREDICTION_TYPES)})")
        if self.timestep_spacing not in TIMESTEP_SPACINGS:
            return (f"timestep_spacing {self.timestep_spacing!r} is not supported "
                    f"(choose one of {', '.join(TIMESTEP_SPACINGS)})")
        for name in ("set_alpha_to_one", "clip_sample", "rescale_betas_zero_snr"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                return f"{name} must be true or false, not {getattr(self, name)!r}"
        if not is_int(self.steps_offset) or not 0 <= self.steps_offset < self.num_train_timesteps:
            return f"steps_offset must be an integer in [0, num_train_timesteps), not {self.steps_offset!r}"
        if not is_real(self.clip_sample_range) or not self.clip_sample_range > 0:
            return f"clip_sample_range must be a positive number, not {self.clip_sample_range!r}"
        ac = self.alphas_cumprod
        # with zero terminal SNR the last product is 0 by construction; any other must be in (0, 1)
        inner = ac[:-1] if self.rescale_betas_zero_snr else ac
        if not (np.all(np.isfinite(ac)) and np.all(inner > 0) and np.all(ac < 1)):
            return (f"the {self.beta_schedule} schedule from beta_start {self.beta_start} to beta_end "
                    f"{self.beta_end} gives alpha products outside (0, 1)")
        return None

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_manifest(cls, cfg: dict) -> DDIM:
        """From the manifest's "sampler" section ({"type": "ddim", every field})."""
        if not isinstance(cfg, dict) or cfg.get("type") != cls.type:
            raise EngineDirError(f"the manifest's sampler is not a {cls.type!r} sampler; re-export the directory")
        unknown = sorted(set(cfg) - {"type"} - {f.name for f in fields(cls)})
        if unknown:
            raise EngineDirError(f"the manifest's ddim sampler has unknown settings {unknown}; "
                                 "re-export the directory with this version of seer")
        try:
            return cls(**{k: v for k, v in cfg.items() if k != "type"})
        except ValueError as e:
            raise EngineDirError(f"the manifest's ddim sampler is damaged: {e}; re-export the directory") from None

    def to_manifest(self) -> dict:
        out: dict[str, Any] = {"type": self.type}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.item() if isinstance(v, np.generic) else v
        return out

    @classmethod
    def from_diffusers(cls, config: dict) -> DDIM:
        """From a DDIMScheduler config (scheduler_config.json, or `scheduler.config`). Settings this
        sampler does not reproduce are refused by name; keys it does not know are ignored, as
        diffusers ignores them."""
        config = dict(config)
        if config.get("thresholding", False):
            raise UsageError("the scheduler sets thresholding=True (dynamic thresholding), which seer's DDIM "
                             "sampler does not reproduce; export with thresholding=False")
        if config.get("trained_betas") is not None:
            raise UsageError("the scheduler sets trained_betas (an explicit beta table), which seer's DDIM "
                             "sampler does not reproduce; use a beta_schedule")
        for key, allowed in (("beta_schedule", BETA_SCHEDULES), ("prediction_type", PREDICTION_TYPES),
                             ("timestep_spacing", TIMESTEP_SPACINGS)):
            if key in config and config[key] not in allowed:
                raise UsageError(f"the scheduler's {key} {config[key]!r} is not supported by seer's DDIM sampler "
                                 f"(it reproduces {', '.join(allowed)})")
        try:
            return cls(**{f.name: config[f.name] for f in fields(cls) if f.name in config})
        except ValueError as e:
            raise UsageError(f"the scheduler config cannot be reproduced: {e}") from None

    # -- the schedule ---------------------------------------------------------------------------

    @property
    def max_steps(self) -> int:
        return int(self.num_train_timesteps)

    @cached_property
    def betas(self) -> np.ndarray:
        n = int(self.num_train_timesteps)
        if self.beta_schedule == "linear":
            betas = _linspace32(self.beta_start, self.beta_end, n)
        elif self.beta_schedule == "scaled_linear":
            betas = _linspace32(self.beta_start**0.5, self.beta_end**0.5, n) ** 2
        else:  # squaredcos_cap_v2: the cosine alpha-bar of improved DDPM, in float64, capped
            def alpha_bar(t):
                return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

            betas = np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)],
                             dtype=np.float32)
        if self.rescale_betas_zero_snr:
            betas = _rescale_zero_terminal_snr(betas)
        betas.flags.writeable = False
        return betas

    @cached_property
    def alphas_cumprod(self) -> np.ndarray:
        ac = _cumprod32(np.float32(1) - self.betas)
        ac.flags.writeable = False
        return ac

    @property
    def final_alpha_cumprod(self) -> np.float32:
        return np.float32(1.0) if self.set_alpha_to_one else self.alphas_cumprod[0]

    def timesteps(self, steps: int) -> np.ndarray:
        """int64 [steps], as DDIMScheduler.set_timesteps(steps) sets `scheduler.timesteps`."""
        n = int(self.num_train_timesteps)
        if isinstance(steps, (bool, np.bool_)) or not isinstance(steps, (int, np.integer)):
            raise UsageError(f"steps must be an int, not {type(steps).__name__} ({steps!r})")
        if not 1 <= steps <= n:
            raise UsageError(f"steps must be between 1 and {n} (the sampler's training timesteps), not {steps}")
        if self.timestep_spacing == "linspace":
            t = np.linspace(0, n - 1, steps).round()[::-1].copy().astype(np.int64)
        elif self.timestep_spacing == "leading":
            ratio = n // steps
            t = (np.arange(0, steps) * ratio).round()[::-1].copy().astype(np.int64) + int(self.steps_offset)
        else:  # trailing
            t = np.round(np.arange(n, 0, -n / steps)).astype(np.int64) - 1
            if len(t) != steps:
                # float rounding in arange's length gives one more timestep, -1, which diffusers
                # would index from the end of its table: a schedule nobody means
                raise UsageError(f"trailing timestep spacing cannot take {steps} steps of {n} (diffusers' "
                                 f"DDIMScheduler makes {len(t)} timesteps of them, the last one -1); "
                                 f"choose {steps - 1} or {steps + 1} steps")
        if t.max() >= n:
            raise UsageError(f"{steps} steps with steps_offset {self.steps_offset} reach timestep {int(t.max())}, "
                             f"past the sampler's {n} training timesteps; choose fewer steps")
        return t

    def plan(self, steps: int, image_seq_len: int = 0, dtype: str = "float32") -> DDIMPlan:
        """The per-step values of a request of `steps` steps. `image_seq_len` and `dtype` do not
        change DDIM (its timesteps are integers, fed as exact float32 values)."""
        t = self.timesteps(steps)
        prev = t - int(self.num_train_timesteps) // steps
        ac = self.alphas_cumprod
        a_t = ac[t].astype(np.float32)
        a_prev = np.where(prev >= 0, ac[np.maximum(prev, 0)], self.final_alpha_cumprod).astype(np.float32)
        if self.prediction_type == "epsilon" and np.any(a_t == 0):
            raise UsageError(f"epsilon prediction cannot step from timestep {int(t[np.argmax(a_t == 0)])}, where "
                             "the zero-terminal-SNR schedule has no signal left (x_0 = (x - eps) / 0); use "
                             "v_prediction with rescale_betas_zero_snr, or another timestep spacing")
        arrays = [t.astype(np.float32), t, prev, a_t, a_prev]
        for a in arrays:
            a.flags.writeable = False
        return DDIMPlan(*arrays)

    # -- the step -------------------------------------------------------------------------------

    def step(self, plan: DDIMPlan, i: int, latents, prediction, wide, narrow=None) -> None:
        """latents <- the DDIM step from step i to i + 1 given the model output, in place.

        `wide` is a float32 scratch buffer of the latents' shape; all arithmetic happens there, in
        float32, and the result is written into `latents` (of any float dtype) at the end.
        `prediction` is only read (it may be a Taylor factor). `narrow` is not used. numpy arrays
        and torch tensors alike: only `a[...] = b`, `a *= s`, `a += b`, `a /= s` and an in-place
        clip. One buffer holds a running sum `m * wide`: adding `k * T` without a temporary is
        `wide *= m / k; wide += T; m = k`, and the last `wide *= m` applies the scale.
        """
        f32 = np.float32
        a_t, a_prev = f32(plan.alpha_prod_t[i]), f32(plan.alpha_prod_t_prev[i])
        # the scalars in float32, as diffusers forms them from its float32 tables
        sa, sb = np.sqrt(a_t), np.sqrt(f32(1) - a_t)  # alpha_prod_t ** 0.5, beta_prod_t ** 0.5
        A, B = np.sqrt(a_prev), np.sqrt(f32(1) - a_prev)  # coefficients of x_0 and of eps
        sa, sb, A, B = float(sa), float(sb), float(A), float(B)
        kind = self.prediction_type
        sample = latents

        # 1. the predicted x_0 into `wide`; afterwards prev = A * clip(x_0) + (terms) * eps
        if kind == "epsilon":  # x_0 = (x - sqrt(1 - a) eps) / sqrt(a)
            wide[...] = prediction
            wide *= -sb
            wide += sample
            wide /= sa
            terms = [(B, prediction)]
        elif kind == "v_prediction":  # x_0 = sqrt(a) x - sqrt(1 - a) v;  eps = sqrt(a) v + sqrt(1 - a) x
            _accumulate(wide, 0.0, [(-sb, prediction), (sa, sample)])
            terms = [(B * sb, sample), (B * sa, prediction)]
        else:  # sample: x_0 = prediction;  eps = (x - sqrt(a) x_0) / sqrt(1 - a)
            wide[...] = prediction
            terms = [(B / sb, sample), (-B * sa / sb, prediction)]

        # 2. clip x_0 (after eps was defined from the unclipped x_0, as diffusers does)
        if self.clip_sample:
            r = float(self.clip_sample_range)
            if isinstance(wide, np.ndarray):
                np.clip(wide, -r, r, out=wide)
            else:
                wide.clamp_(-r, r)

        # 3. prev = sqrt(a_prev) x_0 + sqrt(1 - a_prev) eps
        _accumulate(wide, A, terms)
        latents[...] = wide


def _accumulate(wide, m: float, terms) -> None:
    """wide <- m * wide + sum(k * T for k, T in terms), in place (m = 0: wide's content is ignored)."""
    for k, t in terms:
        if k == 0.0:
            continue
        if m == 0.0:
            wide[...] = t
        else:
            if m != k:
                wide *= m / k
            wide += t
        m = k
    if m != 1.0:
        wide *= m


def _linspace32(start: float, end: float, n: int) -> np.ndarray:
    """torch.linspace(start, end, n, dtype=float32), correctly rounded (torch's own float32
    arithmetic rounds some values 1 ulp differently)."""
    return np.linspace(float(np.float32(start)), float(np.float32(end)), n).astype(np.float32)


def _cumprod32(x: np.ndarray) -> np.ndarray:
    """torch.cumprod of a float32 tensor on the CPU: a float64 running product, rounded per element."""
    return np.cumprod(x.astype(np.float64)).astype(np.float32)


def _rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """diffusers' rescale_zero_terminal_snr (Lin et al. 2023, Algorithm 1), in float32."""
    f32 = np.float32
    sqrt_ab = np.sqrt(_cumprod32(f32(1) - betas))
    first, last = sqrt_ab[0], sqrt_ab[-1]
    sqrt_ab = sqrt_ab - last
    sqrt_ab = sqrt_ab * (first / (first - last))
    ab = sqrt_ab**2
    alphas = np.concatenate([ab[:1], ab[1:] / ab[:-1]]).astype(np.float32)
    return (f32(1) - alphas).astype(np.float32)
