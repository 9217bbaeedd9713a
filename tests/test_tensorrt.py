"""TensorRT plans: what can be checked without TensorRT runs everywhere (profiles, options, the
plan-provenance rule, clear refusals, the TensorRT API names seer's code uses against the real
TensorRT 11 bindings binary); building and running plans runs only where TensorRT and a GPU are."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from seer.engines import tensorrt_build as tb
from seer.engines.build_cli import main as build_main
from seer.errors import BackendUnavailable, UsageError

ROOT = Path(__file__).resolve().parents[1]
TRT_SOURCES = [ROOT / "engines/tensorrt_build.py", ROOT / "engines/tensorrt_compare.py",
               ROOT / "runtime/tensorrt_backend.py"]


def _have_tensorrt() -> bool:
    try:
        tb.require_tensorrt()
        tb.current_device()
        return True
    except BackendUnavailable:
        return False


needs_tensorrt = pytest.mark.skipif(not _have_tensorrt(), reason="needs TensorRT (pip install tensorrt-cu12) and "
                                                                 "an NVIDIA GPU; neither is on seer's CI machines")


def _manifest(directory):
    return json.loads((Path(directory) / "manifest.json").read_text())


def test_static_profile_is_the_default_size(engine_modules):
    shapes = tb.profile_shapes(_manifest(engine_modules), tb.BuildOptions())
    # flux-tiny: 64 x 64 pixels, VAE factor 8 -> 8 x 8 latents -> 4 x 4 = 16 tokens; 16 T5 tokens
    full = shapes["full"]
    assert full["hidden_states"] == {"min": [1, 16, 64], "opt": [1, 16, 64], "max": [1, 16, 64]}
    assert full["rope_cos"]["opt"] == [16 + 16, 16]
    assert shapes["forecast"]["factor_2"]["opt"] == [8, 1, 16, 64] and shapes["forecast"]["coefficients"]["opt"] == [3]
    assert shapes["vae_decoder"]["latents"]["opt"] == [1, 16, 8, 8]
    assert shapes["clip"]["input_ids"]["opt"] == [1, 77]


def test_dynamic_profile_ranges(engine_modules):
    options = tb.BuildOptions(batch=(1, 2, 4), sizes=((64, 64), (128, 128), (256, 512)), graphs=("full",))
    shapes = tb.profile_shapes(_manifest(engine_modules), options)
    assert list(shapes) == ["full"]
    assert shapes["full"]["hidden_states"] == {"min": [1, 16, 64], "opt": [2, 64, 64], "max": [4, 512, 64]}
    assert shapes["full"]["rope_sin"]["max"] == [512 + 16, 16]
    assert not options.static and tb.BuildOptions().static


def test_symbolic_dims():
    values = {"B": 2, "N_img": 10, "H_latent": 3}
    assert [tb.eval_dim(d, values) for d in (7, "B", "N_img + 16", "2*H_latent", "N_img - 1")] == [7, 2, 26, 6, 9]
    for bad in ("__import__('os')", "N_img / 2", "Q", "N_img // 0"):
        with pytest.raises(UsageError, match="symbolic dimension"):
            tb.eval_dim(bad, values)


@pytest.mark.parametrize("options, message", [
    (tb.BuildOptions(batch=(2, 1, 1)), "1 <= min <= opt <= max"),
    (tb.BuildOptions(sizes=((60, 64),) * 3), "multiples of 16"),
    (tb.BuildOptions(sizes=((128, 128), (64, 64), (256, 256))), "must grow"),
    (tb.BuildOptions(strip_plan=True), "needs --refittable"),
    (tb.BuildOptions(optimization_level=7), "0 to 5"),
    (tb.BuildOptions(graphs=("unet",)), "no graph named unet"),
])
def test_bad_build_options(engine_modules, options, message):
    with pytest.raises(UsageError, match=message):
        options.validate(_manifest(engine_modules))


def test_plans_run_only_where_they_were_built():
    built = {"version": "10.13.3", "device": {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}}
    assert tb.plan_mismatch(built, "10.13.3", dict(built["device"])) is None
    why = tb.plan_mismatch(built, "11.4.0", dict(built["device"]))
    assert "built with TensorRT 10.13.3" in why and "this machine has TensorRT 11.4.0" in why
    why = tb.plan_mismatch(built, "10.13.3", {"name": "NVIDIA L40S", "compute_capability": "8.9"})
    assert "compute capability 9.0" in why and "NVIDIA L40S (compute capability 8.9)" in why


def test_build_cli_dry_run_and_bad_input(engine_lite):
    r = CliRunner().invoke(build_main, [str(engine_lite), "--dry-run", "--batch", "1:1:2", "--size", "64x64:64x64:128x64"])
    assert r.exit_code == 0, r.output
    profiles = json.loads(r.output)
    assert profiles["forecast"]["factor_0"]["max"] == [1, 2, 32, 64]  # lite: one stream of predictions
    for args, message in ((["--batch", "a"], "cannot read batch"), (["--size", "64"], "cannot read size"),
                          (["--size", "64x64:128x128"], "MIN:OPT:MAX")):
        r = CliRunner().invoke(build_main, [str(engine_lite), "--dry-run", *args])
        assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output


@pytest.mark.skipif(_have_tensorrt(), reason="checks the refusal where TensorRT is absent")
def test_without_tensorrt_everything_refuses_clearly_and_changes_nothing(engine_lite, tmp_path):
    from seer.export.cli import main as export_main
    from seer.runtime.cli import main as run_main

    before = (engine_lite / "manifest.json").read_bytes()
    r = CliRunner().invoke(build_main, [str(engine_lite)])
    assert r.exit_code == 2 and "TensorRT is not usable here" in r.output and "--backend onnxruntime" in r.output
    assert (engine_lite / "manifest.json").read_bytes() == before and not (engine_lite / "plans").exists()
    assert not [p for p in engine_lite.parent.iterdir() if ".partial-" in p.name]
    r = CliRunner().invoke(export_main, ["flux-tiny", "--out", str(tmp_path / "e"), "--backend", "tensorrt"])
    assert r.exit_code == 2 and "TensorRT is not usable here" in r.output and not (tmp_path / "e").exists()
    r = CliRunner().invoke(run_main, [str(engine_lite), "-p", "a red circle", "--backend", "tensorrt"])
    assert r.exit_code == 2 and "use --device cuda" in r.output
    r = CliRunner().invoke(run_main, [str(engine_lite), "-p", "a red circle", "--backend", "tensorrt", "--device",
                                      "cuda"])
    assert r.exit_code == 2 and "TensorRT is not usable here" in r.output
    r = CliRunner().invoke(run_main, [str(engine_lite), "-p", "a red circle", "--cuda-graphs"])
    assert r.exit_code == 2 and "CUDA graphs need --device cuda" in r.output


# --- The TensorRT API names seer uses, against the TensorRT 11 bindings' binary -------------------

# Objects whose attributes are TensorRT API in those files: the module and what it hands back.
_TRT_OBJECTS = {"trt", "ctx", "engine", "refitter", "runtime"}
# Names used only behind a hasattr/getattr fallback for TensorRT 10.0 (gone in 11).
_FALLBACKS = {"device_memory", "device_memory_size"}
# Removed or deprecated away in TensorRT 10/11 (the 11.x migration guide): must never be used.
_REMOVED = {"execute_async_v2", "execute_v2", "get_binding_shape", "set_binding_shape", "get_binding_index",
            "num_bindings", "binding_is_input", "max_workspace_size", "create_execution_context_without_device_memory",
            "build_engine", "FP16", "BF16", "FP8", "INT8", "OBEY_PRECISION_CONSTRAINTS", "int8_calibrator"}


def _chain(node) -> list[str]:
    """`self.trt.Foo(x).bar.baz` -> ["self", "trt", "Foo", "bar", "baz"]: the names along a chain of
    attribute accesses and calls."""
    if isinstance(node, ast.Attribute):
        return _chain(node.value) + [node.attr]
    if isinstance(node, ast.Call):
        return _chain(node.func)
    return [node.id] if isinstance(node, ast.Name) else []


def _trt_names() -> set[str]:
    """Every name seer's TensorRT code reaches through a TensorRT object (and every name its
    getattr/hasattr fallbacks ask for)."""
    names = set()
    for src in TRT_SOURCES:
        for node in ast.walk(ast.parse(src.read_text())):
            if isinstance(node, ast.Attribute):
                chain = _chain(node)
                roots = [i for i, n in enumerate(chain[:-1]) if n in _TRT_OBJECTS]
                if roots:
                    names.update(chain[roots[0] + 1:])
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("getattr", "hasattr") \
                    and len(node.args) > 1 and isinstance(node.args[1], ast.Constant):
                names.add(node.args[1].value)
    return names


def _bindings_binary() -> bytes:
    spec = importlib.util.find_spec("tensorrt_bindings")  # finds the files; never imports them
    if spec is None or spec.origin is None:
        pytest.skip("tensorrt-cu12-bindings is not installed (Linux x86-64 only); pip install -e .[test]")
    return (Path(spec.origin).parent / "tensorrt.so").read_bytes()


def test_tensorrt_api_names_exist_in_tensorrt_11():
    binary = _bindings_binary()
    used = _trt_names()
    assert {"execute_async_v3", "set_input_shape", "set_tensor_address", "set_device_memory",
            "ExecutionContextAllocationStrategy", "deserialize_cuda_engine",
            "engine_host_code_allowed"} <= used  # the collector sees them
    # an exported name is a NUL-terminated string (the linker may share the tail of a longer one)
    missing = sorted(n for n in used - _FALLBACKS if not re.search(re.escape(n.encode()) + b"\0", binary))
    assert missing == [], f"not in the TensorRT 11.4 bindings: {missing}"
    assert not used & _REMOVED
    # the names this test calls removed are really absent from TensorRT 11 (so the check can fail)
    gone = [n for n in ("execute_async_v2", "get_binding_shape", "create_execution_context_without_device_memory")
            if re.search(rb"(?<![A-Za-z0-9_])" + n.encode() + rb"\0", binary)]
    assert gone == []


# --- Where TensorRT and a GPU are present -----------------------------------------------------


@needs_tensorrt
def test_build_run_and_compare(engine_modules, tmp_path):
    from seer.engines.tensorrt_compare import compare_plans
    from seer.runtime.pipeline import Pipeline

    out = tmp_path / "trt"
    manifest = tb.build_plans(engine_modules, out=out, log=lambda m: None)
    assert "tensorrt" in manifest["formats"] and set(manifest["tensorrt"]["plans"]) == set(manifest["graphs"])
    assert all(compare_plans(out, atol=1e-2, rtol=1e-2, log=lambda m: None).values())
    ref = Pipeline.load(out)("a red circle", seed=1, steps=8, interval=3, warmup=1, return_latents=True).latents
    for graphs in (False, True):
        got = Pipeline.load(out, backend="tensorrt", device="cuda", cuda_graphs=graphs)(
            "a red circle", seed=1, steps=8, interval=3, warmup=1, return_latents=True).latents
        assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-2


@needs_tensorrt
def test_plans_from_elsewhere_are_refused(engine_modules, tmp_path):
    from seer.engines.manifest import read_manifest, write_manifest
    from seer.errors import EngineDirError
    from seer.runtime.pipeline import Pipeline

    out = tmp_path / "trt"
    tb.build_plans(engine_modules, out=out, log=lambda m: None)
    m = read_manifest(out)
    m["tensorrt"]["version"] = "9.0.0"
    write_manifest(out, {k: v for k, v in m.items() if k not in ("schema", "schema_version", "files")})
    with pytest.raises(EngineDirError, match=f"seer-build {out}"):
        Pipeline.load(out, backend="tensorrt", device="cuda")
