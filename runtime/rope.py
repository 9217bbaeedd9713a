"""FLUX's rotary position tables, computed once per resolution outside the step graphs.

diffusers builds them in float64 inside the transformer; TensorRT takes no float64, so the
graphs take the tables as float32 inputs and the runtime computes them here (float64, then cast).
Layout per token: for each position axis a, for each frequency j < dim_a/2, the angle
pos_a * theta**(-2j/dim_a), each angle repeated twice (interleaved real/imaginary pairs).
"""

from __future__ import annotations

import numpy as np


def rope_tables(ids: np.ndarray, axes_dims: tuple[int, ...], theta: float) -> tuple[np.ndarray, np.ndarray]:
    """ids [S, n_axes] -> (cos, sin), each [S, sum(axes_dims)] float32."""
    pos = ids.astype(np.float32).astype(np.float64)
    cos, sin = [], []
    for a, dim in enumerate(axes_dims):
        freqs = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64)[: dim // 2] / dim)
        angles = np.outer(pos[:, a], freqs)
        cos.append(np.repeat(np.cos(angles), 2, axis=1))
        sin.append(np.repeat(np.sin(angles), 2, axis=1))
    return np.concatenate(cos, 1).astype(np.float32), np.concatenate(sin, 1).astype(np.float32)


def image_ids(rows: int, cols: int) -> np.ndarray:
    """Position ids of a rows x cols token grid: (0, row, column) per token."""
    ids = np.zeros((rows, cols, 3), dtype=np.float32)
    ids[..., 1] = np.arange(rows)[:, None]
    ids[..., 2] = np.arange(cols)[None, :]
    return ids.reshape(rows * cols, 3)


def flux_rope(text_len: int, rows: int, cols: int, axes_dims, theta) -> tuple[np.ndarray, np.ndarray]:
    """Tables for the joint sequence: text tokens (all ids 0) first, then image tokens."""
    ids = np.concatenate([np.zeros((text_len, 3), np.float32), image_ids(rows, cols)])
    return rope_tables(ids, tuple(axes_dims), theta)
