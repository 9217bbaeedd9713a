"""torch module -> one graph of an engine directory: ONNX (for ONNX Runtime and TensorRT) and,
optionally, the same torch.export program as .pt2 (for the torch backend, the numerical
reference). Every graph is checked by onnx's checker and run once in ONNX Runtime against torch
before the directory is accepted.
"""

from __future__ import annotations

import logging
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


def export_graph(
    module: torch.nn.Module,
    inputs: list[GraphIO],
    output_names: list[str],
    output_dims: list[dict[int, str]],
    directory: Path,
    name: str,
    torch_program: bool,
    tolerance: float = 1e-4,
) -> dict[str, Any]:
    """Export `module` as `<name>.onnx` (+ `<name>.pt2`); return its manifest entry."""
    module = module.eval()
    args = tuple(i.sample for i in inputs)
    dynamic = _dynamic_shapes(module, [i.dims for i in inputs]) if any(i.dims for i in inputs) else None
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(module, args, dynamic_shapes=dynamic, strict=False)
        expected = program.module()(*args)
    expected = expected if isinstance(expected, (tuple, list)) else (expected,)

    onnx_path = directory / f"{name}.onnx"
    big = sum(p.numel() * p.element_size() for p in module.parameters()) > EXTERNAL_DATA_THRESHOLD
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(
            program,
            args,
            input_names=[i.name for i in inputs],
            output_names=output_names,
            opset_version=OPSET,
            dynamo=True,
            external_data=big,
            verbose=False,
        )
    model = onnx_program.model_proto
    check_no_float64(model, name)
    _strip_stack_traces(model)
    if big:
        onnx.save_model(model, onnx_path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{name}.onnx.data", size_threshold=1024)
    else:
        onnx.save_model(model, onnx_path)
    onnx.checker.check_model(str(onnx_path), full_check=False)
    _check_in_onnxruntime(onnx_path, inputs, output_names, expected, tolerance)

    entry: dict[str, Any] = {
        "onnx": onnx_path.name,
        "inputs": [tensor_spec(i.name, _DTYPES[i.sample.dtype], _shape(i.sample, i.dims)) for i in inputs],
        "outputs": [
            tensor_spec(n, _DTYPES[e.dtype], _shape(e, None, d)) for n, e, d in zip(output_names, expected, output_dims)
        ],
    }
    if big:
        entry["onnx_data"] = f"{name}.onnx.data"
    if torch_program:
        torch.export.save(program, directory / f"{name}.pt2")
        entry["torch"] = f"{name}.pt2"
    return entry


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


def _check_in_onnxruntime(path: Path, inputs: list[GraphIO], names: list[str], expected, tolerance: float) -> None:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    got = sess.run(names, {i.name: i.sample.numpy() for i in inputs})
    for n, g, e in zip(names, got, expected):
        e = e.detach().float().numpy()
        err = float(np.max(np.abs(g.astype(np.float32) - e)) / (np.max(np.abs(e)) + 1e-12))
        if not err <= tolerance:
            raise RuntimeError(f"{path.name}: ONNX Runtime output {n} differs from torch (relative error {err:.2e})")


def _strip_stack_traces(model) -> None:
    """The exporter records each node's Python stack trace, with the exporting machine's file paths;
    an engine directory ships to other machines, so they go (module scopes stay: FP8 uses them)."""
    for node in model.graph.node:
        kept = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
