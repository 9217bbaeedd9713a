"""An engine directory's ONNX graphs -> TensorRT plans, built on the machine that will run them.

Polygraphy does the building (`NetworkFromOnnxPath` -> `CreateConfig` -> `EngineBytesFromNetwork`);
this module decides what to build: one optimization profile per graph, derived from the manifest's
symbolic shapes and the batch and image sizes asked for (static by default: min = opt = max gives
TensorRT the most freedom), a strongly typed network (precision comes from the ONNX, as TensorRT 11
requires), and where the plans and their provenance go in the manifest.

The plans are written, with hard links to the unchanged files, into a temporary sibling that
replaces the directory only when complete: a failed build leaves the directory as it was.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import BackendUnavailable, UsageError
from .manifest import MANIFEST, read_manifest, write_manifest
from .shapes import dim_values, eval_dim
from .writing import link_files, writing_engine_dir

PLAN_DIR = "plans"
OPTIMIZATION_LEVELS = range(0, 6)


@dataclass(frozen=True)
class BuildOptions:
    """What seer-build builds. Sizes are (height, width) in pixels."""

    batch: tuple[int, int, int] = (1, 1, 1)  # min, opt, max
    sizes: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None = None  # None: the default size
    optimization_level: int = 3  # TensorRT's builder optimization level (NVIDIA's FLUX demo uses 3)
    tf32: bool = True
    timing_cache: str | None = None  # loaded if present, saved after every graph
    refittable: bool = False
    strip_plan: bool = False  # weights left out of the plans, refitted from the ONNX at load
    weight_streaming: bool = False
    graphs: tuple[str, ...] = ()  # () = every graph of the directory

    def validate(self, manifest: dict) -> "BuildOptions":
        lo, opt, hi = self.batch
        if not 1 <= lo <= opt <= hi:
            raise UsageError(f"batch range {lo}/{opt}/{hi} must satisfy 1 <= min <= opt <= max")
        if self.optimization_level not in OPTIMIZATION_LEVELS:
            raise UsageError(f"--optimization-level must be 0 to 5 (got {self.optimization_level})")
        if self.strip_plan and not self.refittable:
            raise UsageError("--strip-plan needs --refittable: stripped weights are refitted at load")
        unknown = set(self.graphs) - set(manifest["graphs"])
        if unknown:
            raise UsageError(f"no graph named {', '.join(sorted(unknown))} in this directory; "
                             f"it has {', '.join(manifest['graphs'])}")
        if manifest["model"]["family"] == "dit":  # one size: the model's
            side = manifest["model"]["config"]["sample_size"] * manifest["latent"]["vae_scale_factor"]
            if any(s != (side, side) for s in self.size_range(manifest)):
                raise UsageError(f"this DiT generates {side}x{side} images only; build without --size")
        multiple = manifest["latent"]["vae_scale_factor"] * 2
        for h, w in self.size_range(manifest):
            if h < multiple or w < multiple or h % multiple or w % multiple:
                raise UsageError(f"size {h}x{w} cannot be built: height and width must be positive multiples "
                                 f"of {multiple}")
        (h0, w0), (h1, w1), (h2, w2) = self.size_range(manifest)
        if not (h0 <= h1 <= h2 and w0 <= w1 <= w2):
            raise UsageError("sizes must grow from min to opt to max in both height and width")
        return self

    def size_range(self, manifest: dict) -> tuple[tuple[int, int], ...]:
        if self.sizes is not None:
            return tuple(tuple(s) for s in self.sizes)
        d = manifest["defaults"]
        return ((d["height"], d["width"]),) * 3

    @property
    def static(self) -> bool:
        return self.batch[0] == self.batch[2] and (self.sizes is None or self.sizes[0] == self.sizes[2])


def profile_shapes(manifest: dict, options: BuildOptions) -> dict[str, dict[str, dict[str, list[int]]]]:
    """graph -> input -> {min, opt, max} shapes: the optimization profile each plan is built with."""
    sizes = options.size_range(manifest)
    # classifier-free guidance doubles the transformer's batch when on: the profile spans both
    doubled = 2 if manifest["guidance"]["kind"] == "cfg" else 1
    points = [dim_values(manifest, b, h, w, g) for b, (h, w), g in zip(options.batch, sizes, (1, doubled, doubled))]
    graphs = options.graphs or tuple(manifest["graphs"])
    return {
        g: {i["name"]: {k: [eval_dim(d, v) for d in i["shape"]] for k, v in zip(("min", "opt", "max"), points)}
            for i in manifest["graphs"][g]["inputs"]}
        for g in graphs
    }


def import_tensorrt():
    """The tensorrt module, or a clear error where it cannot load (PyPI's stubs import but lack bindings)."""
    try:
        import tensorrt as trt
        trt.Runtime  # noqa: B018
    except (ImportError, AttributeError, OSError) as e:
        raise BackendUnavailable(
            f"TensorRT is not usable here ({type(e).__name__}: {e}); install it on a machine with an NVIDIA GPU "
            "(pip install tensorrt-cu12 polygraphy), or run this directory with --backend onnxruntime") from None
    return trt


def require_tensorrt():
    """What building and comparing plans need: TensorRT and Polygraphy."""
    trt = import_tensorrt()
    try:
        import polygraphy  # noqa: F401
    except ImportError:
        raise BackendUnavailable("building and comparing TensorRT plans needs Polygraphy: pip install polygraphy") from None
    return trt


def current_device() -> dict[str, str]:
    """The GPU plans are built on or run on: name and compute capability."""
    try:
        import torch
    except ImportError:
        raise BackendUnavailable("TensorRT plans are built and run through torch's CUDA runtime: "
                                 "pip install torch") from None
    if not torch.cuda.is_available():
        raise BackendUnavailable("TensorRT needs an NVIDIA GPU, and torch sees none here")
    p = torch.cuda.get_device_properties(torch.cuda.current_device())
    return {"name": p.name, "compute_capability": f"{p.major}.{p.minor}"}


FP8_MIN_COMPUTE_CAPABILITY = (8, 9)  # FP8 tensor cores: Ada (8.9), Hopper (9.0) and newer


def check_fp8_device(compute_capability: str) -> None:
    """An FP8 directory is built only where FP8 kernels exist."""
    major, minor = (int(v) for v in compute_capability.split("."))
    if (major, minor) < FP8_MIN_COMPUTE_CAPABILITY:
        raise UsageError(f"this directory's full graph is FP8, which needs a GPU of compute capability 8.9 or "
                         f"newer (Ada, Hopper, Blackwell); this one has {compute_capability}. Re-export without "
                         "--fp8 for this GPU, or build on an FP8-capable one")


def plan_mismatch(built: dict, tensorrt_version: str, device: dict[str, str]) -> str | None:
    """Why plans built as `built` (the manifest's `tensorrt` entry) cannot run here, or None."""
    here = f"TensorRT {tensorrt_version} on {device['name']} (compute capability {device['compute_capability']})"
    there = (f"TensorRT {built['version']} on {built['device']['name']} "
             f"(compute capability {built['device']['compute_capability']})")
    if built["version"] != tensorrt_version or built["device"] != device:
        return f"its TensorRT plans were built with {there}, and this machine has {here}"
    return None


@dataclass
class BuildReport:
    plans: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0


def build_plans(directory: str | Path, options: BuildOptions = BuildOptions(), out: str | Path | None = None,
                overwrite: bool = False, log: Callable[[str], None] = print) -> dict:
    """Builds the plans of `directory` (in place, or into a new directory `out`); returns the manifest."""
    from .trt_check import check_engine_dir

    directory = Path(directory)
    manifest = read_manifest(directory, verify=True)
    options = options.validate(manifest)
    problems = [str(f) for v in check_engine_dir(directory).values() for f in v]
    if problems:
        raise UsageError(f"{len(problems)} graph problem(s) would stop TensorRT, first: {problems[0]}; "
                         f"`seer-check {directory}` lists them all")
    trt = require_tensorrt()
    device = current_device()
    if manifest.get("quantization"):
        check_fp8_device(device["compute_capability"])
    profiles = profile_shapes(manifest, options)
    target = Path(out) if out is not None else directory
    with writing_engine_dir(target, overwrite=overwrite or out is None) as tmp:
        if out is None:  # read again under the directory's lock: what seer-calibrate added meanwhile is kept
            manifest = read_manifest(directory, verify=True)
        link_files(directory, tmp, manifest, skip=lambda rel: rel.split("/")[0] == PLAN_DIR)  # old plans go
        (tmp / PLAN_DIR).mkdir(exist_ok=True)
        started, plans = time.perf_counter(), {}
        for graph, shapes in profiles.items():
            t0 = time.perf_counter()
            log(f"building {graph} ({'static' if options.static else 'dynamic'} shapes, "
                f"optimization level {options.optimization_level})")
            rel = f"{PLAN_DIR}/{graph}.plan"
            (tmp / rel).write_bytes(_build_one(tmp / manifest["graphs"][graph]["onnx"], shapes, options))
            plans[graph] = {"plan": rel, "profile": shapes}
            log(f"  {rel}: {(tmp / rel).stat().st_size / 2**20:.1f} MiB in {time.perf_counter() - t0:.1f} s")
        body = {k: v for k, v in manifest.items() if k not in ("schema", "schema_version", "files")}
        body["formats"] = sorted(set(body.get("formats", [])) | {"tensorrt"})
        body["tensorrt"] = {
            "version": trt.__version__, "device": device, "plans": plans,
            "options": {k: v for k, v in asdict(options).items() if k != "timing_cache"},
        }
        manifest = write_manifest(tmp, body)
        log(f"built {len(plans)} plans in {time.perf_counter() - started:.1f} s with TensorRT {trt.__version__} "
            f"on {device['name']}")
    return manifest


def _build_one(onnx_path: Path, shapes: dict[str, dict[str, list[int]]], options: BuildOptions) -> bytes:
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile

    profile = Profile()
    for name, s in shapes.items():
        profile.add(name, min=s["min"], opt=s["opt"], max=s["max"])
    cache = options.timing_cache
    config = CreateConfig(
        tf32=options.tf32, profiles=[profile], builder_optimization_level=options.optimization_level,
        refittable=options.refittable, strip_plan=options.strip_plan, weight_streaming=options.weight_streaming,
        load_timing_cache=cache if cache and Path(cache).is_file() else None)
    # strongly typed: the ONNX's dtypes are the engine's (TensorRT 11 has no other mode; 10.x opts in)
    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)
    return EngineBytesFromNetwork(network, config=config, save_timing_cache=cache)()
