"""What every family's exporter shares: the export's limits, its phases shown as progress, the
check of a graph too large to check whole (on a slice of it), and the TensorRT readiness check."""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from torch import nn

from .. import signals
from ..errors import UsageError
from .graphs import weight_bytes

MAX_ORDER_LIMIT = 4
# Graphs with more weights than this are checked against torch on a slice, not whole (the whole
# check would hold the weights two or three times over).
FULL_CHECK_LIMIT = 1 << 30
# Torch programs repeat every weight; above this transformer size they are stored only when asked.
TORCH_PROGRAMS_LIMIT = 2 << 30
# Peak memory of an export over its largest component's weights, measured (scripts/export_footprint.py).
MEMORY_FACTOR = 1.35


GRANULARITIES = ("modules", "lite")


def cache_section(shape, cache: str, max_order: int, factor_dtype: str) -> dict[str, Any]:
    """The manifest's `cache` section for a family's shape (its `stream_names` and `feature_dim`)."""
    return {"granularity": cache, "max_order": max_order, "streams": shape.stream_names(cache),
            "feature_dim": shape.feature_dim(cache), "feature_output": "sample" if cache == "lite" else "features",
            "factor_dtype": factor_dtype}


def check_cache_options(cache: str, max_order: int) -> None:
    if cache not in GRANULARITIES:
        raise UsageError(f"unknown cache granularity {cache!r}; choose one of {', '.join(GRANULARITIES)}")
    if not 0 <= max_order <= MAX_ORDER_LIMIT:
        raise UsageError(f"--max-order must be between 0 and {MAX_ORDER_LIMIT} (got {max_order}); "
                         "1 or 2 is what TaylorSeer uses")


class Phases:
    """The export's phases as a progress bar on a terminal (log lines otherwise)."""

    def __init__(self, total: int, progress: bool, log):
        from tqdm import tqdm

        self.log = log
        self.bar = tqdm(total=total, desc="seer-export", unit="phase", file=sys.stderr, leave=False,
                        disable=not (progress and sys.stderr.isatty()))
        self.started = False

    def start(self, name: str) -> None:
        signals.check()  # a SIGTERM whose exception was dropped (in a finalizer) stops the export here
        if self.started:
            self.bar.update()
        self.started = True
        self.bar.set_postfix_str(name)
        if self.bar.disable:
            self.log(f"exporting {name}" if name in ("clip", "t5", "transformer", "vae_decoder") else name)

    def close(self) -> None:
        self.bar.update()
        self.bar.close()


def checked(module: nn.Module, tmp: Path, export: Callable[[Path, bool, bool], Any],
             torch_program: bool) -> Any:
    """`export(directory, check, torch_program)` the component; when it is too large to check
    whole, first export and check a slice of it (one of each repeated block) in a scratch folder."""
    if weight_bytes(module) <= FULL_CHECK_LIMIT:
        return export(tmp, True, torch_program)
    with _sliced(module), tempfile.TemporaryDirectory(dir=tmp) as scratch:
        export(Path(scratch), True, False)
    return export(tmp, False, torch_program)


@contextlib.contextmanager
def _sliced(module: nn.Module):
    """`module` with each run of repeated blocks (a ModuleList of two or more blocks of one class and
    the same parameter shapes: transformer blocks, encoder layers) cut to its first block, restored
    afterwards."""
    saved = []

    def visit(owner: nn.Module) -> None:
        for name, child in owner.named_children():
            if isinstance(child, nn.ModuleList) and _repeated(child):
                saved.append((owner, name, child))
            else:
                visit(child)

    visit(module)
    try:
        for owner, name, blocks in saved:
            setattr(owner, name, nn.ModuleList(list(blocks)[:1]))
        yield
    finally:
        for owner, name, blocks in saved:
            setattr(owner, name, blocks)


def _repeated(blocks: nn.ModuleList) -> bool:
    signature = lambda m: (type(m), [tuple(p.shape) for p in m.parameters()])  # noqa: E731
    return len(blocks) > 1 and all(signature(b) == signature(blocks[0]) for b in blocks)


def log_tensorrt_readiness(directory: Path, graphs: dict[str, Any], log) -> None:
    """The static TensorRT check on every graph just written (seer-check runs the same later)."""
    from ..engines.trt_check import check_onnx

    findings = [f for g in graphs.values() for f in check_onnx(directory / g["onnx"])]
    if not findings:
        log(f"TensorRT readiness: all {len(graphs)} graphs pass seer-check")
        return
    log(f"warning: {len(findings)} TensorRT readiness problem(s); ONNX Runtime still runs this directory:")
    for f in findings[:20]:
        log(f"  {f}")




def finish(tmp: Path, manifest: dict[str, Any], phases: Phases, started: float, log) -> dict[str, Any]:
    """Write the manifest (last: a directory without one is never a finished export) and check the
    graphs' TensorRT readiness."""
    import time

    from ..engines.manifest import write_manifest

    manifest = write_manifest(tmp, manifest)
    log_tensorrt_readiness(tmp, manifest["graphs"], log)
    phases.close()
    log(f"exported in {time.perf_counter() - started:.1f} s")
    return manifest
