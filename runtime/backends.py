"""Backends: one small interface, several implementations, all fed the same engine directory.

A backend owns the graphs' sessions and the device arrays. Arrays are numpy on the CPU
(onnxruntime) and torch tensors on a GPU or for the torch backend; the pipeline only uses the
operations numpy and torch share (in-place arithmetic, slicing), so the Taylor state and the
sampler run unchanged on every backend and never copy the factors to the host.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import BackendUnavailable, EngineDirError, NotTrusted

class Backend:
    name = ""

    def __init__(self, directory: Path, manifest: dict, device: str):
        self.directory, self.manifest, self.device = directory, manifest, device

    def empty(self, shape: tuple[int, ...], dtype: str = "float32") -> Any:
        raise NotImplementedError

    def zeros(self, shape: tuple[int, ...], dtype: str = "float32") -> Any:
        a = self.empty(shape, dtype)
        a[...] = 0
        return a

    def asarray(self, a: np.ndarray, dtype: str | None = None) -> Any:
        """Host -> device, in `dtype` if given (a copy on a GPU, a no-op on the CPU in its own dtype)."""
        raise NotImplementedError

    def numpy(self, a: Any) -> np.ndarray:
        """Device -> host (bfloat16 widened to float32: numpy has no bfloat16); used once per request."""
        raise NotImplementedError

    def write(self, dst: Any, host: np.ndarray) -> None:
        """Host values into an existing device buffer (no allocation on the device)."""
        if isinstance(dst, np.ndarray):
            dst[...] = host
        else:
            dst.copy_(self.torch.from_numpy(np.ascontiguousarray(host)))

    def run(self, graph: str, inputs: dict[str, Any], outputs: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run `graph`; with `outputs` it writes into those device buffers, else it returns new arrays."""
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait for queued device work (for timing)."""

    @contextlib.contextmanager
    def stream(self) -> Iterator[None]:
        """The context a request runs in: the GPU backends put all its work on their own stream."""
        yield


class GpuBackend(Backend):
    """Torch tensors as the device arrays; on a GPU, every request runs on one non-default stream
    of the backend's (ordered after, and then before, whatever the caller's stream holds)."""

    def __init__(self, directory: Path, manifest: dict, device: str):
        super().__init__(directory, manifest, device)
        self.torch = _import_torch(f"the {self.name} backend")
        self._stream = None
        if device.startswith("cuda"):
            if not self.torch.cuda.is_available():
                raise BackendUnavailable("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu")
            self.torch.cuda.set_device(_device_index(device))
            self._stream = self.torch.cuda.Stream(device)
        elif device != "cpu":
            raise BackendUnavailable(f"unknown device {device!r}; use cpu or cuda[:N]")

    def empty(self, shape, dtype="float32"):
        return self.torch.empty(shape, dtype=getattr(self.torch, dtype), device=self.device)

    def asarray(self, a, dtype=None):
        t = self.torch.from_numpy(np.ascontiguousarray(a))
        return t.to(device=self.device, dtype=getattr(self.torch, dtype) if dtype else None)

    def numpy(self, a):
        return _torch_to_numpy(a)

    def synchronize(self):
        if self._stream is not None:
            self._stream.synchronize()

    @contextlib.contextmanager
    def stream(self):
        if self._stream is None:
            yield
            return
        caller = self.torch.cuda.current_stream(self.device)
        if caller == self._stream:  # already inside
            yield
            return
        self._stream.wait_stream(caller)
        with self.torch.cuda.stream(self._stream):
            yield
        caller.wait_stream(self._stream)


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime with IOBinding: hot-loop outputs are written straight into our buffers, and on
    the CUDA provider those buffers are torch CUDA tensors, so nothing crosses to the host."""

    name = "onnxruntime"

    def __init__(self, directory: Path, manifest: dict, device: str, threads: int | None = None):
        super().__init__(directory, manifest, device)
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailable("onnxruntime is not installed; pip install onnxruntime "
                                     "(or onnxruntime-gpu for CUDA)") from None
        self.ort = ort
        wide = sorted({t["dtype"] for g in manifest["graphs"].values() for t in [*g["inputs"], *g["outputs"]]}
                      & {"bfloat16"})
        if wide:
            raise BackendUnavailable(
                f"{directory} holds bfloat16 graphs, which ONNX Runtime does not run (its CPU provider has no "
                "bfloat16 kernels); use --backend torch (needs the directory's torch programs: seer-export "
                "--torch-programs), --backend tensorrt on a GPU, or export with --precision fp16 or fp32")
        if device == "cpu":
            providers = ["CPUExecutionProvider"]
        elif device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailable("this onnxruntime has no CUDA provider; pip install onnxruntime-gpu "
                                         "or use --device cpu")
            self.torch = _import_torch("the CUDA device buffers")
            providers = [("CUDAExecutionProvider", {"device_id": _device_index(device)})]
        else:
            raise BackendUnavailable(f"unknown device {device!r}; use cpu or cuda[:N]")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # keep Q/DQ pairs as written: ONNX Runtime would fuse FP8 ones into integer kernels that reject FP8
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
        # No busy-waiting after a run: each session has its own intra-op pool, and a pool left spinning
        # steals the cores from whatever runs next (the other graph, the Taylor update, the sampler).
        # On a 2-core machine that made forecast steps 1.6-3x slower and full steps ~10% slower in
        # cached runs; without spinning, a graph runs as fast as it does alone. (ONNX Runtime's global
        # thread pool fixes it too, but is a process-wide choice that belongs to the embedding service.)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads is not None:  # several replicas on one CPU machine: each keeps to its share of the cores
            opts.intra_op_num_threads = threads
        self.sessions = {}
        for name, g in manifest["graphs"].items():
            with _ort_errors(f"load the {name} graph ({g['onnx']})"):
                self.sessions[name] = ort.InferenceSession(str(directory / g["onnx"]), opts, providers=providers)
        for name, sess in self.sessions.items():
            check_interface(name, manifest["graphs"][name], sess.get_inputs(), sess.get_outputs())
        self._cuda = device != "cpu"

    def empty(self, shape, dtype="float32"):
        if self._cuda:
            return self.torch.empty(shape, dtype=getattr(self.torch, dtype), device=self.device)
        return np.empty(shape, dtype=dtype)

    def asarray(self, a, dtype=None):
        if self._cuda:
            t = self.torch.from_numpy(np.ascontiguousarray(a))
            return t.to(device=self.device, dtype=getattr(self.torch, dtype) if dtype else None)
        return np.ascontiguousarray(a, dtype=dtype)

    def numpy(self, a):
        return _torch_to_numpy(a) if self._cuda else np.array(a, copy=True)

    def run(self, graph, inputs, outputs=None):
        sess = self.sessions[graph]
        if outputs is None:
            # Once-per-request graphs (text encoders, VAE): plain run, results moved to the device.
            names = [o.name for o in sess.get_outputs()]
            host = {k: v if isinstance(v, np.ndarray) else self.numpy(v) for k, v in inputs.items()}
            with _ort_errors(f"run the {graph} graph"):
                results = sess.run(names, host)
            return {n: self.asarray(r) for n, r in zip(names, results)}
        binding = sess.io_binding()
        for name, a in inputs.items():
            self._bind(binding.bind_input, name, a)
        for name, a in outputs.items():
            self._bind(binding.bind_output, name, a)
        with _ort_errors(f"run the {graph} graph"):
            sess.run_with_iobinding(binding)
        return outputs

    def _bind(self, bind, name, a):
        if self._cuda:
            bind(name, "cuda", _device_index(self.device), _np_dtype(a), tuple(a.shape), a.data_ptr())
        else:
            bind(name, "cpu", 0, a.dtype, a.shape, a.ctypes.data)

    def synchronize(self):
        if self._cuda:
            self.torch.cuda.synchronize(self.device)


class TorchBackend(GpuBackend):
    """The exported torch programs themselves, eager: the numerical reference and the GPU path we
    measure ourselves; on CUDA, optionally with CUDA graphs for the two transformer paths."""

    name = "torch"

    def __init__(self, directory: Path, manifest: dict, device: str, cuda_graphs: bool = False,
                 trust_torch_programs: bool = False):
        super().__init__(directory, manifest, device)
        if "torch" not in manifest.get("formats", []) and manifest.get("quantization"):
            raise BackendUnavailable(f"{directory} holds FP8 graphs and no torch programs for them; use --backend "
                                     "onnxruntime, --backend tensorrt on a GPU of compute capability 8.9+, or re-export "
                                     "with --torch-programs")
        if "torch" not in manifest.get("formats", []):
            raise BackendUnavailable(f"{directory} was exported without torch programs; re-export with "
                                     "--torch-programs or use --backend onnxruntime")
        if not trust_torch_programs:
            # torch.export.load unpickles parts of a .pt2 (and parses its shape expressions with
            # sympy, which evaluates them): loading one runs whatever its writer put there.
            raise NotTrusted(
                f"the torch backend loads {directory}'s .pt2 torch programs, and loading a .pt2 runs Python code "
                "stored in it; pass --trust-torch-programs (Python: trust_torch_programs=True) only for a "
                "directory you exported or pinned with --expect-digest, or use --backend onnxruntime or tensorrt")
        missing = [name for name, g in manifest["graphs"].items() if "torch" not in g]
        if missing:
            raise BackendUnavailable(f"{directory} has no torch program for {', '.join(missing)}; re-export with "
                                     "--torch-programs or use --backend onnxruntime")
        self.modules = {}
        for name, g in manifest["graphs"].items():
            program = self.torch.export.load(str(directory / g["torch"]))
            self.modules[name] = program.module().to(device)
        self.output_names = {name: [o["name"] for o in g["outputs"]] for name, g in manifest["graphs"].items()}
        self.input_names = {name: [i["name"] for i in g["inputs"]] for name, g in manifest["graphs"].items()}
        self.graphs = None
        if cuda_graphs:
            from .cuda_graphs import CudaGraphs

            self.graphs = CudaGraphs(self.torch, self._stream)

    def _call(self, graph, inputs):
        with self.torch.inference_mode():
            result = self.modules[graph](*[inputs[n] for n in self.input_names[graph]])
        result = result if isinstance(result, (tuple, list)) else (result,)
        return dict(zip(self.output_names[graph], result))

    def _launch(self, graph, inputs, outputs) -> None:
        named = self._call(graph, inputs)
        for name, buf in outputs.items():
            buf.copy_(named[name])

    def run(self, graph, inputs, outputs=None):
        if outputs is None:
            return self._call(graph, inputs)
        if self.graphs is not None and graph in ("full", "forecast"):
            self.graphs.run(graph, inputs, outputs, lambda i, o: self._launch(graph, i, o))
        else:
            self._launch(graph, inputs, outputs)
        return outputs


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(bfloat16)": "bfloat16",
              "tensor(int64)": "int64"}


def check_interface(graph: str, spec: dict, inputs, outputs) -> None:
    """The manifest's word on a graph against the graph itself (ONNX Runtime's NodeArgs: name, type,
    shape): the same tensor names, dtypes and fixed dimensions, or one line naming the first difference."""
    for kind, declared, actual in (("input", spec["inputs"], inputs), ("output", spec["outputs"], outputs)):
        have = {a.name: a for a in actual}
        for t in declared:
            a = have.pop(t["name"], None)
            problem = None
            if a is None:
                problem = f"declares {kind} {t['name']!r}, which the graph does not have"
            elif _ORT_TYPES.get(a.type, a.type) != t["dtype"]:
                problem = f"declares {kind} {t['name']!r} as {t['dtype']}, the graph has {_ORT_TYPES.get(a.type, a.type)}"
            elif len(a.shape) != len(t["shape"]) or any(  # a size fixed in the graph is fixed in the manifest
                    isinstance(g, int) and d != g for d, g in zip(t["shape"], a.shape)):
                problem = f"declares {kind} {t['name']!r} with shape {t['shape']}, the graph has {list(a.shape)}"
            if problem:
                raise EngineDirError(f"the manifest's {graph} graph {problem}; the manifest does not describe its "
                                     "graphs, re-export the engine directory")
        if have:
            raise EngineDirError(f"the {graph} graph has {kind}(s) {sorted(have)} the manifest does not declare; "
                                 "re-export the engine directory")


@contextlib.contextmanager
def _ort_errors(what: str) -> Iterator[None]:
    """ONNX Runtime's own errors (a graph that is not a graph, a shape or index it rejects) as one line:
    the manifest and its checks passed, so the graphs do not match the manifest or are damaged."""
    try:
        yield
    except Exception as e:  # ONNX Runtime's error classes derive from Exception directly
        if not type(e).__module__.startswith("onnxruntime"):
            raise
        detail = " ".join(str(e).split())[:240]
        raise EngineDirError(f"ONNX Runtime could not {what}: {detail}; the engine directory's graphs do not match "
                             "its manifest or are damaged, re-export it") from None


def _import_torch(why: str):
    try:
        import torch
    except ImportError:
        raise BackendUnavailable(f"torch is not installed but is needed for {why}; pip install torch") from None
    return torch


def _torch_to_numpy(t) -> np.ndarray:
    t = t.detach()
    if str(t.dtype) == "torch.bfloat16":
        t = t.float()
    return t.cpu().numpy()


def _device_index(device: str) -> int:
    return int(device.split(":")[1]) if ":" in device else 0


def _np_dtype(t) -> Any:
    return np.dtype(str(t.dtype).replace("torch.", ""))
