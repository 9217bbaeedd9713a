"""Which backend class runs a backend name. Apart from runtime/backends.py so that the TensorRT
backend, built on backends.GpuBackend, is imported only here and only when asked for: no cycle."""

from __future__ import annotations

from pathlib import Path

from ..errors import BackendUnavailable
from .backends import Backend, OnnxRuntimeBackend, TorchBackend

BACKENDS = ("onnxruntime", "torch", "tensorrt")


def create_backend(name: str, directory: Path, manifest: dict, device: str = "cpu",
                   cuda_graphs: bool = False, trust_torch_programs: bool = False,
                   threads: int | None = None) -> Backend:
    if cuda_graphs and (name == "onnxruntime" or not device.startswith("cuda")):
        raise BackendUnavailable("CUDA graphs need --device cuda and --backend torch or tensorrt")
    if name == "onnxruntime":
        return OnnxRuntimeBackend(directory, manifest, device, threads)
    if name == "torch":
        if threads is not None:  # torch's pool is the process's: the caller gave this process that many cores
            import torch

            torch.set_num_threads(threads)
        return TorchBackend(directory, manifest, device, cuda_graphs, trust_torch_programs)
    if name == "tensorrt":
        from .tensorrt_backend import TensorRTBackend

        return TensorRTBackend(directory, manifest, device, cuda_graphs)
    raise BackendUnavailable(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
