"""seer-export for FLUX: a diffusers FLUX pipeline -> an engine directory.

Graphs: `clip` (pooled text embedding), `t5` (text hidden states), `full` and `forecast` (the two
transformer paths), `vae_decoder`. Tokenizers are stored as tokenizers' JSON so the runtime needs
neither transformers nor diffusers.

Precision: the graphs carry the checkpoint's own dtype unless `precision` says otherwise (FLUX.1-dev:
bfloat16), per graph where a component needs another one (`graph_precisions`). Memory: one
component is loaded at a time, in that dtype, exported with its weights streamed to disk and
released before the next, so the largest component (the transformer) bounds the export's memory.
Graphs too large to hold twice are checked against torch on a structurally identical slice (their
first repeated block of each kind, same weights, same export code) instead of whole.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch.export import Dim

from .. import __version__
from ..engines.writing import claiming_engine_dir, writing_engine_dir
from ..errors import UsageError
from ..runtime.precision import BYTES, dtype_name
from ..runtime.rope import flux_rope
from .checkpoint import Checkpoint, check_resources, release
from .common import (MEMORY_FACTOR, TORCH_PROGRAMS_LIMIT, Phases, cache_section, check_cache_options, checked,
                     finish)
from .flux import ClipPooled, FluxForecast, FluxFull, FluxShape, T5Hidden, VaeDecode
from .graphs import GraphIO, export_graph, save_torch_program
from .source import EMBEDDED, resolve

def graph_precisions(precision: str) -> dict[str, str]:
    """Each component's dtype in a directory of `precision`. T5 overflows in float16, so a float16
    directory runs it in float32 (bfloat16 would not run in ONNX Runtime, which runs float16
    directories); the VAE decoder stays float32: it runs once per image, ONNX's Conv takes no
    bfloat16 before opset 22, and a float16 VAE risks overflow on trained weights."""
    return {"text_encoder": precision, "text_encoder_2": "float32" if precision == "float16" else precision,
            "transformer": precision, "vae": "float32"}


def export_flux(
    model: str,
    out: str | Path,
    cache: str = "modules",
    max_order: int = 2,
    torch_program: bool | None = None,
    max_sequence_length: int | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    fp8: "FP8Options | None" = None,
    precision: str | None = None,
    factor_dtype: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """`precision`: fp32/fp16/bf16 (default: the checkpoint's); `factor_dtype`: the Taylor factors'
    dtype (default: the transformer's); `torch_program`: also store torch programs (default: when the
    transformer is under 2 GiB); `fp8`: quantize the full path to FP8 (calibrated at the default
    schedule's full steps); `progress`: a progress bar over the export's phases."""
    check_cache_options(cache, max_order)
    if max_sequence_length is not None and max_sequence_length < 1:
        raise UsageError(f"--max-sequence-length must be at least 1 (got {max_sequence_length})")
    prompts = fp8.prompts(model) if fp8 is not None and fp8.calibration is None else None  # bad input fails early
    # Before any work (a hub download included): a bad --out or a second export to it fails now.
    with claiming_engine_dir(out, overwrite=overwrite, log=log) as claim:
        return _export_flux(model, claim, cache, max_order, torch_program, max_sequence_length, log, fp8, precision,
                            factor_dtype, progress, prompts)


def _export_flux(model, claim, cache, max_order, torch_program, max_sequence_length, log, fp8, precision,
                 factor_dtype, progress, prompts) -> dict[str, Any]:
    source = resolve(model)
    ckpt = Checkpoint.open(source)
    precision = dtype_name(precision) if precision else ckpt.stored_dtype("transformer")
    dtypes = graph_precisions(precision)
    factor_dtype = dtype_name(factor_dtype) if factor_dtype else precision
    transformer_bytes = ckpt.nbytes("transformer", precision)
    if torch_program is None:
        torch_program = transformer_bytes <= TORCH_PROGRAMS_LIMIT
    components = ("text_encoder", "text_encoder_2", "transformer", "vae")
    graph_bytes = sum(ckpt.nbytes(c, dtypes[c]) for c in components)
    # FP8: the quantized full graph (about half the transformer) is written beside the 16-bit one first
    disk = graph_bytes * (2 if torch_program else 1) + (transformer_bytes // 2 if fp8 is not None else 0)
    check_resources(claim.target, disk_bytes=int(disk * 1.05),
                    memory_bytes=int(max(ckpt.nbytes(c, dtypes[c]) for c in components) * MEMORY_FACTOR))
    log(f"exporting {model} from {source} in {precision} (factors {factor_dtype}"
        f"{', torch programs' if torch_program else ''})")

    from diffusers import FluxPipeline

    # tokenizers and scheduler only: each network is loaded on its own, when its turn comes
    light = FluxPipeline.from_pretrained(source, transformer=None, text_encoder=None, text_encoder_2=None, vae=None)
    t_cfg, vae_cfg = ckpt.config("transformer"), ckpt.config("vae")
    guidance_embeds = bool(t_cfg.get("guidance_embeds"))
    if max_sequence_length is None:
        # FLUX.1-dev was trained with 512 T5 tokens, schnell with 256; smaller models say so in their tokenizer.
        limit = 512 if guidance_embeds else 256
        max_sequence_length = min(limit, int(light.tokenizer_2.model_max_length or limit))
    cap = min(512, int(light.tokenizer_2.model_max_length or 512))  # FluxPipeline takes at most 512
    if max_sequence_length > cap:
        raise UsageError(f"--max-sequence-length {max_sequence_length} is more than the {cap} T5 tokens this "
                         f"model takes; choose 1 to {cap}")
    vae_scale = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
    size = vae_cfg.get("sample_size")
    default_size = int(size if isinstance(size, int) else size[0]) if size else 1024
    defaults = {
        "height": default_size, "width": default_size, "steps": 50, "guidance_scale": 3.5,
        "schedule": {"style": "taylorseer", "interval": 6, "order": 1, "warmup": 3, "final_full": 0},
    }
    phases = Phases(6 + (fp8 is not None), progress, log)

    with writing_engine_dir(claim) as tmp:
        started = time.perf_counter()
        calibration = None
        if fp8 is not None:
            phases.start("calibrating FP8")
            calibration = _calibration(source, precision, fp8, prompts, defaults, max_sequence_length, log)
        phases.start("tokenizers")
        text = _export_tokenizers(light, tmp, max_sequence_length)
        graphs = {}
        b = Dim("B", min=1, max=256)
        ids = lambda n: torch.zeros(2, n, dtype=torch.int64)  # noqa: E731

        phases.start("clip")
        clip = ckpt.load("text_encoder", dtypes["text_encoder"])
        graphs["clip"] = checked(clip, tmp, lambda d, check, programs: export_graph(
            ClipPooled(clip), [GraphIO("input_ids", ids(text["clip"]["max_length"]), {0: b})],
            ["pooled_projections"], [{0: "B"}], d, "clip", programs, check=check), torch_program)
        del clip
        release()

        phases.start("t5")
        t5 = ckpt.load("text_encoder_2", dtypes["text_encoder_2"])
        out_dtype = getattr(torch, precision) if dtypes["text_encoder_2"] != precision else None
        graphs["t5"] = checked(t5, tmp, lambda d, check, programs: export_graph(
            T5Hidden(t5, out_dtype), [GraphIO("input_ids", ids(max_sequence_length), {0: b})],
            ["encoder_hidden_states"], [{0: "B"}], d, "t5", programs, check=check), torch_program)
        del t5
        release()

        phases.start("transformer")
        transformer = ckpt.load("transformer", precision)
        shape = FluxShape.of(transformer)
        amax = calibration["amax"] if calibration is not None else None
        graphs.update(checked(transformer, tmp, lambda d, check, programs: _export_transformer(
            transformer, cache, max_order, max_sequence_length, d, programs, log, getattr(torch, factor_dtype), check,
            amax), torch_program))
        del transformer
        release()

        phases.start("vae_decoder")
        vae = ckpt.load("vae", dtypes["vae"])
        h, w = Dim("H_latent", min=2, max=1024), Dim("W_latent", min=2, max=1024)
        c = vae.config.latent_channels
        graphs["vae_decoder"] = export_graph(
            # the VAE's convolutions bound the batch lower than the transformer's
            VaeDecode(vae), [GraphIO("latents", torch.randn(2, c, 4, 6, dtype=vae.dtype),
                                     {0: Dim("B", min=1, max=32), 2: 2 * h, 3: 2 * w})],
            ["image"], [{0: "B", 2: "H", 3: "W"}], tmp, "vae_decoder", torch_program, tolerance=1e-3)
        del vae
        release()

        quantization = None
        if calibration is not None:
            phases.start("quantizing full to FP8")
            quantization = _quantize_full(tmp, graphs, calibration, precision, log)
        phases.start("manifest")
        sched = light.scheduler.config
        manifest = {
            "created_by": f"seer {__version__}",
            "model": {"family": "flux", "source": model, "config": dict(shape.__dict__)},
            "precision": precision,
            "formats": ["onnx"] + (["torch"] if torch_program else []),
            "sampler": {
                "type": "flow_match_euler",
                **{k: sched[k] for k in ("num_train_timesteps", "shift", "use_dynamic_shifting",
                                                   "base_shift", "max_shift", "base_image_seq_len",
                                                   "max_image_seq_len") if k in sched},
            },
            "guidance": {"kind": "embedded" if shape.guidance else "none"},
            # the graphs' symbols from the request's pixels: one token per 2x2 patch of latent pixels
            "dims": {"N_img": f"(H // {2 * vae_scale}) * (W // {2 * vae_scale})", "H_latent": f"H // {2 * vae_scale}",
                     "W_latent": f"W // {2 * vae_scale}"},
            "latent": {"channels": c, "vae_scale_factor": vae_scale, "packed_channels": shape.in_channels,
                       # the VAE decoder's widths: the runtime's memory estimate scales with them
                       "vae_block_out_channels": list(vae_cfg["block_out_channels"])},
            "text": text,
            "cache": cache_section(shape, cache, max_order, factor_dtype),
            "defaults": defaults,
            "graphs": graphs,
            **({"quantization": quantization} if quantization else {}),
        }
        manifest = finish(tmp, manifest, phases, started, log)
    return manifest


@dataclass(frozen=True)
class FP8Options:
    """seer-export --fp8: where the calibration comes from."""

    calibration: str | None = None  # a saved calibration to reuse; None: calibrate now
    prompt_file: str | None = None  # None: the model's own default prompt set
    size: int = 32  # prompts
    steps: int | None = None  # None: the directory's default steps

    def prompts(self, model: str) -> list[str]:
        from ..calib.fp8 import read_prompts

        if self.size < 1:
            raise UsageError(f"--calibration-size must be at least 1 (got {self.size})")
        if self.prompt_file is not None:
            return read_prompts(self.prompt_file)[: self.size]
        if model == EMBEDDED:  # the shapes world, minus the prompts seer-eval judges by default
            from ..evaluate import shapes

            held_out = {s.prompt for s in shapes.eval_specs(36)}
            return [p for p in shapes.PROMPTS if p not in held_out][:: 7][: self.size]
        return read_prompts(Path(__file__).parent.parent / "calib" / "prompts.txt")[: self.size]


def _calibration(source: Path, precision: str, fp8: FP8Options, prompts, defaults: dict, text_len: int,
                 log) -> dict[str, Any]:
    """A saved calibration, or one made now by running the real pipeline in the export's precision."""
    from ..calib import fp8 as q
    from ..runtime.schedule import Schedule

    if fp8.calibration is not None:
        calibration = q.load_calibration(fp8.calibration)
        log(f"using the FP8 calibration {fp8.calibration} ({calibration['prompts']} prompts)")
        return calibration
    from diffusers import FluxPipeline

    steps = fp8.steps or defaults["steps"]
    d = defaults["schedule"]
    full = Schedule.taylorseer(steps, d["interval"], min(d["warmup"], steps), d["final_full"]).full
    log(f"calibrating FP8 ranges on {len(prompts)} prompts at the {sum(full)} full steps of {steps} "
        f"(interval {d['interval']}, warm-up {d['warmup']})")
    pipe = FluxPipeline.from_pretrained(source, dtype=getattr(torch, precision))
    try:
        return q.calibrate(pipe, prompts, steps, list(full), defaults["height"], defaults["width"], text_len,
                           defaults["guidance_scale"], log=log)
    finally:
        del pipe
        release()


def _quantize_full(tmp: Path, graphs: dict, calibration: dict, precision: str, log) -> dict[str, Any]:
    """Rewrites full.onnx with FP8 Q/DQ (dequantizing to the graph's precision), saves the calibration."""
    from ..calib import fp8 as q

    rel = "calibration/fp8.json"
    q.save_calibration(calibration, tmp / rel)
    counts = q.quantize_graph(tmp / graphs["full"]["onnx"], calibration["amax"])
    log(f"full: {counts['quantized']} linear layers in FP8 E4M3, {counts['kept']} kept in {precision}")
    return {"full": {"format": "fp8-e4m3fn", "scaling": "per-tensor; activations: calibrated max; weights: max",
                     "form": "onnx QuantizeLinear/DequantizeLinear, opset 19", **counts, "calibration": rel,
                     "dequantize_to": precision, "min_compute_capability": "8.9"}}


def _export_transformer(transformer, cache: str, max_order: int, text_len: int, tmp: Path, torch_program: bool,
                        log, factor_dtype: torch.dtype, check: bool = True,
                        fp8_amax: dict[str, float] | None = None) -> dict[str, Any]:
    """The full and forecast graphs. With `fp8_amax` and torch programs, the full graph's program is
    the FP8 one (the transformer's calibrated linear layers replaced in place, after the ONNX
    export: `quantize_graph` rewrites that one)."""
    shape = FluxShape.of(transformer)
    dtype = next(transformer.parameters()).dtype
    b, n = Dim("B", min=1, max=256), Dim("N_img", min=2, max=65536)
    rows, cols = 4, 6  # any sample grid; the exported graphs take every image-token count
    n_img = rows * cols
    cos, sin = (torch.from_numpy(a) for a in flux_rope(text_len, rows, cols, shape.axes_dims_rope, shape.rope_theta))
    g = torch.Generator().manual_seed(0)

    def rnd(*s, dt=dtype):
        return torch.randn(*s, generator=g).to(dt)

    # timestep and guidance stay float32 inputs (the graphs cast them), as do the rotary tables
    step = [GraphIO("timestep", torch.tensor([0.9, 0.3]), {0: b})]
    if shape.guidance:
        step.append(GraphIO("guidance", torch.tensor([3.5, 1.0]), {0: b}))
    latents = GraphIO("hidden_states", rnd(2, n_img, shape.in_channels), {0: b, 1: n})
    pooled = GraphIO("pooled_projections", rnd(2, shape.pooled_dim), {0: b})
    full_inputs = [latents, GraphIO("encoder_hidden_states", rnd(2, text_len, shape.joint_attention_dim), {0: b}),
                   pooled, *step,
                   GraphIO("rope_cos", cos, {0: n + text_len}), GraphIO("rope_sin", sin, {0: n + text_len})]
    outputs = ["sample"] + (["features"] if cache == "modules" else [])
    log(f"exporting full ({shape.n_double} double + {shape.n_single} single blocks, cache={cache})")
    fp8_program = torch_program and fp8_amax is not None
    full = export_graph(FluxFull(transformer, cache), full_inputs, outputs,
                        [{0: "B", 1: "N_img"}, {1: "B", 2: "N_img"}], tmp, "full", torch_program and not fp8_program,
                        check=check)

    streams, dim = len(shape.stream_names(cache)), shape.feature_dim(cache)
    factors = [GraphIO(f"factor_{i}", rnd(streams, 2, n_img, dim, dt=factor_dtype) / (i + 1), {1: b, 2: n})
               for i in range(max_order + 1)]
    coefficients = GraphIO("coefficients", torch.tensor([1.0, 3.0, 4.5, 4.5, 3.375][: max_order + 1]))
    step_inputs = [latents, pooled, *step] if cache == "modules" else []
    log("exporting forecast")
    forecast_module = FluxForecast(transformer, cache)
    fc = export_graph(forecast_module, [*step_inputs, coefficients, *factors], ["sample"],
                      [{0: "B", 1: "N_img"}], tmp, "forecast", torch_program, check=check)
    del forecast_module
    release()  # its fused gate matrix is a copy of the gate rows
    if fp8_program:
        from ..calib.fp8 import quantize_module

        log(f"full: torch program with {quantize_module(transformer, fp8_amax)} FP8 linear layers")
        full["torch"] = save_torch_program(FluxFull(transformer, cache), tmp, "full", full_inputs)
    return {"full": full, "forecast": fc}


def _export_tokenizers(pipe, tmp: Path, t5_len: int) -> dict[str, Any]:
    """Save both tokenizers as tokenizers' JSON plus the padding the pipeline applies."""
    out = {}
    (tmp / "tokenizers").mkdir()
    for key, tok, length in (("clip", pipe.tokenizer, pipe.tokenizer_max_length), ("t5", pipe.tokenizer_2, t5_len)):
        fast = tok if getattr(tok, "is_fast", False) else _to_fast(tok)
        path = f"tokenizers/{key}.json"
        fast.backend_tokenizer.save(str(tmp / path))
        out[key] = {"tokenizer": path, "max_length": int(length), "pad_id": int(fast.pad_token_id),
                    "pad_token": str(fast.pad_token)}
    return out


def _to_fast(tok):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tok.name_or_path, use_fast=True)

