"""Flow-matching Euler, as diffusers' FlowMatchEulerDiscreteScheduler steps FLUX.

Sigmas linear from 1 to 1/steps, shifted by the resolution-dependent exponential time shift (mu
interpolated linearly in the image-token count), computed in float32 as diffusers does, with a
terminal sigma of 0. The transformer sees timestep = sigma (the graphs scale by 1000 themselves),
rounded as FluxPipeline rounds it in the model's precision, and the step is the scheduler's:
`dt * prediction` in the prediction's dtype, the sum in float32, the new latents rounded back to
their dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...errors import NonFiniteError
from ..finite import sigma_error
from ..precision import round_to


@dataclass(frozen=True)
class FlowMatchPlan:
    model_timesteps: np.ndarray  # float32 [steps]: the transformer's timestep input at each step
    sigmas: np.ndarray  # float32 [steps + 1], the last one 0


@dataclass(frozen=True)
class FlowMatchEuler:
    type = "flow_match_euler"
    num_train_timesteps: int = 1000
    shift: float = 3.0
    use_dynamic_shifting: bool = True
    base_shift: float = 0.5
    max_shift: float = 1.15
    base_image_seq_len: int = 256
    max_image_seq_len: int = 4096

    @classmethod
    def from_manifest(cls, cfg: dict) -> FlowMatchEuler:
        return cls(**{k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg})

    from_diffusers = from_manifest  # the scheduler config's keys are the manifest's

    def to_manifest(self) -> dict:
        return {"type": self.type, **{k: getattr(self, k) for k in self.__dataclass_fields__}}

    @property
    def max_steps(self) -> int:
        """More steps than the training timesteps would only repeat timesteps."""
        return int(self.num_train_timesteps)

    def plan(self, steps: int, image_seq_len: int, dtype: str = "float32") -> FlowMatchPlan:
        sigmas = self.sigmas(steps, image_seq_len)
        if not np.isfinite(sigmas).all():
            raise sigma_error(sigmas)
        return FlowMatchPlan(self.timesteps(sigmas, dtype), sigmas)

    def step(self, plan: FlowMatchPlan, i: int, latents, prediction, wide, narrow=None) -> None:
        """From step i to i + 1, in place (`euler_step`)."""
        self.euler_step(latents, prediction, plan.sigmas[i + 1] - plan.sigmas[i], wide, narrow)

    def mu(self, image_seq_len: int) -> float:
        m = (self.max_shift - self.base_shift) / (self.max_image_seq_len - self.base_image_seq_len)
        return image_seq_len * m + (self.base_shift - m * self.base_image_seq_len)

    def sigmas(self, steps: int, image_seq_len: int) -> np.ndarray:
        """steps + 1 sigmas, the last one 0 (float32)."""
        s = np.linspace(1.0, 1 / steps, steps).astype(np.float32)
        if self.use_dynamic_shifting:
            try:
                e = math.exp(self.mu(image_seq_len))
            except OverflowError:
                raise NonFiniteError(f"the sampler's time shift overflows at {image_seq_len} image tokens (mu "
                                     f"{self.mu(image_seq_len):.3g} from the manifest's sampler values); the "
                                     "directory's sampler settings are damaged, re-export it") from None
            s = e / (e + (1 / s - 1))
        else:
            s = self.shift * s / (1 + (self.shift - 1) * s)
        return np.append(s.astype(np.float32), np.float32(0.0))

    def timesteps(self, sigmas: np.ndarray, dtype: str = "float32") -> np.ndarray:
        """What the pipeline feeds the transformer, as float32 values: FluxPipeline casts
        t = sigma * 1000 to the model's dtype and divides it by 1000 there (the graphs then cast
        it to that dtype again, exactly, and multiply by 1000 as the transformer does)."""
        t = round_to(sigmas[:-1].astype(np.float32) * np.float32(self.num_train_timesteps), dtype)
        return round_to(t / np.float32(1000), dtype)

    @staticmethod
    def euler_step(latents, prediction, dt: float, wide, narrow=None) -> None:
        """latents += dt * prediction, in place, as FlowMatchEulerDiscreteScheduler.step computes it.

        `wide`: a float32 buffer of the latents' shape; `narrow`: one in the prediction's dtype when
        that is not float32 (diffusers forms `dt * prediction` there, with dt itself cast to that
        dtype first, before the float32 sum). The prediction is never written (it may be a Taylor
        factor). numpy and torch arrays alike."""
        if narrow is not None:
            dt = round_to(np.float32(dt), str(narrow.dtype).replace("torch.", ""))
        wide[...] = prediction
        wide *= float(dt)
        if narrow is not None:
            narrow[...] = wide
            wide[...] = narrow
        wide += latents
        latents[...] = wide
