"""Samplers: how the latents move from one step to the next, chosen by the manifest's `sampler.type`.

A sampler is a small frozen dataclass with the scheduler's settings and four things:

- `from_manifest(cfg)` / `to_manifest()`: its settings as the manifest's `sampler` section;
- `plan(steps, image_seq_len, dtype)`: everything a request's steps need, computed once on the host,
  with `model_timesteps` (float32 [steps]), what the transformer's `timestep` input gets at each step;
- `step(plan, i, latents, prediction, wide, narrow)`: step i -> i + 1 in place, allocating nothing
  (numpy arrays and torch tensors alike; `wide` is float32 scratch of the latents' shape);
- `max_steps`: more steps than this would only repeat timesteps.

Each mirrors a diffusers scheduler, its oracle in the tests.
"""

from __future__ import annotations

from ...errors import EngineDirError
from .ddim import DDIM
from .flow_match import FlowMatchEuler

SAMPLERS = {cls.type: cls for cls in (FlowMatchEuler, DDIM)}


def sampler_for(cfg: dict):
    """The sampler a manifest's `sampler` section names; an unknown one is refused by name."""
    cls = SAMPLERS.get(cfg.get("type"))
    if cls is None:
        raise EngineDirError(f"this engine directory's sampler {str(cfg.get('type'))[:60]!r} is not one this seer "
                             f"runs ({', '.join(SAMPLERS)}); upgrade seer or re-export the directory")
    return cls.from_manifest(cfg)
