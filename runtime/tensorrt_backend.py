"""The TensorRT backend: the plans seer-build wrote, run with TensorRT's named-tensor API.

- Every plan is deserialized once; each gets an execution context with user-managed device memory,
  and all contexts share one activation buffer sized for the largest: the graphs run one after
  another on one stream, never at the same time.
- I/O by name: `set_input_shape` + `set_tensor_address` on torch CUDA tensors (the pipeline's own
  buffers: the Taylor factors never leave the device), then `execute_async_v3` on the backend's
  non-default stream, which the pipeline also runs its torch arithmetic on, so the two are ordered.
- Optional CUDA-graph capture of the hot-loop graphs (`full`, `forecast`) once shapes are fixed.
- Plans built for weight streaming get TensorRT's automatic streaming budget; weight-stripped plans
  are refitted from their ONNX at load.
- Plans only run where they were built: another TensorRT version or another GPU is refused with
  the command that rebuilds them.

TensorRT cannot be installed on seer's build machines; this file follows the TensorRT 10/11 Python
API documentation, and its tests run wherever TensorRT and a GPU are present.
"""

from __future__ import annotations

from pathlib import Path

from ..engines.tensorrt_build import current_device, import_tensorrt, plan_mismatch
from ..errors import BackendUnavailable, EngineDirError, UsageError
from .backends import GpuBackend
from .cuda_graphs import CudaGraphs


class TensorRTBackend(GpuBackend):
    name = "tensorrt"

    def __init__(self, directory: Path, manifest: dict, device: str, cuda_graphs: bool = False):
        if not device.startswith("cuda"):
            raise BackendUnavailable("the tensorrt backend runs on an NVIDIA GPU: use --device cuda")
        trt = import_tensorrt()
        built = manifest.get("tensorrt")
        if not built:
            raise EngineDirError(f"{directory} has no TensorRT plans; build them on this machine with: "
                                 f"seer-build {directory}")
        super().__init__(directory, manifest, device)
        why = plan_mismatch(built, trt.__version__, current_device())
        if why:
            raise EngineDirError(f"{directory} cannot run here: {why}; rebuild the plans on this machine with: "
                                 f"seer-build {directory}")
        missing = set(manifest["graphs"]) - set(built["plans"])
        if missing:
            raise EngineDirError(f"{directory} has no plan for {', '.join(sorted(missing))}; build every graph "
                                 f"with: seer-build {directory}")
        self.trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self.logger)
        # A plan can embed host code (version-compatible plans carry a lean runtime); TensorRT runs it only
        # when allowed. Never: loading a directory must not run code from it (this is also the default).
        runtime.engine_host_code_allowed = False
        self.engines = {}
        for graph, entry in built["plans"].items():
            engine = runtime.deserialize_cuda_engine((directory / entry["plan"]).read_bytes())
            if engine is None:
                raise EngineDirError(f"TensorRT could not load {entry['plan']}; rebuild it with: seer-build {directory}")
            if built.get("options", {}).get("strip_plan"):
                self._refit(engine, directory / manifest["graphs"][graph]["onnx"], entry["plan"])
            if built.get("options", {}).get("weight_streaming"):
                # before any context exists: TensorRT's own estimate of what fits beside the activations
                engine.weight_streaming_budget_v2 = engine.get_weight_streaming_automatic_budget()
            self.engines[graph] = engine
        self.profiles = {g: e["profile"] for g, e in built["plans"].items()}
        with self.stream():
            size = max(_device_memory_size(e) for e in self.engines.values())
            self.activations = self.torch.empty(max(size, 1), dtype=self.torch.uint8, device=device)
            self.contexts = {g: self._context(e, size) for g, e in self.engines.items()}
        self.graphs = CudaGraphs(self.torch, self._stream) if cuda_graphs else None

    def _context(self, engine, size: int):
        strategy = self.trt.ExecutionContextAllocationStrategy.USER_MANAGED
        ctx = engine.create_execution_context(strategy)
        if hasattr(ctx, "set_device_memory"):  # TensorRT 10.1+
            ctx.set_device_memory(self.activations.data_ptr(), size)
        else:
            ctx.device_memory = self.activations.data_ptr()
        return ctx

    def _refit(self, engine, onnx_path: Path, plan: str) -> None:
        """Weight-stripped plans get their weights back from the ONNX they were built from."""
        refitter = self.trt.Refitter(engine, self.logger)
        if not self.trt.OnnxParserRefitter(refitter, self.logger).refit_from_file(str(onnx_path)) \
                or not refitter.refit_cuda_engine():
            raise EngineDirError(f"refitting {plan} from {onnx_path.name} failed; rebuild with seer-build")

    def run(self, graph, inputs, outputs=None):
        with self.stream():  # a no-op inside a request; orders a stray call against the caller's stream
            return self._run(graph, inputs, outputs)

    def _run(self, graph, inputs, outputs):
        ctx, engine = self.contexts[graph], self.engines[graph]
        inputs = {k: v.contiguous() for k, v in inputs.items()}
        for name, t in inputs.items():
            if not ctx.set_input_shape(name, tuple(t.shape)):
                p = self.profiles[graph].get(name, {})
                raise UsageError(
                    f"{graph} input {name} of shape {list(t.shape)} is outside the plans' profile "
                    f"(min {p.get('min')}, max {p.get('max')}); rebuild with seer-build --batch/--size ranges "
                    "that cover it")
        if outputs is None:
            outputs = {}
            for i in range(engine.num_io_tensors):
                name = engine.get_tensor_name(i)
                if engine.get_tensor_mode(name) == self.trt.TensorIOMode.OUTPUT:
                    outputs[name] = self.torch.empty(tuple(ctx.get_tensor_shape(name)),
                                                     dtype=_torch_dtype(self.torch, self.trt, engine.get_tensor_dtype(name)),
                                                     device=self.device)
        if self.graphs is not None and graph in ("full", "forecast"):
            self.graphs.run(graph, inputs, outputs, lambda i, o: self._launch(graph, i, o))
        else:
            self._launch(graph, inputs, outputs)
        return outputs

    def _launch(self, graph, inputs, outputs) -> None:
        ctx = self.contexts[graph]
        for name, t in {**inputs, **outputs}.items():
            ctx.set_tensor_address(name, t.data_ptr())
        if not ctx.execute_async_v3(self.torch.cuda.current_stream(self.device).cuda_stream):
            raise RuntimeError(f"TensorRT could not enqueue {graph}")


def _device_memory_size(engine) -> int:
    return int(getattr(engine, "device_memory_size_v2", None) or engine.device_memory_size)


def _torch_dtype(torch, trt, dtype):
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16,
             trt.int32: torch.int32, trt.int64: torch.int64, trt.int8: torch.int8, trt.uint8: torch.uint8,
             trt.bool: torch.bool}
    return table[dtype]
