"""CUDA-graph capture and replay of one graph launch, shared by the GPU backends.

A captured CUDA graph replays fixed kernels on fixed addresses. Per step, the denoising loop hands
a graph the same latents and output buffers, a timestep that is a different view each step, and
Taylor factors that rotate among `order + 2` buffers. So:

- small inputs (timestep, guidance, coefficients: under `stage_bytes`) are staged, i.e. copied each
  step into fixed buffers that the captured graph reads;
- large inputs and every output are bound where they are, and one graph is captured per distinct
  set of their addresses and shapes (a handful: the factor rotation repeats), kept in an LRU.

`launch(inputs, outputs)` must enqueue the work on the current CUDA stream, the stream the
backend runs everything on. The first call for a key runs it once outside capture (TensorRT and
torch both do deferred set-up on a first run), then captures it; later calls replay.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable


class CudaGraphs:
    def __init__(self, torch, stream, stage_bytes: int = 1 << 16, capacity: int = 32):
        self.torch, self.stream = torch, stream
        self.stage_bytes, self.capacity = stage_bytes, capacity
        self._graphs: OrderedDict[tuple, tuple[Any, dict[str, Any]]] = OrderedDict()
        self.captures = self.replays = 0

    def key(self, name: str, inputs: dict[str, Any], outputs: dict[str, Any]) -> tuple:
        def sig(k, t, staged):
            return k, tuple(t.shape), str(t.dtype), None if staged else t.data_ptr()

        return (name, tuple(sig(k, t, self._staged(t)) for k, t in sorted(inputs.items())),
                tuple(sig(k, t, False) for k, t in sorted(outputs.items())))

    def _staged(self, t) -> bool:
        return t.numel() * t.element_size() <= self.stage_bytes

    def run(self, name: str, inputs: dict[str, Any], outputs: dict[str, Any],
            launch: Callable[[dict[str, Any], dict[str, Any]], None]) -> None:
        key = self.key(name, inputs, outputs)
        entry = self._graphs.get(key)
        if entry is not None:
            self._graphs.move_to_end(key)
            graph, staged = entry
            for k, buf in staged.items():
                buf.copy_(inputs[k])
            graph.replay()
            self.replays += 1
            return
        staged = {k: t.clone() for k, t in inputs.items() if self._staged(t)}
        bound = {**inputs, **staged}
        launch(bound, outputs)  # this call's result, and the deferred set-up outside capture
        graph = self.torch.cuda.CUDAGraph()
        with self.torch.cuda.graph(graph, stream=self.stream):
            launch(bound, outputs)
        self._graphs[key] = (graph, staged)
        self.captures += 1
        if len(self._graphs) > self.capacity:
            self._graphs.popitem(last=False)

    def clear(self) -> None:
        self._graphs.clear()
