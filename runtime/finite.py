"""Non-finite values (NaN, Inf) in a request: caught where they start, named in one error.

A NaN anywhere in the loop spreads to every latent within a step or two and decodes to a black
image, so the loop watches two things per step: the prediction (the full or forecast graph's
output) and the latents after the sampler's step. Which of the two went bad first says where the
fault is: a graph (full: weights or precision; forecast: the Taylor factors) or the sampler.

The test is `sum(x * 0)`: 0 when every value is finite, NaN otherwise (Inf * 0 is NaN), exact
whatever the magnitudes, written into a scratch buffer the request already owns (no allocation).

- numpy (CPU): checked at once, so the loop stops at the first bad step.
- torch (CUDA or CPU): each step's verdict goes into a small device vector and the host reads it
  once, after the loop, where the pipeline synchronises anyway: no host sync per step. The loop
  runs to its end before the error is raised.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import NonFiniteError

PREDICTION, LATENTS = 0, 1


class StepWatch:
    def __init__(self, backend, max_steps: int):
        # row 0: the text encoders' outputs; row i + 1: step i's (prediction, latents)
        self.health = backend.zeros((max_steps + 1, 2))
        self.on_host = isinstance(self.health, np.ndarray)
        self.enabled = True

    def reset(self) -> None:
        self.health[...] = 0

    def conditioning(self, *arrays: Any) -> None:
        """The text encoders' outputs, once per request (a T5 overflowing in float16 starts here)."""
        if not self.enabled:
            return
        if self.on_host:
            if not all(np.isfinite(a).all() for a in arrays):
                raise conditioning_error()
            return
        total = self.health[0, PREDICTION]
        for a in arrays:
            total += (a * 0).sum()  # once per request: the temporaries are the size of the text, not of a step

    def step(self, i: int, prediction: Any, latents: Any, scratch: Any) -> int | None:
        """After step i's sampler step. numpy: returns PREDICTION or LATENTS when that went bad
        (the caller raises), else None. torch: records and returns None."""
        if not self.enabled:
            return None
        row = self.health[i + 1]
        for what, a in ((PREDICTION, prediction), (LATENTS, latents)):
            if self.on_host:
                with np.errstate(invalid="ignore"):
                    np.multiply(a, 0, out=scratch)
                if not np.isfinite(scratch.sum()):
                    return what
            else:
                _torch().mul(a, 0, out=scratch)
                _torch().sum(scratch, dim=tuple(range(scratch.dim())), out=row[what])
        return None

    def first_bad(self, backend, steps: int) -> tuple[int, int] | None:
        """torch: the one read of the device vector, after the loop. (-1, _) is the conditioning."""
        if not self.enabled or self.on_host:
            return None
        host = backend.numpy(self.health[: steps + 1])
        bad = np.argwhere(~np.isfinite(host))
        if not len(bad):
            return None
        row, what = (int(v) for v in bad[0])
        return row - 1, what


def _torch():
    import torch  # only reached with torch tensors, so torch is there

    return torch


def conditioning_error() -> NonFiniteError:
    return NonFiniteError("the text encoders' outputs are not finite (NaN or Inf) before step 0: the clip or t5 "
                          "graph overflows in its precision or is damaged; re-export the directory (T5 runs in "
                          "float32 in fp16 exports)")


def step_error(step: int, steps: int, full: bool, what: int, dtypes: dict[str, str]) -> NonFiniteError:
    kind = "full" if full else "forecast"
    where = f"at denoising step {step} of {steps} (a {kind} step)"
    if what == LATENTS:
        return NonFiniteError(
            f"the latents became non-finite (NaN or Inf) {where} while the prediction was finite: the sampler's "
            f"Euler step overflowed {dtypes['latents']}; re-export with a wider --precision (bf16 or fp32) or "
            "check the manifest's sampler parameters")
    if full:
        return NonFiniteError(
            f"the full transformer's output is not finite (NaN or Inf) {where}: the graph overflows in "
            f"{dtypes['sample']} or its weights are damaged; check the guidance scale, re-export with a wider "
            "--precision (bf16 or fp32), or re-export the directory")
    return NonFiniteError(
        f"the forecast is not finite (NaN or Inf) {where}: the Taylor factors overflowed {dtypes['factors']} or "
        "the forecast graph is damaged; use a lower --order or a shorter --interval, re-export with "
        "--factor-dtype fp32, or run with --no-cache")


def coefficient_error(step: int, steps: int, coefficients: np.ndarray) -> NonFiniteError:
    return NonFiniteError(
        f"the forecast coefficients are not finite at denoising step {step} of {steps} (a forecast step): "
        f"{coefficients.tolist()}; use a lower --order or a shorter --interval")


def sigma_error(sigmas: np.ndarray) -> NonFiniteError:
    return NonFiniteError(
        f"the sampler's sigmas are not finite before step 0 ({sigmas.tolist()[:4]}...): the manifest's sampler "
        "parameters are damaged; re-export the directory")
