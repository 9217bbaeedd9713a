"""Guidance: how a request's guidance scale reaches the model, a kind the manifest names.

- `none`: the model takes no guidance (FLUX.1-schnell, a DiT without an unconditional class); a
  scale given is ignored, with a warning.
- `embedded`: guidance-distilled models (FLUX.1-dev) take the scale as a graph input, `guidance`.
- `cfg`: classifier-free guidance by batch doubling, as diffusers' DiTPipeline does when the scale is
  above 1: the transformer runs the conditional and the unconditional halves as one batch of 2B (the
  Taylor state covers both), and the prediction is `uncond + scale * (cond - uncond)` over the
  channels the sampler uses (the rest, e.g. a learned variance, is not guided).

Each kind says how many model rows a request of B images takes (`batch`), which extra graph inputs it
adds (`inputs`), how the latents become the model's batch (`expand`) and how the model's prediction
becomes the sampler's (`combine`). The denoising loop calls these and knows no kind by name.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import EngineDirError


class NoGuidance:
    kind = "none"

    def batch(self, scale: float) -> int:
        return 1

    def inputs(self, backend, images: int, scale: float) -> dict[str, Any]:
        return {}

    def expand(self, latents, model_input):
        return latents

    def combine(self, prediction, guided, scale: float):
        return prediction


class EmbeddedGuidance(NoGuidance):
    kind = "embedded"

    def inputs(self, backend, images: int, scale: float) -> dict[str, Any]:
        return {"guidance": backend.asarray(np.full(images, scale, np.float32))}


class ClassifierFree(NoGuidance):
    kind = "cfg"

    def batch(self, scale: float) -> int:
        return 2 if scale > 1 else 1

    def expand(self, latents, model_input):
        """Both halves of the model batch are the same latents (DiTPipeline keeps them equal)."""
        if model_input is None:
            return latents
        b = latents.shape[0]
        model_input[:b] = latents
        model_input[b:] = latents
        return model_input

    def combine(self, prediction, guided, scale: float):
        """`guided` <- uncond + scale * (cond - uncond), in the prediction's dtype, in place."""
        if guided is None:
            return prediction
        b = guided.shape[0]
        cond, uncond = prediction[:b], prediction[b:]
        guided[...] = cond
        guided -= uncond
        guided *= scale
        guided += uncond
        return guided


GUIDANCE = {g.kind: g for g in (NoGuidance, EmbeddedGuidance, ClassifierFree)}


def guidance_for(cfg: dict):
    cls = GUIDANCE.get(cfg.get("kind"))
    if cls is None:
        raise EngineDirError(f"this engine directory's guidance kind {str(cfg.get('kind'))[:60]!r} is not one this "
                             f"seer runs ({', '.join(GUIDANCE)}); upgrade seer or re-export the directory")
    return cls()
