"""Validate built TensorRT plans against ONNX Runtime on the same graphs, with Polygraphy's Comparator.

For every graph: random inputs at the plan's `opt` profile shapes (token ids within the tokenizer's
vocabulary), both runners, and an element-wise comparison of every output. This is what a user with
TensorRT runs after seer-build (`seer-check DIR --compare`); it needs TensorRT and a GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import EngineDirError, UsageError
from .manifest import read_manifest
from .tensorrt_build import require_tensorrt


def comparison_inputs(directory: Path, manifest: dict, graph: str) -> tuple[dict, dict]:
    """(name -> (dtype, shape)) at the plan's opt shapes, and (name -> value range) for the data loader."""
    plans = manifest["tensorrt"]["plans"]
    shapes, ranges = {}, {}
    for i in manifest["graphs"][graph]["inputs"]:
        shapes[i["name"]] = (np.dtype(i["dtype"]), plans[graph]["profile"][i["name"]]["opt"])
        if i["name"] == "input_ids":
            encoder = "clip" if graph == "clip" else "t5"
            vocab = _vocab_size(directory / manifest["text"][encoder]["tokenizer"])
            ranges[i["name"]] = (0, vocab - 1)
    return shapes, ranges


def compare_plans(directory: str | Path, atol: float = 1e-3, rtol: float = 1e-3, iterations: int = 2,
                  device: str = "cuda", log: Callable[[str], None] = print) -> dict[str, bool]:
    """graph -> whether every output of its plan matches ONNX Runtime within atol/rtol."""
    directory = Path(directory)
    manifest = read_manifest(directory, verify=True)
    built = manifest.get("tensorrt")
    if not built:
        raise EngineDirError(f"{directory} has no TensorRT plans to compare; build them with: seer-build {directory}")
    if built.get("options", {}).get("strip_plan"):
        raise UsageError("weight-stripped plans carry no weights to compare; build without --strip-plan to validate")
    require_tensorrt()
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.backend.trt import EngineFromPath, TrtRunner
    from polygraphy.common import TensorMetadata
    from polygraphy.comparator import Comparator, CompareFunc, DataLoader

    import onnxruntime as ort

    providers = ["cuda", "cpu"] if device.startswith("cuda") else ["cpu"]
    # basic: ONNX Runtime's extended fusions would turn FP8 Q/DQ pairs into integer kernels that reject FP8
    level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC if manifest.get("quantization") else None
    verdicts = {}
    for graph, entry in built["plans"].items():
        shapes, ranges = comparison_inputs(directory, manifest, graph)
        meta = TensorMetadata()
        for name, (dtype, shape) in shapes.items():
            meta.add(name, dtype, shape)
        loader = DataLoader(seed=0, iterations=iterations, input_metadata=meta, val_range=ranges or None)
        session = SessionFromOnnx(str(directory / manifest["graphs"][graph]["onnx"]), providers=providers,
                                  graph_optimization_level=level)
        runners = [OnnxrtRunner(session),
                   TrtRunner(EngineFromPath(str(directory / entry["plan"])))]
        results = Comparator.run(runners, data_loader=loader)
        verdicts[graph] = bool(Comparator.compare_accuracy(
            results, compare_func=CompareFunc.simple(atol=atol, rtol=rtol, check_error_stat="max")))
        log(f"{graph}: {'matches' if verdicts[graph] else 'DIFFERS FROM'} ONNX Runtime (atol {atol}, rtol {rtol})")
    return verdicts


def _vocab_size(tokenizer_json: Path) -> int:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_json)).get_vocab_size()
