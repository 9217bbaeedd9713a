"""Initial noise for a seed, identical to `torch.randn(shape, generator=torch.Generator("cpu")
.manual_seed(seed))` -- what diffusers' FluxPipeline draws -- in numpy alone, so the CPU runtime
needs no torch and a C++ runtime can reproduce it from this description:

1. An MT19937 generator initialised with `init_genrand(seed mod 2**32)`.
2. n uniforms u = (x & 0xFFFFFF) * 2**-24 from successive 32-bit outputs x (n >= 16), in order.
3. Box-Muller in blocks of 16: for j < 8, with u1 = 1 - u[j], u2 = u[j + 8]:
   out[j] = sqrt(-2 ln u1) cos(2 pi u2), out[j + 8] = sqrt(-2 ln u1) sin(2 pi u2).
4. If n is not a multiple of 16, 16 further uniforms are drawn and the last 16 outputs are
   recomputed from them with step 3.
Values agree with torch to float32 rounding of log/cos/sin (a few 1e-7).
"""

from __future__ import annotations

import numpy as np

from ..errors import UsageError


def _mt19937_key(seed: int) -> np.ndarray:
    key = np.empty(624, dtype=np.uint32)
    x = seed & 0xFFFFFFFF
    key[0] = x
    for i in range(1, 624):
        x = (1812433253 * (x ^ (x >> 30)) + i) & 0xFFFFFFFF
        key[i] = x
    return key


def _box_muller(u: np.ndarray) -> np.ndarray:
    blocks = u.reshape(-1, 16)
    radius = np.sqrt(-2 * np.log(1 - blocks[:, :8]))
    theta = 2 * np.pi * blocks[:, 8:]
    return np.concatenate([radius * np.cos(theta), radius * np.sin(theta)], axis=1).reshape(-1)


def randn(shape: tuple[int, ...], seed: int) -> np.ndarray:
    n = int(np.prod(shape))
    if n < 16:
        raise UsageError(f"noise of {n} values is below the 16 this generator reproduces; use a larger latent")
    bits = np.random.MT19937()
    bits.state = {"bit_generator": "MT19937", "state": {"key": _mt19937_key(int(seed)), "pos": 624}}
    tail = 16 if n % 16 else 0
    raw = bits.random_raw(n + tail).astype(np.uint32)
    u = (raw & 0xFFFFFF).astype(np.float32) * np.float32(2.0**-24)
    out = np.empty(n, dtype=np.float32)
    whole = n - n % 16
    out[:whole] = _box_muller(u[:whole])
    if tail:
        out[n - 16 :] = _box_muller(u[n:])
    return out.reshape(shape)
