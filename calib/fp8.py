"""FP8 (E4M3) quantization of the full transformer path, calibrated where the schedule runs it.

Calibration runs the real diffusers pipeline on a prompt set and records, per quantizable linear
layer, the largest absolute input, but only at the denoising steps the deployed TaylorSeer schedule
runs in full: forecast steps never execute these layers, so their activations must not widen the
ranges. Results are a small JSON file, saved in the engine directory and reusable.

Quantization rewrites the exported `full` ONNX graph with standard QuantizeLinear/DequantizeLinear
pairs of type FLOAT8E4M3FN (opset 19), per tensor, dequantizing to the graph's own precision
(float32, float16 or bfloat16: the scales are stored in it): activations scaled by calibrated
max / 448, weights by their own max / 448. TensorRT builds FP8 kernels from this form and ONNX
Runtime (CPU) runs it as written (float32 and float16 graphs: its CPU provider has no bfloat16
kernels). Kept in the graph's precision, as the research on fragile layers advises: the embedders
(x, context, timestep, guidance, pooled text), every modulation linear (the timestep path),
norm_out and the final proj_out. The forecast graph and the Taylor factors are untouched.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import UsageError
from ..export.flux import FP8_KEPT
from ..prompts import read_prompt_file

E4M3_MAX = 448.0
FORMAT = "seer.fp8-calibration"


def quantizable(name: str, kept: re.Pattern = FP8_KEPT) -> bool:
    """Whether the transformer's linear layer `name` is quantized to FP8 (`kept`: the family's
    layers that stay in float, FLUX's by default)."""
    return kept.match(name) is None


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
    transformer sits in the exported module). Q/DQ dequantize to each layer's own precision (its
    weight's dtype: float32, float16 or bfloat16), so the scales are stored in that dtype.

    Memory: the graph is read with onnx_ir, whose external tensors stay memory-mapped; a weight is
    read (widened to float32) once for its scale and once more while the new graph is written, one
    tensor at a time, and kept weights are copied file to file. The result is written beside the
    original (a hidden scratch folder in the same directory), checked, then moved over it with
    os.replace: the data file being read is never written. The layout is kept: external data in the
    same file name when the input had it (one file; several become `<name>.data`), else one file.
    Returns counts of quantized and kept linear nodes."""
    import onnx_ir as ir

    onnx_path = Path(onnx_path)
    model = ir.load(onnx_path)
    sources = _external_locations(model)
    _load_external_attributes(model)
    counts = _insert_qdq(model, amax, prefix)
    data = None
    if sources:
        data = next(iter(sources)) if len(sources) == 1 else f"{onnx_path.name}.data"
    _save_over(model, onnx_path, data, stale=sources - {data})
    return counts


# The scale dtype of a layer is its weight's dtype (opset 19: DequantizeLinear outputs the scale's
# type, QuantizeLinear takes a scale of its input's type).
def _scale_dtypes() -> dict:
    import ml_dtypes
    import onnx_ir as ir

    return {ir.DataType.FLOAT: np.dtype(np.float32), ir.DataType.FLOAT16: np.dtype(np.float16),
            ir.DataType.BFLOAT16: np.dtype(ml_dtypes.bfloat16)}


def fp8_scale(amax: float, dtype) -> np.ndarray:
    """The per-tensor scale `amax / 448`, computed in float32 and rounded to `dtype` (a 0-d array).

    Floored at the smallest normal number of `dtype` (and of float32 at 1e-12 / 448), so that it
    never rounds to zero (float16's normals end at 6.1e-5: tensors with max below 0.027 then use
    less of FP8's range, which E4M3's exponent range absorbs)."""
    import ml_dtypes

    dtype = np.dtype(dtype)
    scale = np.float32(max(float(amax), 1e-12)) / np.float32(E4M3_MAX)
    tiny = np.float32(ml_dtypes.finfo(dtype).tiny) if dtype != np.float32 else np.float32(0)
    return np.asarray(max(scale, tiny), np.float32).astype(dtype)


def fp8_quantize(w: np.ndarray, scale, in_place: bool = False) -> np.ndarray:
    """`w / scale` (in float32, `scale` the already rounded scale) clipped to ±448, as float8_e4m3fn.
    `in_place`: `w` is a float32 array that may be overwritten (saves a copy of it)."""
    import ml_dtypes

    w = w if in_place and isinstance(w, np.ndarray) and w.dtype == np.float32 else np.array(w, dtype=np.float32)
    np.divide(w, np.float32(scale), out=w)
    np.clip(w, -E4M3_MAX, E4M3_MAX, out=w)
    return w.astype(ml_dtypes.float8_e4m3fn)


def _widened(tensor) -> np.ndarray:
    """A float32 copy of an initializer's data; an external tensor's file mapping is closed after."""
    import onnx_ir as ir

    try:
        return np.array(tensor.numpy(), dtype=np.float32)
    finally:
        if isinstance(tensor, ir.ExternalTensor):
            tensor.release()


def _absmax(tensor) -> float:
    w = _widened(tensor)
    return float(max(w.max(), -w.min())) if w.size else 0.0


def _insert_qdq(model, amax: dict[str, float], prefix: str) -> dict[str, int]:
    import ml_dtypes
    import onnx_ir as ir

    graph = model.graph
    for domain in ("", "ai.onnx"):
        # FLOAT8 Q/DQ exist from opset 19; what 19 changed in the operators we export only adds types
        # and attributes whose defaults keep 18's behaviour (checked by the checker and the tests' ONNX runs)
        if graph.opset_imports.get(domain, 19) < 19:
            graph.opset_imports[domain] = 19
    scale_dtypes = _scale_dtypes()
    zero = graph.initializers.get("fp8_zero_point")
    if zero is None:
        zero = ir.Value(name="fp8_zero_point",
                        const_value=ir.tensor(np.zeros((), ml_dtypes.float8_e4m3fn), name="fp8_zero_point"))
    replaced: dict[str, list] = {}  # weight initializer -> the initializers taking its place
    counts = {"quantized": 0, "kept": 0}
    for node in list(graph):
        layer = _linear_module(node, prefix)
        if layer is None:
            continue
        x, w = node.inputs[0], node.inputs[1] if len(node.inputs) > 1 else None
        source = w.const_value if w is not None and w.is_initializer() else None
        if (layer not in amax or source is None or source.dtype not in scale_dtypes or len(w.uses()) != 1
                or w.is_graph_input() or w.is_graph_output() or (x.dtype is not None and x.dtype != source.dtype)):
            counts["kept"] += 1
            continue
        dtype = source.dtype
        tag = node.name or f"linear_{counts['quantized']}"
        a_scale = fp8_scale(amax[layer], scale_dtypes[dtype])
        w_scale = fp8_scale(_absmax(source), scale_dtypes[dtype])
        # the FP8 weight is made when the graph is saved (one at a time), from the weight read again
        fp8 = ir.LazyTensor(lambda source=source, s=w_scale: ir.tensor(fp8_quantize(_widened(source), s, True)),
                            dtype=ir.DataType.FLOAT8E4M3FN, shape=source.shape, name=f"{tag}.weight_fp8")
        a_scale_v = ir.Value(name=f"{tag}.input_scale", const_value=ir.tensor(a_scale, name=f"{tag}.input_scale"))
        w_scale_v = ir.Value(name=f"{tag}.weight_scale", const_value=ir.tensor(w_scale, name=f"{tag}.weight_scale"))
        w8 = ir.Value(name=f"{tag}.weight_fp8", const_value=fp8)
        x_shape = None if x.shape is None else x.shape.copy()
        x8 = ir.Value(name=f"{tag}.input_fp8", type=ir.TensorType(ir.DataType.FLOAT8E4M3FN), shape=x_shape)
        x_dq = ir.Value(name=f"{tag}.input_dq", type=ir.TensorType(dtype),
                        shape=None if x_shape is None else x_shape.copy())
        w_dq = ir.Value(name=f"{tag}.weight_dq", type=ir.TensorType(dtype), shape=ir.Shape(source.shape))
        graph.insert_before(node, [
            ir.node("QuantizeLinear", [x, a_scale_v, zero], outputs=[x8], name=f"{tag}.quantize_input"),
            ir.node("DequantizeLinear", [x8, a_scale_v], outputs=[x_dq], name=f"{tag}.dequantize_input"),
            ir.node("DequantizeLinear", [w8, w_scale_v], outputs=[w_dq], name=f"{tag}.dequantize_weight"),
        ])
        node.replace_input_with(0, x_dq)
        node.replace_input_with(1, w_dq)
        replaced[w.name] = [a_scale_v, w_scale_v, w8]
        counts["quantized"] += 1
    # the initializers in their order, each quantized weight's in its place (weights of a layer stay
    # adjacent in the data file); the zero point first
    order = [zero]
    for value in graph.initializers.values():
        if value is not zero:
            order += replaced.get(value.name, [value])
    graph.initializers.clear()
    for value in order:
        graph.register_initializer(value)
    return counts


def _external_locations(model) -> set[str]:
    """The external data files (as the graph names them) the model's initializers are stored in."""
    import onnx_ir as ir

    return {os.path.normpath(v.const_value.location) for g in model.graphs() for v in g.initializers.values()
            if isinstance(v.const_value, ir.ExternalTensor)}


def _load_external_attributes(model) -> None:
    """Tensor attributes stored as external data (rare) read into memory: only initializers are
    rewritten to the new data file, and the old one is replaced."""
    import onnx_ir as ir

    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for attr in list(node.attributes.values()):
            if attr.is_ref():
                continue
            if attr.type == ir.AttributeType.TENSOR and isinstance(attr.value, ir.ExternalTensor):
                node.attributes[attr.name] = ir.AttrTensor(attr.name, ir.tensor(np.array(attr.value.numpy()),
                                                                                name=attr.value.name))
                attr.value.release()
            elif attr.type == ir.AttributeType.TENSORS and any(isinstance(t, ir.ExternalTensor) for t in attr.value):
                node.attributes[attr.name] = ir.AttrTensors(attr.name, [
                    ir.tensor(np.array(t.numpy()), name=t.name) if isinstance(t, ir.ExternalTensor) else t
                    for t in attr.value])


def _save_over(model, onnx_path: Path, data: str | None, stale: set[str]) -> None:
    """Saves `model` as `onnx_path` (external data in `data`, relative to it, or none), replacing
    the files there only once the new ones are complete and pass the checker; removes `stale` data files."""
    import shutil
    import tempfile

    import onnx
    import onnx_ir as ir

    directory = onnx_path.parent
    scratch = Path(tempfile.mkdtemp(dir=directory, prefix=f".{onnx_path.name}.", suffix=".tmp"))
    try:
        out = scratch / onnx_path.name
        if data is not None:
            (scratch / data).parent.mkdir(parents=True, exist_ok=True)
        ir.save(model, out, external_data=data)
        onnx.checker.check_model(str(out))
        shutil.copymode(onnx_path, out)
        if data is not None and (directory / data).exists():
            shutil.copymode(directory / data, scratch / data)
        for g in model.graphs():  # close the mappings of the files about to be replaced
            for v in g.initializers.values():
                if isinstance(v.const_value, ir.ExternalTensor):
                    v.const_value.release()
        if data is not None:
            os.replace(scratch / data, directory / data)
        os.replace(out, onnx_path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    root = directory.resolve()
    kept = (directory / data).resolve() if data is not None else None
    for location in stale:  # data files of the old graph, inside its directory, that the new one does not use
        path = (directory / location).resolve()
        if path != kept and root in path.parents:
            path.unlink(missing_ok=True)


def _linear_module(node, prefix: str) -> str | None:
    """The transformer-relative module name of a linear layer's MatMul/Gemm node (an onnx NodeProto
    or an onnx_ir Node), else None."""
    if node.op_type not in ("MatMul", "Gemm"):
        return None
    props = node.metadata_props  # an onnx_ir Node's: a dict; an onnx NodeProto's: key/value entries
    meta = dict(props) if isinstance(props, Mapping) else {p.key: p.value for p in props}
    hierarchy, scopes = meta.get("pkg.torch.onnx.class_hierarchy", ""), meta.get("pkg.torch.onnx.name_scopes", "")
    if "torch.nn.modules.linear.Linear" not in hierarchy or not scopes:
        return None
    names = [s.strip().strip("'\"") for s in scopes.strip("[]").split(",")]
    module = names[-2] if len(names) >= 2 else ""
    return module[len(prefix):] if module.startswith(prefix) else None


def quantize_module(transformer, amax: dict[str, float]) -> int:
    """Replaces, in place, every calibrated linear layer of `transformer` by an `FP8Linear` with
    the scales and FP8 weights `quantize_graph` writes into the ONNX graph (the weights are freed
    as they are replaced). Its torch program is then the FP8 graph's numerical reference, on any
    device torch runs on (an emulation: it is not faster than the unquantized graph)."""
    import torch

    fp8_linear = _fp8_linear_class()
    count = 0
    for name, module in list(transformer.named_modules()):
        if isinstance(module, torch.nn.Linear) and quantizable(name) and name in amax:
            owner, _, attr = name.rpartition(".")
            setattr(transformer.get_submodule(owner) if owner else transformer, attr, fp8_linear(module, amax[name]))
            count += 1
    return count


@functools.cache
def _fp8_linear_class():
    """The FP8 linear layer's class, made on first use: torch is imported only where it is needed."""
    import torch

    class FP8Linear(torch.nn.Module):
        """y = DQ(Q(x)) DQ(Q(W))^T + b, per tensor, as the FP8 Q/DQ graph computes it: quantizing in
        float32, the scales rounded to the layer's dtype, dequantizing to that dtype."""

        def __init__(self, linear: torch.nn.Linear, amax: float):
            super().__init__()
            dtype = linear.weight.dtype
            import ml_dtypes

            np_dtype = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: ml_dtypes.bfloat16}[dtype]
            w = linear.weight.detach().float().numpy()
            w_scale = fp8_scale(float(np.abs(w).max()) if w.size else 0.0, np_dtype)
            w8 = fp8_quantize(w, w_scale, in_place=True)
            self.register_buffer("weight_fp8", torch.from_numpy(w8.view(np.uint8)).view(torch.float8_e4m3fn))
            self.register_buffer("weight_scale", torch.tensor(float(w_scale), dtype=torch.float32))
            self.register_buffer("input_scale", torch.tensor(float(fp8_scale(amax, np_dtype)), dtype=torch.float32))
            self.bias = linear.bias

        def forward(self, x):
            q = (x.float() / self.input_scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
            x = (q.float() * self.input_scale).to(x.dtype)
            w = (self.weight_fp8.float() * self.weight_scale).to(x.dtype)
            return torch.nn.functional.linear(x, w, self.bias)

    return FP8Linear
