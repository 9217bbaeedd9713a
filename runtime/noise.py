"""Initial noise for a seed, drawn exactly as diffusers' FluxPipeline draws it with a CPU generator
(torch.randn on a CPU generator seeded with the seed), so outputs compare with diffusers."""

from __future__ import annotations

import numpy as np

from ..errors import BackendUnavailable


def randn(shape: tuple[int, ...], seed: int) -> np.ndarray:
    try:
        import torch
    except ImportError:
        raise BackendUnavailable("drawing seeded noise needs torch (CPU build is enough): pip install torch") from None
    g = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=g, dtype=torch.float32).numpy()
