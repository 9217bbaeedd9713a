"""Precisions: the names an engine directory uses for dtypes, and the roundings the runtime
reproduces so that a 16-bit directory computes what diffusers computes in that precision.

Manifests name dtypes as numpy does (`float32`, `float16`, `bfloat16`); the command line takes the
short forms (`fp32`, `fp16`, `bf16`). numpy has no bfloat16, so rounding to it is done on the
float32 bits (round to nearest, ties to even), exactly as a cast does in torch.
"""

from __future__ import annotations

import numpy as np

from ..errors import UsageError

DTYPES = ("float32", "float16", "bfloat16")
SHORT = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
LONG = {v: k for k, v in SHORT.items()}
BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def dtype_name(name: str) -> str:
    """`bf16`, `bfloat16`, `torch.bfloat16`... -> `bfloat16`; anything else is refused by name."""
    key = str(name).replace("torch.", "").lower()
    key = SHORT.get(key, key)
    if key not in DTYPES:
        raise UsageError(f"unknown precision {name!r}; choose one of {', '.join(SHORT)}")
    return key


def round_to(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values rounded to `dtype` and returned as float32 (what a cast there and back gives)."""
    x = np.asarray(x, dtype=np.float32)
    if dtype == "float32":
        return x.copy()
    if dtype == "float16":
        with np.errstate(over="ignore"):  # beyond float16's range is inf, as a cast gives
            return x.astype(np.float16).astype(np.float32)
    if dtype == "bfloat16":
        bits = x.view(np.uint32).astype(np.uint64)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.astype(np.uint32).view(np.float32)
    raise UsageError(f"unknown dtype {dtype!r}")
