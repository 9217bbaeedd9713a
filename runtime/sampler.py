"""FLUX's flow-matching Euler sampler and latent layout, in numpy.

Mirrors diffusers' FluxPipeline + FlowMatchEulerDiscreteScheduler: sigmas linear from 1 to 1/steps,
shifted by the resolution-dependent exponential time shift (mu interpolated linearly in the
image-token count), computed in float32 as diffusers does, with a terminal sigma of 0. The
transformer sees timestep = sigma (the graphs scale by 1000 themselves), rounded as FluxPipeline
rounds it in the model's precision, and the step is the scheduler's: `dt * prediction` in the
prediction's dtype, the sum in float32, the new latents rounded back to their dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import NonFiniteError
from .precision import round_to


@dataclass(frozen=True)
class FlowMatchEuler:
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
    def step(latents, prediction, dt: float, wide, narrow=None) -> None:
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


def latent_grid(height: int, width: int, vae_scale_factor: int) -> tuple[int, int]:
    """Rows and columns of packed (2x2) latent tokens for an image size."""
    return height // (vae_scale_factor * 2), width // (vae_scale_factor * 2)


def image_ids(rows: int, cols: int) -> np.ndarray:
    ids = np.zeros((rows, cols, 3), dtype=np.float32)
    ids[..., 1] = np.arange(rows)[:, None]
    ids[..., 2] = np.arange(cols)[None, :]
    return ids.reshape(rows * cols, 3)


def pack(latents: np.ndarray) -> np.ndarray:
    """[B, C, H, W] -> [B, (H/2)(W/2), 4C], the token layout of the transformer."""
    b, c, h, w = latents.shape
    x = latents.reshape(b, c, h // 2, 2, w // 2, 2).transpose(0, 2, 4, 1, 3, 5)
    return np.ascontiguousarray(x.reshape(b, (h // 2) * (w // 2), c * 4))


def unpack(tokens: np.ndarray, rows: int, cols: int) -> np.ndarray:
    b, n, c4 = tokens.shape
    x = tokens.reshape(b, rows, cols, c4 // 4, 2, 2).transpose(0, 3, 1, 4, 2, 5)
    return np.ascontiguousarray(x.reshape(b, c4 // 4, rows * 2, cols * 2))
