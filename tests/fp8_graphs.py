"""What the FP8 tests read out of a quantized graph."""

from __future__ import annotations

import onnx

from seer.calib import fp8


def layers(model: onnx.ModelProto) -> dict[str, dict]:
    """Per linear layer of the quantized graph: its node, Q/DQ nodes and initializers."""
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        layer = fp8._linear_module(node, "t.")
        if layer is None:
            continue
        dq_x, dq_w = producers.get(node.input[0]), producers.get(node.input[1])
        entry = {"node": node, "dq_x": dq_x, "dq_w": dq_w}
        if dq_x is not None and dq_x.op_type == "DequantizeLinear":
            entry["q"] = producers[dq_x.input[0]]
            entry["q_scale"] = inits[entry["q"].input[1]]
            entry["input_scale"] = inits[dq_x.input[1]]
            entry["weight_fp8"], entry["weight_scale"] = inits[dq_w.input[0]], inits[dq_w.input[1]]
            entry["zero"] = inits[entry["q"].input[2]]
        out[layer] = entry
    return out
