"""How much memory a request needs, estimated from the manifest alone, and the check that refuses
a request before it starts when the estimate does not fit.

With M the model's batch (the images B, doubled by classifier-free guidance), N image tokens and L
context tokens (FLUX: text.t5.max_length; DiT: none), T = N + L, heads = dim / head_dim, F the
values of one Taylor factor and P those of the transformer's prediction (both from the shapes the
manifest declares), K = cache.max_order, H x W pixels, p = (H / s)(W / s) latent pixels for the
VAE's scale s, and C the VAE decoder's widest channel count at full resolution
(`latent.vae_block_out_channels[1]`, FLUX's 256 when the manifest does not say), in bytes:

    buffers     = (K + 2) F f  [+ F g when the features' dtype g differs from the factors' f]
                  + 4 P x 3  (prediction and the sampler's scratch)
    transformer = 6 x 4 M heads T^2 + 96 x 4 M T dim + 3.5 x 4 F
    decoder     = 2 x 4 B p^2 + 20 B H W C
    total       = buffers + transformer + decoder

The terms are what grows: the attention scores (M heads T^2 float32 values, several alive inside a
block), the per-token activations, the features the full graph outputs, and in the VAE decoder its
mid-block attention over all latent pixels and its full-resolution convolutions. The constants
are the upper envelope of peak RSS measured on ONNX Runtime's CPU provider (scripts/memory_calibration.py;
flux-tiny and the `mid` size, 256 to 1024 px, batch 1 and 2): the estimate was 1.05 to 1.5 times the
measured peak. On ONNX Runtime every graph's arena keeps the memory its largest run took, so the
transformer and decoder terms add up. On a GPU with fused attention the scores are never stored and
the estimate is an over-estimate.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..engines.shapes import shape_of
from ..errors import MemoryLimitError, UsageError
from .precision import BYTES

SCORES, TOKENS, FEATURES = 6.0, 96.0, 3.5  # transformer: float32 score, token-width and feature tensors alive
VAE_SCORES, VAE_PIXEL = 2.0, 20.0  # decoder: score matrices alive, bytes per pixel and channel
FLUX_VAE_CHANNELS = (128, 256, 512, 512)  # FLUX.1-dev's VAE: the assumption when the manifest has no widths
GB = 10**9


@dataclass(frozen=True)
class Estimate:
    buffers: int  # Taylor factors and the request's scratch: kept by the Pipeline between requests
    transformer: int  # the full graph's activations
    decoder: int  # the VAE decoder's activations

    @property
    def total(self) -> int:
        return self.buffers + self.transformer + self.decoder

    def describe(self) -> str:
        return (f"about {gb(self.total)} (Taylor factors and buffers {gb(self.buffers)}, transformer activations "
                f"{gb(self.transformer)}, VAE decoder {gb(self.decoder)})")


def estimate(manifest: dict, dtypes: dict[str, str], values: dict[str, int], tokens: int, context: int) -> Estimate:
    """`values`: the request's symbol sizes (engines.shapes.dim_values); `tokens`, `context`: the
    family's image and context tokens."""
    cfg, cache, latent = manifest["model"]["config"], manifest["cache"], manifest["latent"]
    b, height, width = values["B"], values["H"], values["W"]
    features = math.prod(shape_of(manifest, "forecast", "inputs", "factor_0", values))
    sample = shape_of(manifest, "full", "outputs", "sample", values)
    m, t = sample[0], tokens + context
    heads = cfg["dim"] // cfg["head_dim"]
    buffers = (cache["max_order"] + 2) * features * BYTES[dtypes["factors"]]
    if dtypes["features"] != dtypes["factors"]:
        buffers += features * BYTES[dtypes["features"]]
    buffers += 3 * 4 * math.prod(sample)
    transformer = SCORES * 4 * m * heads * t * t + TOKENS * 4 * m * t * cfg["dim"] + FEATURES * 4 * features
    widths = latent.get("vae_block_out_channels") or FLUX_VAE_CHANNELS
    channels = widths[1] if len(widths) > 1 else widths[0]  # the last upsampler's output is full resolution
    pixels = (height // latent["vae_scale_factor"]) * (width // latent["vae_scale_factor"])
    decoder = VAE_SCORES * 4 * b * pixels**2 + VAE_PIXEL * b * height * width * channels
    return Estimate(int(buffers), int(transformer), int(decoder))


def available(device: str) -> int:
    """Bytes a request can still take: free device memory on CUDA (plus what torch's caching
    allocator holds unused), the system's available memory on the CPU."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    import psutil

    return int(psutil.virtual_memory().available)


def check(need: Estimate, credit: int, device: str, budget: int | None, what: str) -> None:
    """Refuse `what` when `need` exceeds the budget, or when what it adds to memory this Pipeline
    already holds (`credit`: buffers it reuses, arenas grown by earlier requests) is not available."""
    fix = "use a smaller size or batch, or run it on a machine or GPU with more memory"
    if budget is not None and need.total > budget:
        raise MemoryLimitError(f"{what} needs {need.describe()}, above the memory budget of {gb(budget)}; "
                               f"{fix}, or raise the budget (--memory-budget)")
    free = available(device)
    if need.total - credit > free:
        where = "on " + device if device.startswith("cuda") else "in this machine's available memory"
        raise MemoryLimitError(f"{what} needs {need.describe()}, and only {gb(free + credit)} is free {where}; "
                               f"{fix}")


def parse_bytes(value: int | str | None) -> int | None:
    """A budget: bytes as an int, or a string like `8GB`, `8GiB`, `512MB`, `4e9`."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        return value
    units = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
             "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", str(value).lower())
    amount = float(m.group(1)) * units[m.group(2)] if isinstance(value, str) and m and m.group(2) in units else 0
    if 1 <= amount < float("inf"):
        return int(amount)
    raise UsageError(f"memory budget {value!r} is not an amount of memory; give bytes or a number with a unit, "
                     "e.g. 8GB, 8GiB or 512MB")


def gb(n: float) -> str:
    return f"{n / GB:.2f} GB" if n >= GB / 10 else f"{n / 10**6:.1f} MB"
