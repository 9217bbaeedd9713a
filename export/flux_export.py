"""seer-export for FLUX: a diffusers FLUX pipeline -> an engine directory.

Graphs: `clip` (pooled text embedding), `t5` (text hidden states), `full` and `forecast` (the two
transformer paths), `vae_decoder`. Tokenizers are stored as tokenizers' JSON so the runtime needs
neither transformers nor diffusers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch.export import Dim

from .. import __version__
from ..engines.manifest import write_manifest, writing_engine_dir
from ..errors import UsageError
from ..runtime.rope import flux_rope
from .flux import GRANULARITIES, ClipPooled, FluxForecast, FluxFull, FluxShape, T5Hidden, VaeDecode
from .graphs import GraphIO, export_graph
from .source import EMBEDDED, resolve

MAX_ORDER_LIMIT = 4


def export_flux(
    model: str,
    out: str | Path,
    cache: str = "modules",
    max_order: int = 2,
    torch_program: bool = True,
    max_sequence_length: int | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    fp8: "FP8Options | None" = None,
) -> dict[str, Any]:
    """`fp8`: quantize the full path to FP8 (calibrated at the default schedule's full steps)."""
    if cache not in GRANULARITIES:
        raise UsageError(f"unknown cache granularity {cache!r}; choose one of {', '.join(GRANULARITIES)}")
    if not 0 <= max_order <= MAX_ORDER_LIMIT:
        raise UsageError(f"--max-order must be between 0 and {MAX_ORDER_LIMIT} (got {max_order})")
    if fp8 is not None and torch_program:
        log("--fp8: the torch programs would stay float32, so none are stored (use --backend onnxruntime/tensorrt)")
        torch_program = False
    prompts = fp8.prompts(model) if fp8 is not None and fp8.calibration is None else None  # bad input fails early
    source = resolve(model)
    log(f"loading {model} from {source}")
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(source, dtype=torch.float32)
    for m in (pipe.transformer, pipe.text_encoder, pipe.text_encoder_2, pipe.vae):
        m.eval().requires_grad_(False)
    shape = FluxShape.of(pipe.transformer)
    if max_sequence_length is None:
        # FLUX.1-dev was trained with 512 T5 tokens, schnell with 256; smaller models say so in their tokenizer.
        limit = 512 if shape.guidance else 256
        max_sequence_length = min(limit, int(pipe.tokenizer_2.model_max_length or limit))
    vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    size = pipe.vae.config.sample_size
    default_size = int(size if isinstance(size, int) else size[0]) if size else 1024

    with writing_engine_dir(out, overwrite=overwrite) as tmp:
        started = time.perf_counter()
        text = _export_tokenizers(pipe, tmp, max_sequence_length)
        graphs = {}
        b = Dim("B", min=1, max=256)
        ids = lambda n: torch.zeros(2, n, dtype=torch.int64)  # noqa: E731
        log("exporting clip")
        graphs["clip"] = export_graph(
            ClipPooled(pipe.text_encoder), [GraphIO("input_ids", ids(text["clip"]["max_length"]), {0: b})],
            ["pooled_projections"], [{0: "B"}], tmp, "clip", torch_program)
        log("exporting t5")
        graphs["t5"] = export_graph(
            T5Hidden(pipe.text_encoder_2), [GraphIO("input_ids", ids(max_sequence_length), {0: b})],
            ["encoder_hidden_states"], [{0: "B"}], tmp, "t5", torch_program)
        graphs.update(_export_transformer(pipe.transformer, shape, cache, max_order, max_sequence_length,
                                          tmp, torch_program, log))
        log("exporting vae_decoder")
        h, w = Dim("H_latent", min=2, max=1024), Dim("W_latent", min=2, max=1024)
        c = pipe.vae.config.latent_channels
        graphs["vae_decoder"] = export_graph(
            # the VAE's convolutions bound the batch lower than the transformer's
            VaeDecode(pipe.vae), [GraphIO("latents", torch.randn(2, c, 4, 6), {0: Dim("B", min=1, max=32),
                                                                                 2: 2 * h, 3: 2 * w})],
            ["image"], [{0: "B", 2: "H", 3: "W"}], tmp, "vae_decoder", torch_program, tolerance=1e-3)

        defaults = {
            "height": default_size, "width": default_size, "steps": 50, "guidance_scale": 3.5,
            "schedule": {"style": "taylorseer", "interval": 6, "order": 1, "warmup": 3, "final_full": 0},
        }
        quantization = None
        if fp8 is not None:
            quantization = _quantize_full(pipe, tmp, graphs, fp8, prompts, defaults, max_sequence_length, log)
        sched = pipe.scheduler.config
        manifest = {
            "created_by": f"seer {__version__}",
            "model": {"family": "flux", "source": model, "config": dict(shape.__dict__)},
            "precision": "float32",
            "formats": ["onnx"] + (["torch"] if torch_program else []),
            "sampler": {
                "type": "flow_match_euler",
                **{k: sched[k] for k in ("num_train_timesteps", "shift", "use_dynamic_shifting",
                                                   "base_shift", "max_shift", "base_image_seq_len",
                                                   "max_image_seq_len") if k in sched},
            },
            "latent": {"channels": c, "vae_scale_factor": vae_scale, "packed_channels": shape.in_channels},
            "text": text,
            "cache": {
                "granularity": cache,
                "max_order": max_order,
                "streams": shape.stream_names(cache),
                "feature_dim": shape.feature_dim(cache),
                "feature_output": "sample" if cache == "lite" else "features",
            },
            "defaults": defaults,
            "graphs": graphs,
            **({"quantization": quantization} if quantization else {}),
        }
        manifest = write_manifest(tmp, manifest)
        _log_tensorrt_readiness(tmp, graphs, log)
        log(f"exported in {time.perf_counter() - started:.1f} s")
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


def _quantize_full(pipe, tmp: Path, graphs: dict, fp8: FP8Options, prompts, defaults: dict, text_len: int,
                   log) -> dict[str, Any]:
    """Calibrates (or loads a calibration), rewrites full.onnx with FP8 Q/DQ, saves the calibration."""
    from ..calib import fp8 as q
    from ..runtime.schedule import Schedule

    if fp8.calibration is not None:
        calibration = q.load_calibration(fp8.calibration)
        log(f"using the FP8 calibration {fp8.calibration} ({calibration['prompts']} prompts)")
    else:
        steps = fp8.steps or defaults["steps"]
        d = defaults["schedule"]
        full = Schedule.taylorseer(steps, d["interval"], min(d["warmup"], steps), d["final_full"]).full
        log(f"calibrating FP8 ranges on {len(prompts)} prompts at the {sum(full)} full steps of {steps} "
            f"(interval {d['interval']}, warm-up {d['warmup']})")
        calibration = q.calibrate(pipe, prompts, steps, list(full), defaults["height"], defaults["width"], text_len,
                                  defaults["guidance_scale"], log=log)
    rel = "calibration/fp8.json"
    q.save_calibration(calibration, tmp / rel)
    counts = q.quantize_graph(tmp / graphs["full"]["onnx"], calibration["amax"])
    log(f"full: {counts['quantized']} linear layers in FP8 E4M3, {counts['kept']} kept in float32")
    return {"full": {"format": "fp8-e4m3fn", "scaling": "per-tensor; activations: calibrated max; weights: max",
                     "form": "onnx QuantizeLinear/DequantizeLinear, opset 19", **counts, "calibration": rel,
                     "min_compute_capability": "8.9"}}


def _log_tensorrt_readiness(directory: Path, graphs: dict[str, Any], log) -> None:
    """The static TensorRT check on every graph just written (seer-check runs the same later)."""
    from ..engines.trt_check import check_onnx

    findings = [f for g in graphs.values() for f in check_onnx(directory / g["onnx"])]
    if not findings:
        log(f"TensorRT readiness: all {len(graphs)} graphs pass seer-check")
        return
    log(f"warning: {len(findings)} TensorRT readiness problem(s); ONNX Runtime still runs this directory:")
    for f in findings[:20]:
        log(f"  {f}")


def _export_transformer(transformer, shape: FluxShape, cache: str, max_order: int, text_len: int,
                        tmp: Path, torch_program: bool, log) -> dict[str, Any]:
    b, n = Dim("B", min=1, max=256), Dim("N_img", min=2, max=65536)
    rows, cols = 4, 6  # any sample grid; the exported graphs take every image-token count
    n_img = rows * cols
    cos, sin = (torch.from_numpy(a) for a in flux_rope(text_len, rows, cols, shape.axes_dims_rope, shape.rope_theta))
    g = torch.Generator().manual_seed(0)

    def rnd(*s):
        return torch.randn(*s, generator=g)

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
    full = export_graph(FluxFull(transformer, cache), full_inputs, outputs,
                        [{0: "B", 1: "N_img"}, {1: "B", 2: "N_img"}], tmp, "full", torch_program)

    streams, dim = len(shape.stream_names(cache)), shape.feature_dim(cache)
    factors = [GraphIO(f"factor_{i}", rnd(streams, 2, n_img, dim) / (i + 1), {1: b, 2: n})
               for i in range(max_order + 1)]
    coefficients = GraphIO("coefficients", torch.tensor([1.0, 3.0, 4.5, 4.5, 3.375][: max_order + 1]))
    step_inputs = [latents, pooled, *step] if cache == "modules" else []
    log("exporting forecast")
    fc = export_graph(FluxForecast(transformer, cache), [*step_inputs, coefficients, *factors], ["sample"],
                      [{0: "B", 1: "N_img"}], tmp, "forecast", torch_program)
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

