"""seer-export for DiT: a diffusers DiTPipeline (DiT-XL/2, dit-tiny) -> an engine directory.

Graphs: `full` and `forecast` (the two transformer paths of export/dit.py: TaylorSeer-DiT caches every
block's attention and MLP outputs before their gates) and `vae_decoder`. No text encoders: the
conditioning is a class label, embedded inside the transformer graphs; the labels (id2label) go into
the manifest's `classes` section, with the unconditional class classifier-free guidance runs against.
The sampler is the pipeline's DDIMScheduler (DiT-XL/2 ships one). DiT generates at one size, its
`sample_size`, so only the batch is dynamic; the transformer's batch is `B_model`, twice the images
when classifier-free guidance doubles it (the manifest's `dims` says so).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.export import Dim

from .. import __version__
from ..engines.writing import claiming_engine_dir, writing_engine_dir
from ..errors import UsageError
from ..runtime.precision import dtype_name
from ..runtime.samplers.ddim import DDIM
from .checkpoint import Checkpoint, check_resources, release
from .common import (MEMORY_FACTOR, TORCH_PROGRAMS_LIMIT, Phases, cache_section, check_cache_options, checked,
                     finish)
from .dit import DitForecast, DitFull, DitShape
from .flux import VaeDecode
from .graphs import GraphIO, export_graph
from .source import resolve

# TaylorSeer-DiT's defaults: interval 4, the first two steps in full (its `first_enhance`), order 2 of
# the 4 it caches; DiTPipeline's own guidance scale.
CONFIG_KEYS = ("n_blocks", "dim", "head_dim", "in_channels", "out_channels", "patch_size", "sample_size", "num_classes")
DEFAULT_SCHEDULE = {"style": "taylorseer", "interval": 4, "order": 2, "warmup": 2, "final_full": 0}


def export_dit(model: str, out: str | Path, cache: str = "modules", max_order: int = 4,
               torch_program: bool | None = None, overwrite: bool = False, log: Callable[[str], None] = print,
               precision: str | None = None, factor_dtype: str | None = None, progress: bool = False,
               guidance_scale: float = 4.0) -> dict[str, Any]:
    """As export_flux (the same options, less the text encoders' and FP8's)."""
    check_cache_options(cache, max_order)
    with claiming_engine_dir(out, overwrite=overwrite, log=log) as claim:
        return _export_dit(model, claim, cache, max_order, torch_program, log, precision, factor_dtype, progress,
                           guidance_scale)


def _export_dit(model, claim, cache, max_order, torch_program, log, precision, factor_dtype, progress,
                guidance_scale) -> dict[str, Any]:
    source = resolve(model)
    ckpt = Checkpoint.open(source)
    precision = dtype_name(precision) if precision else ckpt.stored_dtype("transformer")
    factor_dtype = dtype_name(factor_dtype) if factor_dtype else precision
    transformer_bytes = ckpt.nbytes("transformer", precision)
    if torch_program is None:
        torch_program = transformer_bytes <= TORCH_PROGRAMS_LIMIT
    vae_bytes = ckpt.nbytes("vae", "float32")
    check_resources(claim.target, disk_bytes=int((transformer_bytes * 2 + vae_bytes) * (2 if torch_program else 1) * 1.05),
                    memory_bytes=int(max(transformer_bytes, vae_bytes) * MEMORY_FACTOR))
    sampler = DDIM.from_diffusers(ckpt.config("scheduler", "scheduler_config.json"))
    id2label = ckpt.index.get("id2label") or {}
    vae_cfg = ckpt.config("vae")
    vae_scale = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
    log(f"exporting {model} from {source} in {precision} (factors {factor_dtype}"
        f"{', torch programs' if torch_program else ''})")
    phases = Phases(4, progress, log)

    with writing_engine_dir(claim) as tmp:
        started = time.perf_counter()
        phases.start("transformer")
        transformer = ckpt.load("transformer", precision)
        shape = DitShape.of(transformer)
        graphs = checked(transformer, tmp, lambda d, check, programs: _export_transformer(
            transformer, shape, cache, max_order, d, programs, log, getattr(torch, factor_dtype), check),
            torch_program)
        del transformer
        release()

        phases.start("vae_decoder")
        vae = ckpt.load("vae", "float32")
        size = shape.sample_size
        graphs["vae_decoder"] = export_graph(
            VaeDecode(vae), [GraphIO("latents", torch.randn(2, shape.in_channels, size, size),
                                     {0: Dim("B", min=1, max=32)})],
            ["image"], [{0: "B"}], tmp, "vae_decoder", torch_program, tolerance=1e-3)
        del vae
        release()

        phases.start("manifest")
        labels = {str(int(k)): str(v) for k, v in id2label.items()}
        classes = {"count": shape.num_classes, **({"null_class": shape.num_classes} if shape.has_null_class else {}),
                   **({"labels": labels} if labels else {})}
        manifest = {
            "created_by": f"seer {__version__}",
            "model": {"family": "dit", "source": model, "config": {k: getattr(shape, k) for k in CONFIG_KEYS}},
            "precision": precision,
            "formats": ["onnx"] + (["torch"] if torch_program else []),
            "sampler": sampler.to_manifest(),
            "guidance": {"kind": "cfg" if shape.has_null_class else "none"},
            "dims": {"B_model": "G * B"},
            "latent": {"channels": shape.in_channels, "vae_scale_factor": vae_scale, "sample_size": size,
                       "vae_block_out_channels": list(vae_cfg["block_out_channels"])},
            "classes": classes,
            "cache": cache_section(shape, cache, max_order, factor_dtype),
            "defaults": {
                "height": size * vae_scale, "width": size * vae_scale, "steps": 50,
                "guidance_scale": guidance_scale if shape.has_null_class else 1.0,
                "schedule": {**DEFAULT_SCHEDULE, "order": min(DEFAULT_SCHEDULE["order"], max_order)},
            },
            "graphs": graphs,
        }
        manifest = finish(tmp, manifest, phases, started, log)
    return manifest


def _export_transformer(transformer, shape: DitShape, cache: str, max_order: int, tmp: Path, torch_program: bool,
                        log, factor_dtype: torch.dtype, check: bool = True) -> dict[str, Any]:
    dtype = next(transformer.parameters()).dtype
    b = Dim("B_model", min=1, max=256)
    size, n = shape.sample_size, (shape.sample_size // shape.patch_size) ** 2
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([1, min(2, shape.num_classes - 1)])
    step = [GraphIO("hidden_states", torch.randn(2, shape.in_channels, size, size, generator=g).to(dtype), {0: b}),
            GraphIO("timestep", torch.tensor([999.0, 500.0]), {0: b}),
            GraphIO("class_labels", labels, {0: b})]
    outputs = ["sample"] + (["features"] if cache == "modules" else [])
    log(f"exporting full ({shape.n_blocks} blocks, cache={cache})")
    full = export_graph(DitFull(transformer, cache), step, outputs, [{0: "B_model"}, {1: "B_model"}], tmp, "full",
                        torch_program, check=check)

    if cache == "modules":
        sample = (len(shape.stream_names(cache)), 2, n, shape.feature_dim(cache))
    else:
        sample = (1, 2, shape.out_channels, size, size)
    factors = [GraphIO(f"factor_{i}", (torch.randn(*sample, generator=g) / (i + 1)).to(factor_dtype), {1: b})
               for i in range(max_order + 1)]
    coefficients = GraphIO("coefficients", torch.tensor([1.0, 3.0, 4.5, 4.5, 3.375][: max_order + 1]))
    log("exporting forecast")
    forecast = DitForecast(transformer, cache)
    fc = export_graph(forecast, [*(step if cache == "modules" else []), coefficients, *factors], ["sample"],
                      [{0: "B_model"}], tmp, "forecast", torch_program, check=check)
    del forecast
    release()
    return {"full": full, "forecast": fc}


def refuse_flux_options(**given) -> None:
    """Options that only FLUX exports take, refused by name for a DiT pipeline."""
    for name, value in given.items():
        if value:
            raise UsageError(f"{name} applies to FLUX exports only; a DiT pipeline has no text encoder and no FP8 path "
                             "yet: leave it out")
