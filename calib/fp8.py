"""FP8 (E4M3) quantization of the full transformer path, calibrated where the schedule runs it.

Calibration runs the real diffusers pipeline on a prompt set and records, per quantizable linear
layer, the largest absolute input, but only at the denoising steps the deployed TaylorSeer schedule
runs in full: forecast steps never execute these layers, so their activations must not widen the
ranges. Results are a small JSON file, saved in the engine directory and reusable.

Quantization rewrites the exported `full` ONNX graph with standard QuantizeLinear/DequantizeLinear
pairs of type FLOAT8E4M3FN (opset 19), per tensor: activations scaled by calibrated max / 448,
weights by their own max / 448. TensorRT builds FP8 kernels from this form and ONNX Runtime (CPU)
runs it as written. Kept in full precision, as the research on fragile layers advises: the
embedders (x, context, timestep, guidance, pooled text), every modulation linear (the timestep
path), norm_out and the final proj_out. The forecast graph and the Taylor factors are untouched.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import UsageError
from ..prompts import read_prompt_file

E4M3_MAX = 448.0
FORMAT = "seer.fp8-calibration"
# Linear layers kept in full precision (module names of diffusers' FluxTransformer2DModel).
EXCLUDED = re.compile(r"^(x_embedder|context_embedder|time_text_embed\..*|norm_out\..*|proj_out"
                      r"|(transformer_blocks|single_transformer_blocks)\.\d+\.norm1?(_context)?\.linear)$")


def quantizable(name: str) -> bool:
    """Whether the transformer's linear layer `name` is quantized to FP8."""
    return EXCLUDED.match(name) is None


def read_prompts(path: str | Path) -> list[str]:
    return read_prompt_file(path, "calibration prompt file")


def calibrate(pipe, prompts: list[str], steps: int, full_steps: list[bool], height: int, width: int,
              max_sequence_length: int, guidance_scale: float = 3.5, seed: int = 0,
              log: Callable[[str], None] = print) -> dict:
    """Per quantizable linear layer of `pipe.transformer`: the largest |input| seen at full steps."""
    import torch

    if not prompts:
        raise UsageError("calibration needs at least one prompt")
    if len(full_steps) != steps:
        raise ValueError("full_steps must say, for every step, whether it runs in full")
    amax: dict[str, float] = {}
    state = {"record": full_steps[0], "calls": 0}

    def hook(name):
        def record(module, args):
            if state["record"]:
                amax[name] = max(amax.get(name, 0.0), float(args[0].detach().abs().max()))
                state["calls"] += name == first
        return record

    layers = [(n, m) for n, m in pipe.transformer.named_modules() if isinstance(m, torch.nn.Linear) and quantizable(n)]
    first = layers[0][0]
    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers]

    def next_step(_pipe, i, _t, kwargs):
        state["record"] = i + 1 < steps and full_steps[i + 1]
        return kwargs

    try:
        with torch.no_grad():
            for k, prompt in enumerate(prompts):
                state["record"] = full_steps[0]
                pipe(prompt, height=height, width=width, num_inference_steps=steps, guidance_scale=guidance_scale,
                     max_sequence_length=max_sequence_length, generator=torch.Generator().manual_seed(seed + k),
                     output_type="latent", callback_on_step_end=next_step)
                log(f"calibrated on {k + 1}/{len(prompts)} prompts")
    finally:
        for h in handles:
            h.remove()
    return {"format": FORMAT, "prompts": len(prompts), "steps": steps,
            "full_steps": [i for i, f in enumerate(full_steps) if f], "recorded_passes": state["calls"],
            "amax": amax}


def save_calibration(calibration: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(calibration, indent=1) + "\n")


def load_calibration(path: str | Path) -> dict:
    path = Path(path)
    try:
        calibration = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"cannot read the calibration {path} ({e}); pass a file seer-export --fp8 wrote") from None
    if calibration.get("format") != FORMAT or not calibration.get("amax"):
        raise UsageError(f"{path} is not an FP8 calibration (format {FORMAT}); re-run the calibration")
    return calibration


def quantize_graph(onnx_path: Path, amax: dict[str, float], prefix: str = "t.") -> dict[str, int]:
    """Rewrites `onnx_path` in place with FP8 Q/DQ around every calibrated linear layer.

    Layers are found by the module path the exporter records on each node (`prefix` is where the
    transformer sits in the exported module). Returns counts of quantized and kept linear nodes."""
    import ml_dtypes
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(onnx_path))
    for imp in model.opset_import:
        # FLOAT8 Q/DQ exist from opset 19; what 19 changed in the operators we export only adds types
        # and attributes whose defaults keep 18's behaviour (checked below, and by the tests' ONNX runs)
        if imp.domain in ("", "ai.onnx") and imp.version < 19:
            imp.version = 19
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    new_nodes, new_inits, counts = [], [], {"quantized": 0, "kept": 0}
    zero = helper.make_tensor("fp8_zero_point", onnx.TensorProto.FLOAT8E4M3FN, [], [0.0])
    for node in graph.node:
        layer = _linear_module(node, prefix)
        if layer is None:
            new_nodes.append(node)
            continue
        if layer not in amax or node.input[1] not in inits or consumers.get(node.input[1], 0) != 1:
            counts["kept"] += 1
            new_nodes.append(node)
            continue
        tag = node.name or f"linear_{counts['quantized']}"
        a_scale = max(amax[layer], 1e-12) / E4M3_MAX
        w = numpy_helper.to_array(inits.pop(node.input[1])).astype(np.float32)
        w_scale = max(float(np.abs(w).max()), 1e-12) / E4M3_MAX
        w8 = np.clip(w / w_scale, -E4M3_MAX, E4M3_MAX).astype(ml_dtypes.float8_e4m3fn)
        new_inits += [
            numpy_helper.from_array(np.array(a_scale, np.float32), f"{tag}.input_scale"),
            numpy_helper.from_array(np.array(w_scale, np.float32), f"{tag}.weight_scale"),
            helper.make_tensor(f"{tag}.weight_fp8", onnx.TensorProto.FLOAT8E4M3FN, list(w.shape),
                               w8.view(np.uint8).tobytes(), raw=True),
        ]
        new_nodes += [
            helper.make_node("QuantizeLinear", [node.input[0], f"{tag}.input_scale", "fp8_zero_point"],
                             [f"{tag}.input_fp8"], name=f"{tag}.quantize_input"),
            helper.make_node("DequantizeLinear", [f"{tag}.input_fp8", f"{tag}.input_scale"], [f"{tag}.input_dq"],
                             name=f"{tag}.dequantize_input"),
            helper.make_node("DequantizeLinear", [f"{tag}.weight_fp8", f"{tag}.weight_scale"], [f"{tag}.weight_dq"],
                             name=f"{tag}.dequantize_weight"),
        ]
        node.input[0], node.input[1] = f"{tag}.input_dq", f"{tag}.weight_dq"
        new_nodes.append(node)
        counts["quantized"] += 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    kept = [i for i in graph.initializer if i.name in inits]
    del graph.initializer[:]
    graph.initializer.extend([*kept, zero, *new_inits])
    onnx.checker.check_model(model)
    onnx.save(model, str(onnx_path))
    return counts


def _linear_module(node, prefix: str) -> str | None:
    """The transformer-relative module name of a linear layer's MatMul/Gemm node, else None."""
    if node.op_type not in ("MatMul", "Gemm"):
        return None
    meta = {p.key: p.value for p in node.metadata_props}
    hierarchy, scopes = meta.get("pkg.torch.onnx.class_hierarchy", ""), meta.get("pkg.torch.onnx.name_scopes", "")
    if "torch.nn.modules.linear.Linear" not in hierarchy or not scopes:
        return None
    names = [s.strip().strip("'\"") for s in scopes.strip("[]").split(",")]
    module = names[-2] if len(names) >= 2 else ""
    return module[len(prefix):] if module.startswith(prefix) else None
