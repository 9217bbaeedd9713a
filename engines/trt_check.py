"""Static TensorRT-readiness check of ONNX graphs: what the TensorRT ONNX parser and a strongly
typed network will refuse, found without TensorRT (it cannot be installed everywhere seer is built).

Rules (each finding names its rule, where it is, and the fix):

- `size`: the .onnx protobuf itself must stay under 2 GiB; weights beyond that go to external data,
  and every external data file must sit beside the graph.
- `opset`: the default-domain opset must be one the parser reads.
- `float64`: no DOUBLE tensor anywhere (initializers, constants, casts, I/O, intermediate values):
  TensorRT casts them down silently at best.
- `operator`: every node is an operator of TensorRT's support table, a custom operator the parser
  imports natively, or a local function made of those.
- `dtype`: every tensor has a type TensorRT has, UINT8 only at the graph's edges, and every operator
  runs on a type the table lists for it.
- `io-dtype`: graph inputs and outputs are FP32, FP16, BF16, INT32, INT64, BOOL or UINT8 (quantized
  types exist only inside a network, between Q/DQ nodes).
- `typing`: strict ONNX type inference passes, and operators whose ONNX schema allows mixed input
  types (Pow) get one type: a strongly typed network inserts no casts of its own.
- `constant-input`: inputs the parser needs at build time (Slice/Squeeze/Unsqueeze/Reduce* axes, ...)
  are initializers or Constant outputs.
- `restriction`: attribute values the parser documents as unsupported (Resize modes, antialiasing),
  and outputs it does not import (LayerNormalization's mean and inverse deviation).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import UsageError
from . import trt_support as support

PROTOBUF_LIMIT = 2**31 - 1
IO_TYPES = frozenset({"FP32", "FP16", "BF16", "INT32", "INT64", "BOOL", "UINT8"})
# which tensor carries an operator's data type ("in0" first input, "in1" second, "out0" first output)
_TYPED_BY = {"Where": "in1", "Constant": "out0", "ConstantOfShape": "out0", "RandomNormal": "out0",
             "RandomUniform": "out0", "EyeLike": "out0"}
_UNTYPED = {"Shape", "Size", "Identity", "QuantizeLinear", "DequantizeLinear"}  # take any type


@dataclass(frozen=True)
class Finding:
    rule: str
    graph: str
    where: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.graph}: [{self.rule}] {self.where}: {self.message} (fix: {self.fix})"

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def check_onnx(path: str | Path) -> list[Finding]:
    """Every rule on one .onnx file (external data is not read, only looked for)."""
    try:
        import onnx
    except ImportError:
        raise UsageError("checking ONNX graphs needs the onnx package: pip install onnx") from None

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path} is not a file; pass an engine directory or .onnx files")
    graph_name = path.name
    found: list[Finding] = []

    def add(rule: str, where: str, message: str, fix: str) -> None:
        found.append(Finding(rule, graph_name, where, message, fix))

    if path.stat().st_size > PROTOBUF_LIMIT:
        add("size", path.name, f"the protobuf is {path.stat().st_size / 2**30:.2f} GiB, over the 2 GiB limit",
            "save the weights as external data (onnx.save(..., save_as_external_data=True))")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # a file onnx cannot read is the first thing to report
        add("size", path.name, f"onnx cannot read the file ({type(e).__name__}: {e})", "re-export the graph")
        return found
    for init in _all_initializers(model.graph):
        if init.data_location == onnx.TensorProto.EXTERNAL:
            location = {e.key: e.value for e in init.external_data}.get("location", "")
            if not (path.parent / location).is_file():
                add("size", init.name, f"its external data file {location!r} is missing",
                    "keep the external data file beside the .onnx file")

    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            lo, hi = support.OPSET_RANGE
            if not lo <= imp.version <= hi:
                add("opset", "opset_import", f"opset {imp.version} is outside the parser's {lo}-{hi}",
                    f"export with an opset between {lo} and {hi}")
            opset = imp.version
            break
    else:
        opset = support.OPSET_RANGE[1]

    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as e:
        add("typing", "graph", f"strict type inference fails: {str(e).splitlines()[0][:300]}",
            "insert explicit Cast nodes so that every operator's inputs share the type its schema asks for")
        inferred = model
    types = _tensor_types(inferred.graph)
    constants = {i.name for i in _all_initializers(inferred.graph)}
    constants |= {o for n, _ in _nodes(inferred) if n.op_type == "Constant" for o in n.output}
    io = {v.name for v in [*inferred.graph.input, *inferred.graph.output]}
    consumed = {i for n, _ in _nodes(inferred) for i in n.input} | {v.name for v in inferred.graph.output}

    for name, elem in types.items():
        trt = support.ONNX_TYPES.get(elem, "?")
        if elem == "DOUBLE":
            add("float64", name, "is a float64 tensor", "compute it in float32 (or feed it as a float32 input)")
        elif trt in (None, "?"):
            add("dtype", name, f"has type {elem}, which TensorRT does not have", "cast it to a TensorRT type")
        elif trt in support.IO_ONLY and name not in io:
            add("dtype", name, f"is {elem} inside the network; TensorRT takes UINT8 only as input or output",
                "cast it to INT32 or a float type")
    for v in [*inferred.graph.input, *inferred.graph.output]:
        elem = types.get(v.name)
        trt = support.ONNX_TYPES.get(elem or "", None)
        if elem and elem != "DOUBLE" and trt not in IO_TYPES:
            add("io-dtype", v.name, f"graph input/output of type {elem}",
                f"give the graph's edges one of {', '.join(sorted(IO_TYPES))}")

    local_functions = {(f.domain, f.name) for f in inferred.functions}
    for node, where in _nodes(inferred):
        label = f"{where}{node.name or node.op_type}"
        if node.op_type == "Cast" and _attr(node, "to") == onnx.TensorProto.DOUBLE:
            add("float64", label, "casts to float64", "cast to float32 instead")
        if node.domain not in ("", "ai.onnx"):
            if (node.domain, node.op_type) in local_functions:
                continue
            if node.op_type not in support.CUSTOM_OPERATORS.get(node.domain, ()):
                add("operator", label, f"custom operator {node.domain}::{node.op_type} has no TensorRT importer",
                    "replace it with standard ONNX operators or supply a TensorRT plugin")
            continue
        if node.op_type not in support.OPERATORS:
            why = "is documented as unsupported" if node.op_type in support.UNSUPPORTED else "is not in the support table"
            add("operator", label, f"{node.op_type} {why} by the TensorRT ONNX parser",
                "rewrite the model so that the exporter emits supported operators")
            continue
        dtype = _node_type(node, types)
        allowed = support.OPERATORS[node.op_type]
        trt = support.ONNX_TYPES.get(dtype or "", None)
        if trt and trt not in allowed and trt not in support.QUANTIZED and dtype != "DOUBLE":
            add("dtype", label, f"{node.op_type} on {trt} tensors; TensorRT runs it in {', '.join(allowed)}",
                f"cast its inputs to one of {', '.join(allowed)}")
        if node.op_type == "Pow" and len(node.input) == 2:
            a, b = (types.get(x) for x in node.input)
            if a and b and a != b:
                add("typing", label, f"Pow of {a} by {b}: a strongly typed network does not cast the exponent",
                    f"cast the exponent to {a}")
        for attr, accepted in support.ATTRIBUTE_VALUES.get(node.op_type, {}).items():
            value = _attr(node, attr)
            value = value.decode() if isinstance(value, bytes) else value
            if value is not None and value not in accepted:
                add("restriction", label, f"{node.op_type} {attr}={value!r} is not supported by TensorRT",
                    f"export with {attr} one of {', '.join(sorted(map(str, accepted)))}")
        if node.op_type in support.FIRST_OUTPUT_ONLY and any(o in consumed for o in node.output[1:] if o):
            add("restriction", label, f"{node.op_type}'s extra outputs are used; TensorRT imports only the first",
                "recompute the statistics from the first output")
        if node.op_type in support.CONSTANT_INPUTS:
            wanted = support.CONSTANT_INPUTS[node.op_type]
            index = _input_index(node.op_type, opset, wanted)
            if index is not None and index < len(node.input) and node.input[index] \
                    and node.input[index] not in constants:
                add("constant-input", label, f"input {wanted!r} of {node.op_type} is computed at run time",
                    "make it an initializer or a Constant (constant-fold the graph)")
    return found


def check_engine_dir(directory: str | Path) -> dict[str, list[Finding]]:
    """Every ONNX graph an engine directory's manifest names -> its findings."""
    from .manifest import read_manifest

    directory = Path(directory)
    manifest = read_manifest(directory, verify=False)
    return {name: check_onnx(directory / g["onnx"]) for name, g in manifest["graphs"].items()}


def _all_initializers(graph) -> Iterator[Any]:
    yield from graph.initializer
    for node in graph.node:
        for sub in _subgraphs(node):
            yield from _all_initializers(sub)


def _subgraphs(node) -> Iterator[Any]:
    for a in node.attribute:
        if a.g.node or a.g.output:
            yield a.g
        yield from a.graphs


def _nodes(model) -> Iterator[tuple[Any, str]]:
    """Every node of the graph, its subgraphs and its local functions, with where it sits."""

    def walk(nodes, prefix):
        for n in nodes:
            yield n, prefix
            for sub in _subgraphs(n):
                yield from walk(sub.node, f"{prefix}{n.name or n.op_type}/")

    yield from walk(model.graph.node, "")
    for f in model.functions:
        yield from walk(f.node, f"{f.domain}::{f.name}/")


def _tensor_types(graph) -> dict[str, str]:
    import onnx

    names: dict[str, str] = {}

    def note(name: str, elem: int) -> None:
        if name and elem:
            names[name] = onnx.TensorProto.DataType.Name(elem)

    def walk(g) -> None:
        for v in [*g.input, *g.output, *g.value_info]:
            if v.type.HasField("tensor_type"):
                note(v.name, v.type.tensor_type.elem_type)
        for init in g.initializer:
            note(init.name, init.data_type)
        for n in g.node:
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value":
                        note(n.output[0], a.t.data_type)
            for sub in _subgraphs(n):
                walk(sub)

    walk(graph)
    return names


def _node_type(node, types: dict[str, str]) -> str | None:
    if node.op_type in _UNTYPED:
        return None
    which = _TYPED_BY.get(node.op_type, "in0")
    names = node.output if which.startswith("out") else node.input
    index = int(which[-1])
    return types.get(names[index]) if index < len(names) else None


def _attr(node, name: str):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return None


def _input_index(op_type: str, opset: int, name: str) -> int | None:
    """Where input `name` sits in the operator's schema at this opset (None: an attribute there)."""
    import onnx

    try:
        schema = onnx.defs.get_schema(op_type, opset)
    except Exception:
        return None
    names = [i.name for i in schema.inputs]
    return names.index(name) if name in names else None
