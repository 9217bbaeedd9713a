"""torch module -> one graph of an engine directory: ONNX (for ONNX Runtime and TensorRT) and,
optionally, the same torch.export program as .pt2 (for the torch backend, the numerical
reference).

Weights never exist twice: the exporter's in-memory model refers to the module's own tensors, and
saving streams them to the graph's external data file one at a time. Every graph is checked by
onnx's checker; with `check` it is also run in ONNX Runtime against torch. A 16-bit graph is checked
with its 16-bit tensors widened to float32 (ONNX Runtime's CPU provider has no bfloat16 kernels)
against the module in float32 on the same, already rounded, weights: the two compute the same
function, so the check is as tight as a float32 one and catches any wrong operator or weight.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from ..engines.manifest import tensor_spec

# Above this the graph's weights go to a side file: protobuf cannot hold more than 2 GiB.
EXTERNAL_DATA_THRESHOLD = 1 << 30
OPSET = 18

_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.int64: "int64"}
_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
                onnx.TensorProto.BFLOAT16: "bfloat16", onnx.TensorProto.INT64: "int64"}
_NARROW = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
# the relative rounding of an output stored in this dtype: a widened check allows for it
_OUTPUT_ROUNDING = {"float32": 0.0, "float16": 2.0**-10, "bfloat16": 2.0**-7}


@dataclass
class GraphIO:
    name: str
    sample: torch.Tensor
    dims: dict[int, Any] | None = None
    """Dynamic dims: axis -> torch.export.Dim (or derived Dim); symbolic name recorded as str(dim)."""


def _shape(t: torch.Tensor, dims: dict[int, Any] | None, names: dict[int, str] | None = None) -> list:
    out = []
    for i, n in enumerate(t.shape):
        if names and i in names:
            out.append(names[i])
        elif dims and i in dims:
            out.append(str(dims[i].__name__) if hasattr(dims[i], "__name__") else str(dims[i]))
        else:
            out.append(int(n))
    return out


def weight_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def export_graph(
    module: torch.nn.Module,
    inputs: list[GraphIO],
    output_names: list[str],
    output_dims: list[dict[int, Any]],
    directory: Path,
    name: str,
    torch_program: bool,
    tolerance: float = 1e-4,
    check: bool = True,
) -> dict[str, Any]:
    """Export `module` as `<name>.onnx` (+ `<name>.onnx.data`, + `<name>.pt2`); return its manifest
    entry. `check`: run the graph in ONNX Runtime against torch (skip it for graphs too large to
    hold twice; their exporter checks a structurally identical slice instead)."""
    import onnx_ir as ir

    module = module.eval()
    args = tuple(i.sample for i in inputs)
    dynamic = _dynamic_shapes(module, [i.dims for i in inputs]) if any(i.dims for i in inputs) else None
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(module, args, dynamic_shapes=dynamic, strict=False)

    onnx_path = directory / f"{name}.onnx"
    big = weight_bytes(module) > EXTERNAL_DATA_THRESHOLD
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(None):
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(program, args, input_names=[i.name for i in inputs],
                                         output_names=output_names, opset_version=OPSET, dynamo=True,
                                         external_data=big, verbose=False)
    _strip_stack_traces(onnx_program.model)
    # the in-memory model refers to the module's tensors: saving streams them, nothing is copied whole
    ir.save(onnx_program.model, onnx_path, external_data=f"{name}.onnx.data" if big else None)
    del onnx_program
    header = onnx.load(str(onnx_path), load_external_data=False)  # the graph without its weights
    check_no_float64(header, name)
    onnx.checker.check_model(str(onnx_path), full_check=False)
    out_types = {o.name: _ONNX_DTYPES[o.type.tensor_type.elem_type] for o in header.graph.output}
    if check:
        _check_in_onnxruntime(onnx_path, module, inputs, output_names, out_types, tolerance)

    entry: dict[str, Any] = {
        "onnx": onnx_path.name,
        "precision": _precision(module),
        "inputs": [tensor_spec(i.name, _DTYPES[i.sample.dtype], _shape(i.sample, i.dims)) for i in inputs],
        "outputs": [tensor_spec(n, out_types[n], _output_shape(header, n, d)) for n, d in zip(output_names, output_dims)],
    }
    if big:
        entry["onnx_data"] = f"{name}.onnx.data"
    if torch_program:
        entry["torch"] = save_torch_program(program, directory, name)
    return entry


def save_torch_program(module_or_program, directory: Path, name: str, inputs: list[GraphIO] | None = None) -> str:
    """`<name>.pt2`: a torch.export program (or one made of `module` on `inputs`); returns its file name."""
    program = module_or_program
    if inputs is not None:
        args = tuple(i.sample for i in inputs)
        dynamic = _dynamic_shapes(module_or_program, [i.dims for i in inputs]) if any(i.dims for i in inputs) else None
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(module_or_program.eval(), args, dynamic_shapes=dynamic, strict=False)
    torch.export.save(program, directory / f"{name}.pt2")
    return f"{name}.pt2"


def _precision(module: torch.nn.Module) -> str:
    """The dtype most of a module's floating-point weights have."""
    count: dict[str, int] = {}
    for p in module.parameters():
        if p.is_floating_point():
            count[_DTYPES[p.dtype]] = count.get(_DTYPES[p.dtype], 0) + p.numel()
    return max(count, key=count.get) if count else "float32"


def _output_shape(header: onnx.ModelProto, name: str, names: dict[int, Any]) -> list:
    """An output's shape as the manifest records it: the exporter's dims, with our symbolic names."""
    out = next(o for o in header.graph.output if o.name == name)
    dims = out.type.tensor_type.shape.dim
    return [names[i] if i in names else (int(d.dim_value) if d.HasField("dim_value") else d.dim_param)
            for i, d in enumerate(dims)]


def _dynamic_shapes(module: torch.nn.Module, dims: list) -> dict[str, Any]:
    """torch.export keys dynamic shapes by forward()'s parameters, with *args as one tuple."""
    import inspect

    out: dict[str, Any] = {}
    rest = list(dims)
    for p in inspect.signature(module.forward).parameters.values():
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            out[p.name], rest = tuple(rest), []
        elif rest:
            out[p.name] = rest.pop(0)
    return out


def check_no_float64(model: onnx.ModelProto, name: str) -> None:
    bad = [t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.DOUBLE]
    bad += [v.name for v in [*model.graph.input, *model.graph.output, *model.graph.value_info]
            if v.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE]
    bad += [n.name for n in model.graph.node if n.op_type == "Cast"
            and any(a.name == "to" and a.i == onnx.TensorProto.DOUBLE for a in n.attribute)]
    if bad:
        raise RuntimeError(f"graph {name} carries float64 tensors {bad[:5]}; TensorRT cannot take them")


def _check_in_onnxruntime(path: Path, module: torch.nn.Module, inputs: list[GraphIO], names: list[str],
                          out_types: dict[str, str], tolerance: float) -> None:
    import onnxruntime as ort

    narrow = any(p.dtype in (torch.float16, torch.bfloat16) for p in [*module.parameters(), *module.buffers()])
    widen = lambda t: t.float() if t.is_floating_point() else t  # noqa: E731
    reference = copy.deepcopy(module).float() if narrow else module
    samples = [widen(i.sample) for i in inputs]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = reference(*samples)
    del reference
    expected = expected if isinstance(expected, (tuple, list)) else (expected,)

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix=f"{path.stem}-check-") as scratch:
        graph = path
        if narrow:  # ONNX Runtime's CPU provider runs no bfloat16: the same graph with float32 tensors
            model = onnx.load(str(path))
            widen_to_float32(model)
            graph = Path(scratch) / path.name
            onnx.save_model(model, str(graph), save_as_external_data=True, location=f"{path.name}.data",
                            size_threshold=1024)
            del model
        sess = ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
        got = sess.run(names, {i.name: s.numpy() for i, s in zip(inputs, samples)})
        del sess
    for n, g, e in zip(names, got, expected):
        e = e.detach().float().numpy()
        err = float(np.max(np.abs(g.astype(np.float32) - e)) / (np.max(np.abs(e)) + 1e-12))
        if not err <= max(tolerance, _OUTPUT_ROUNDING[out_types[n]]):
            raise RuntimeError(f"{path.name}: ONNX Runtime output {n} differs from torch (relative error {err:.2e})")


def widen_to_float32(model: onnx.ModelProto) -> None:
    """Every float16/bfloat16 tensor, cast, constant and value type of `model` made float32, in place."""
    from onnx import numpy_helper

    def widen_tensor(t: onnx.TensorProto) -> None:
        if t.data_type in _NARROW:
            wide = numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name)
            t.CopyFrom(wide)

    graph = model.graph
    for t in graph.initializer:
        widen_tensor(t)
    for v in [*graph.input, *graph.output, *graph.value_info]:
        if v.type.tensor_type.elem_type in _NARROW:
            v.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    for node in graph.node:
        for a in node.attribute:
            if a.name == "to" and node.op_type == "Cast" and a.i in _NARROW:
                a.i = onnx.TensorProto.FLOAT
            elif a.type == onnx.AttributeProto.TENSOR:
                widen_tensor(a.t)


def _strip_stack_traces(model) -> None:
    """The exporter records each node's Python stack trace, with the exporting machine's file paths;
    an engine directory ships to other machines, so they go (module scopes stay: FP8 uses them)."""
    for node in model.graph.all_nodes():
        node.metadata_props.pop("pkg.torch.onnx.stack_trace", None)
