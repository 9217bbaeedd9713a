"""A diffusers pipeline checkpoint on disk, read without loading its weights: which components it
has, their configs, how many parameters each holds and in which dtype they are stored (from the
safetensors headers), and loading one component at a time in a chosen dtype.

An export holds one component in memory at a time, so the largest component bounds its memory, and
it checks before starting that the machine has that memory and the disk the engine directory needs.
"""

from __future__ import annotations

import gc
import importlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..runtime.precision import BYTES

_SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
GB = 1e9


@dataclass
class Checkpoint:
    path: Path
    index: dict[str, Any]
    _counts: dict[str, dict[str, int]] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path) -> Checkpoint:
        return cls(path, json.loads((path / "model_index.json").read_text()))

    def config(self, component: str, name: str = "config.json") -> dict[str, Any]:
        f = self.path / component / name
        if not f.is_file():
            raise UsageError(f"{self.path} has no {component}/{name}; pass a complete diffusers pipeline")
        return json.loads(f.read_text())

    def parameters(self, component: str) -> dict[str, int]:
        """Parameter count per stored floating dtype (safetensors headers only; nothing is loaded)."""
        if component not in self._counts:
            from safetensors import safe_open

            counts: dict[str, int] = {}
            files = sorted((self.path / component).glob("*.safetensors"))
            if not files:
                bins = sorted((self.path / component).glob("*.bin"))
                if not bins:
                    raise UsageError(f"{self.path / component} holds no .safetensors (or PyTorch .bin) weights; "
                                     "pass a complete diffusers pipeline")
                self._counts[component] = _bin_counts(bins)
                return self._counts[component]
            for f in files:
                with safe_open(str(f), framework="pt") as st:
                    for key in st.keys():
                        s = st.get_slice(key)
                        dtype = _SAFETENSORS_DTYPES.get(s.get_dtype())
                        if dtype:
                            n = 1
                            for d in s.get_shape():
                                n *= int(d)
                            counts[dtype] = counts.get(dtype, 0) + n
            self._counts[component] = counts
        return self._counts[component]

    def stored_dtype(self, component: str) -> str:
        """The dtype most of a component's weights are stored in (FLUX.1-dev: bfloat16)."""
        counts = self.parameters(component)
        dtype = max(counts, key=counts.get) if counts else "float32"
        return "float32" if dtype == "float64" else dtype

    def nbytes(self, component: str, dtype: str) -> int:
        """The component's weights in `dtype`."""
        return sum(self.parameters(component).values()) * BYTES[dtype]

    def load(self, component: str, dtype: str):
        """One component in `dtype`, straight from its files (no float32 initialisation first)."""
        import torch

        library, cls_name = self.index[component]
        cls = getattr(importlib.import_module(library), cls_name)
        model = cls.from_pretrained(self.path / component, dtype=getattr(torch, dtype), low_cpu_mem_usage=True)
        return model.eval().requires_grad_(False)


def _bin_counts(files: list[Path]) -> dict[str, int]:
    """Parameter count per dtype of PyTorch .bin checkpoints (older hub repos, e.g. DiT-XL-2-256's),
    read with torch's weights-only unpickler (no code runs) and memory-mapped (nothing is copied)."""
    import torch

    counts: dict[str, int] = {}
    for f in files:
        try:
            state = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # not a zip checkpoint, or one holding more than tensors
            raise UsageError(f"cannot read {f} as plain weights ({str(e).splitlines()[0][:120]}); re-save the "
                             "pipeline with safe_serialization=True") from None
        for t in state.values():
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                dtype = str(t.dtype).replace("torch.", "")
                counts[dtype] = counts.get(dtype, 0) + t.numel()
        del state
    return counts


def release() -> None:
    """Return what the caller just deleted to the system before the next component loads."""
    gc.collect()


def check_resources(target: Path, disk_bytes: int, memory_bytes: int) -> None:
    """Fail before a long export when the disk or the memory it needs are clearly not there."""
    import psutil

    probe = target.parent if not target.exists() else target
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if disk_bytes > free:
        raise UsageError(f"the export needs about {disk_bytes / GB:.1f} GB free in {probe} and only "
                         f"{free / GB:.1f} GB are; free some space or choose another --out")
    available = psutil.virtual_memory().available
    if memory_bytes > available:
        raise UsageError(f"the export needs about {memory_bytes / GB:.1f} GB of memory and only "
                         f"{available / GB:.1f} GB are available; close other programs or export on a larger machine")
