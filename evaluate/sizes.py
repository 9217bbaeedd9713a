"""Model sizes for seer-bench: the same command on the embedded model, a mid-size FLUX config on a
CPU, and FLUX-sized configs on a GPU.

- `tiny`: the embedded, trained flux-tiny as shipped (64x64 images, 16 text tokens).
- `mid`: a random-weight FLUX transformer of 70.6M parameters (4 double + 8 single blocks, width
  512) at 512x512 (1024 image tokens); big enough that a step's cost is compute, not call overhead.
- `flux-slim`: FLUX.1-dev's block width (24 heads x 128, 3072) at 1024x1024 with 512 text tokens,
  but 2 double + 4 single blocks (1.3B parameters). A forecast step's cost and a full step's cost
  both grow linearly with the block count, so their ratio, which decides how close a schedule gets
  to its ideal, is FLUX.1-dev's.
- `flux`: FLUX.1-dev's transformer as published (19 double + 38 single blocks, 11.9B parameters).

The random-weight sizes keep flux-tiny's text encoders, tokenizers and VAE: they run once per image,
outside the loop TaylorSeer accelerates, and (random weights having no meaning) their only job is to
feed the transformer tensors of the right shapes. Quality numbers on random weights measure fidelity
to --no-cache only; prompt following is judged on `tiny` alone.

A size is built once into a work directory (the model, then a --cache modules and a --cache lite
engine directory, with torch programs for --backend torch and TensorRT plans for --backend
tensorrt) and reused while its recorded configuration matches.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import UsageError


@dataclass(frozen=True)
class Size:
    name: str
    summary: str
    transformer: dict | None = None  # FluxTransformer2DModel config over flux-tiny's; None: flux-tiny itself
    resolution: int | None = None  # image side in pixels (the VAE's sample_size)
    max_sequence_length: int | None = None  # T5 tokens; None: flux-tiny's
    gpu_only: bool = False
    granularities: tuple[str, ...] = field(default=("modules", "lite"))
    precision: str = "float32"  # the graphs' (FLUX-sized configs: bfloat16, as FLUX.1-dev ships)


# FLUX.1-dev's transformer (black-forest-labs/FLUX.1-dev, transformer/config.json), except the text
# widths, which are the encoders' we feed it (flux-tiny's: 32).
_FLUX_DEV = dict(patch_size=1, in_channels=64, out_channels=None, num_layers=19, num_single_layers=38,
                 attention_head_dim=128, num_attention_heads=24, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
_TEXT = dict(joint_attention_dim=32, pooled_projection_dim=32)

SIZES: dict[str, Size] = {s.name: s for s in (
    Size("tiny", "flux-tiny, the embedded trained model: 64x64, 16 text tokens, 0.6M-parameter transformer"),
    Size("mid", "random-weight FLUX transformer, 4 double + 8 single blocks of width 512 (70.6M parameters), "
                "512x512 (1024 image tokens)",
         transformer=dict(patch_size=1, in_channels=64, num_layers=4, num_single_layers=8, attention_head_dim=64,
                          num_attention_heads=8, guidance_embeds=False, axes_dims_rope=(16, 24, 24), **_TEXT),
         resolution=512),
    Size("flux-slim", "random-weight FLUX.1-dev-width transformer, 2 double + 4 single blocks (1.3B parameters), "
                      "1024x1024 (4096 image tokens), 512 text tokens",
         transformer={**_FLUX_DEV, "num_layers": 2, "num_single_layers": 4, **_TEXT}, resolution=1024,
         max_sequence_length=512, gpu_only=True, precision="bfloat16"),
    Size("flux", "random-weight FLUX.1-dev transformer (19 double + 38 single blocks, 11.9B parameters), "
                 "1024x1024 (4096 image tokens), 512 text tokens",
         transformer={**_FLUX_DEV, **_TEXT}, resolution=1024, max_sequence_length=512, gpu_only=True,
         precision="bfloat16", granularities=("modules",)),  # one directory: ~25 GB of graphs each
)}


def get(name: str, device: str, precision: str | None = None) -> Size:
    """The size `name`; `precision` (fp32/fp16/bf16) overrides its default precision."""
    from ..runtime.precision import dtype_name

    if name not in SIZES:
        raise UsageError(f"unknown size {name!r}; choose one of {', '.join(SIZES)}")
    size = SIZES[name]
    if precision is not None:
        size = dataclasses.replace(size, precision=dtype_name(precision))
    if size.gpu_only and not device.startswith("cuda"):
        raise UsageError(f"--size {name} is FLUX-sized and needs a GPU: add --device cuda (with --backend torch "
                         "or tensorrt), or use --size mid on a CPU")
    return size


def build_model(size: Size, out: Path, seed: int = 0) -> Path:
    """A diffusers FLUX pipeline directory: flux-tiny with `size`'s random-weight transformer."""
    import torch
    from diffusers import FluxPipeline, FluxTransformer2DModel

    from ..export.source import embedded_dir

    pipe = FluxPipeline.from_pretrained(embedded_dir(), dtype=torch.float32)
    if size.transformer is not None:
        torch.manual_seed(seed)
        default = torch.get_default_dtype()
        torch.set_default_dtype(getattr(torch, size.precision))  # initialised and saved in its precision
        try:
            pipe.register_modules(transformer=FluxTransformer2DModel(**size.transformer))
        finally:
            torch.set_default_dtype(default)
    if size.resolution is not None:
        pipe.vae.register_to_config(sample_size=size.resolution)
    if size.max_sequence_length is not None:
        pipe.tokenizer_2.model_max_length = size.max_sequence_length
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def prepare(size: Size, work: Path, backend: str, log: Callable[[str], None] = print) -> list[Path]:
    """The size's engine directories (one per cache granularity) under `work`, built when missing or
    when the recorded configuration differs, else reused."""
    from ..export.flux_export import export_flux

    record = {"size": asdict(size), "backend": backend}
    marker = work / "size.json"
    dirs = [work / g for g in size.granularities]
    if marker.is_file() and json.loads(marker.read_text()) == json.loads(json.dumps(record)) \
            and all((d / "manifest.json").is_file() for d in dirs):
        log(f"reusing the {size.name} engine directories in {work}")
        return dirs
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    model = "flux-tiny"
    if size.transformer is not None or size.resolution is not None:
        log(f"building the {size.name} model: {size.summary}")
        model = str(build_model(size, work / "model"))
    for granularity, d in zip(size.granularities, dirs):
        log(f"exporting {size.name} --cache {granularity}")
        export_flux(model, d, cache=granularity, torch_program=backend == "torch",
                    max_sequence_length=size.max_sequence_length, log=log, precision=size.precision)
        if backend == "tensorrt":
            from ..engines.tensorrt_build import build_plans

            log(f"building the TensorRT plans of {d.name}")
            build_plans(d, log=log)
    marker.write_text(json.dumps(record, indent=1) + "\n")  # last: a marker means every directory is whole
    return dirs
