"""libseer (cpp/) against the Python runtime: built with CMake from a clean checkout, then run on golden
vectors the Python side writes (cpp/tests/golden.py): token ids equal, noise within 1e-6, latents within
1e-5 of their scale from libseer's own noise and within 1e-6 from the same noise, images within one
level; bad directories and requests get the same kind of error, in one line. FLUX (modules, lite,
embedded guidance, a calibrated plan, another size) and DiT (other dimensions, classifier-free guidance,
DDIM, lite)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "cpp" / "build"


@pytest.fixture(scope="session")
def libseer():
    """cpp/build.sh: fetches the headers, configures and builds (incrementally after the first time)."""
    run = subprocess.run(["bash", str(ROOT / "cpp" / "build.sh")], capture_output=True, text=True, timeout=1800)
    if run.returncode != 0:
        pytest.fail(f"libseer did not build:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    return BUILD


def _golden(engine: Path, out: Path, cases: list[dict]) -> Path:
    cmd = [sys.executable, str(ROOT / "cpp" / "tests" / "golden.py"), str(engine), str(out)]
    for c in cases:
        cmd += ["--case", json.dumps(c)]
    subprocess.run(cmd, check=True, timeout=900)
    return out


def _conformance(libseer: Path, golden: Path, errors: list[dict] | None = None, tmp: Path | None = None) -> dict:
    cmd = [str(libseer / "seer-conformance"), str(golden)]
    if errors is not None:
        path = tmp / "errors.json"
        path.write_text(json.dumps(errors))
        cmd.append(str(path))
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:] + run.stdout[-2000:]
    report = json.loads(run.stdout)
    print(json.dumps(report, indent=1))  # the measured differences, kept in the test log
    return report


def _with_plan(engine: Path, tmp: Path) -> Path:
    """A copy of the directory with a calibrated-style plan: uneven full steps, non-Taylor weights."""
    from seer.calib.calibrate import add_plans
    from seer.engines.manifest import read_manifest
    from seer.runtime.plan import Plan, graph_hashes
    from seer.runtime.schedule import Schedule

    dst = tmp / "with-plan"
    shutil.copytree(engine, dst)
    full = tuple(i in (0, 1, 2, 5, 9, 10) for i in range(12))
    rule = Plan.from_schedule(Schedule(full=full, derive_from=1), 2, 3)
    coefficients = tuple(None if c is None else (c * np.float32(0.9)).astype(np.float32) for c in rule.coefficients)
    graphs = graph_hashes(read_manifest(dst))
    plan = Plan(full, 2, coefficients, 1, "uneven", {"method": "test", "graphs": graphs})
    add_plans(dst, {"uneven": plan}, graphs)
    return dst


def test_flux_tiny_conforms(libseer, engine_modules, tmp_path):
    engine = _with_plan(engine_modules, tmp_path)
    cases = [{"prompt": "a red circle at the top left", "seed": 3, "steps": 8},
             {"prompt": "two blue squares", "seed": 11, "steps": 12, "height": 48, "width": 80, "images": 2},
             {"prompt": "a green triangle", "seed": 5, "steps": 12, "order": 2, "interval": 3, "warmup": 2},
             {"prompt": "a yellow circle", "seed": 6, "steps": 10, "schedule_style": "diffusers", "final_full": 1},
             {"prompt": "a red square", "seed": 8, "steps": 6, "no_cache": True},
             {"prompt": "a blue circle", "seed": 9, "plan": "uneven"}]
    report = _conformance(libseer, _golden(engine, tmp_path / "golden", cases))
    assert report["failures"] == 0 and report["token_cases"] >= 18 and len(report["cases"]) == len(cases)


def test_flux_lite_and_embedded_guidance_conform(libseer, engine_lite, engine_guided, tmp_path):
    lite = _golden(engine_lite, tmp_path / "lite", [{"prompt": "a red circle", "seed": 1, "steps": 10}])
    assert _conformance(libseer, lite)["failures"] == 0
    guided = _golden(engine_guided, tmp_path / "guided", [{"prompt": "a red circle", "seed": 2, "steps": 8, "guidance_scale": 5.0}])
    assert _conformance(libseer, guided)["failures"] == 0


def test_dit_conforms(libseer, engine_dit, engine_dit_lite, tmp_path):
    cases = [{"class_label": "3", "seed": 5, "steps": 10},
             {"class_label": "3", "seed": 9, "steps": 12, "images": 2, "guidance_scale": 4.0},
             {"class_label": "1", "seed": 1, "steps": 8, "no_cache": True}]
    assert _conformance(libseer, _golden(engine_dit, tmp_path / "dit", cases))["failures"] == 0
    lite = _golden(engine_dit_lite, tmp_path / "dit-lite", [{"class_label": "2", "seed": 4, "steps": 10, "guidance_scale": 3.0}])
    assert _conformance(libseer, lite)["failures"] == 0


@pytest.mark.parametrize("sampler", [
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    {"prediction_type": "v_prediction", "timestep_spacing": "trailing", "clip_sample": True, "rescale_betas_zero_snr": True},
    {"prediction_type": "sample", "timestep_spacing": "linspace", "beta_schedule": "squaredcos_cap_v2", "set_alpha_to_one": False,
     "steps_offset": 1}])
def test_every_ddim_setting_conforms(libseer, engine_dit, tmp_path, sampler):
    """The sampler settings diffusers' DDIMScheduler takes, each through both runtimes (the DiT's weights do not
    care which schedule they are stepped with: the loop's arithmetic is what is compared)."""
    engine = tmp_path / "dit"
    shutil.copytree(engine_dit, engine)
    m = json.loads((engine / "manifest.json").read_text())
    m["sampler"].update(sampler)
    (engine / "manifest.json").write_text(json.dumps(m))
    golden = _golden(engine, tmp_path / "golden", [{"class_label": "3", "seed": 2, "steps": 10, "guidance_scale": 2.0}])
    assert _conformance(libseer, golden)["failures"] == 0


def _python_kind(directory: Path, request: dict | None) -> tuple[str, str]:
    """What the Python runtime answers: the kind of its error (as libseer names them) and its message."""
    from seer import Pipeline
    from seer.errors import EngineDirError, MemoryLimitError, UsageError

    try:
        pipe = Pipeline.load(directory)
        if request is not None:
            pipe(**request)
    except UsageError as e:
        return "usage", str(e)
    except EngineDirError as e:
        return "engine_dir", str(e)
    except MemoryLimitError as e:
        return "memory", str(e)
    return "ok", ""


def test_bad_directories_and_requests_get_the_python_runtimes_answer(libseer, engine_modules, engine_dit, tmp_path):
    golden = _golden(engine_modules, tmp_path / "golden", [])
    bad = {}

    def copy(name):
        dst = tmp_path / name
        shutil.copytree(engine_modules, dst)
        return dst

    d = copy("changed")
    with open(d / "t5.onnx", "r+b") as f:  # same size, one byte different
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    bad["a changed file"] = (d, None, ["t5.onnx", "sha256"])
    d = copy("schema")
    m = json.loads((d / "manifest.json").read_text())
    m["schema_version"] = 99
    (d / "manifest.json").write_text(json.dumps(m))
    bad["another schema version"] = (d, None, ["v99", "upgrade"])
    d = copy("missing")
    (d / "vae_decoder.onnx").unlink()
    bad["a missing file"] = (d, None, ["vae_decoder.onnx"])
    d = copy("symlink")
    os.rename(d / "clip.onnx", tmp_path / "clip-outside.onnx")
    os.symlink(tmp_path / "clip-outside.onnx", d / "clip.onnx")
    bad["a symbolic link"] = (d, None, ["symbolic link"])
    d = copy("escape")
    m = json.loads((d / "manifest.json").read_text())
    m["files"]["../outside"] = m["files"].pop("clip.onnx")
    m["graphs"]["clip"]["onnx"] = "../outside"
    (d / "manifest.json").write_text(json.dumps(m))
    bad["a path out of the directory"] = (d, None, ["not a path inside"])
    d = copy("external")
    import onnx

    model = onnx.load(str(d / "vae_decoder.onnx"))
    onnx.save_model(model, str(d / "vae_decoder.onnx"), save_as_external_data=True, location="unlisted.bin",
                    size_threshold=0)
    m = json.loads((d / "manifest.json").read_text())
    from seer.engines.manifest import sha256_file

    m["files"]["vae_decoder.onnx"] = {"bytes": (d / "vae_decoder.onnx").stat().st_size,
                                      "sha256": sha256_file(d / "vae_decoder.onnx")}
    (d / "manifest.json").write_text(json.dumps(m))
    bad["weights in an unlisted file"] = (d, None, ["unlisted.bin", "cannot be verified"])
    bad["a size the model cannot take"] = (engine_modules, {"prompt": "a red circle", "height": 63}, ["height 63", "multiple of 16"])
    bad["a request larger than the machine"] = (engine_modules, {"prompt": "a red circle", "height": 4096, "width": 4096},
                                                ["needs about", "available memory"])
    bad["an empty prompt"] = (engine_modules, {"prompt": "   "}, ["prompt is empty"])
    bad["an unknown plan"] = (engine_modules, {"prompt": "a red circle", "plan": "nope"}, ["no plan named 'nope'"])
    bad["an order above the export's"] = (engine_modules, {"prompt": "x", "order": 3}, ["order 3", "--max-order"])
    bad["a class for a text model"] = (engine_modules, {"class_labels": "3"}, ["text-to-image"])
    bad["a DiT at another size"] = (engine_dit, {"class_labels": "3", "height": 128, "width": 128}, ["images only"])
    bad["a class the DiT lacks"] = (engine_dit, {"class_labels": "5000"}, ["not a class of this model"])
    errors = []
    for name, (directory, request, contains) in bad.items():
        kind, message = _python_kind(directory, request)
        assert kind != "ok", name
        c_request = None
        if request is not None:
            c_request = {("class_label" if k == "class_labels" else k): v for k, v in request.items()}
        errors.append({"name": name, "dir": str(directory), "kind": kind, "python": message, "contains": contains,
                       **({"request": c_request} if c_request else {})})
    report = _conformance(libseer, golden, errors, tmp_path)
    assert report["failures"] == 0 and len(report["errors"]) == len(bad)


def test_seer_generate_writes_the_pipelines_image_and_refuses_bad_input(libseer, engine_modules, tmp_path):
    from PIL import Image

    from seer import Pipeline

    out = tmp_path / "c.png"
    run = subprocess.run([str(libseer / "seer-generate"), str(engine_modules), "--prompt", "a red circle", "--seed", "4",
                          "--steps", "8", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    reference = np.asarray(Pipeline.load(engine_modules)("a red circle", seed=4, steps=8).image, dtype=np.int16)
    assert np.abs(np.asarray(Image.open(out).convert("RGB"), dtype=np.int16) - reference).max() <= 1
    for args, needle in ((["--prompt", "x", "--height", "63", "--out", str(out)], "height 63 cannot be generated"),
                         (["--prompt", "x", "--out", str(tmp_path / "a.jpg")], "ending in .png"),
                         (["--prompt", "x", "--seed", "-1", "--out", str(out)], "--seed takes"),
                         (["--prompt", "x", "--out", str(out), "--expect-digest", "sha256:" + "0" * 64], "not the expected")):
        run = subprocess.run([str(libseer / "seer-generate"), str(engine_modules), *args], capture_output=True, text=True,
                             timeout=300)
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], run.stderr


def test_the_c_api_from_c(libseer, engine_modules, tmp_path):
    """The header is C, the library exports only the C API, and a C program gets the Python runtime's image."""
    from seer import Pipeline

    exe = tmp_path / "c_example"
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Werror", f"-I{ROOT / 'cpp' / 'include'}", str(ROOT / "cpp" / "tests" / "c_example.c"),
                    f"-L{libseer}", "-lseer", f"-Wl,-rpath,{libseer}", "-o", str(exe)], check=True)
    run = subprocess.run([str(exe), str(engine_modules), "a red circle", "4"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    image = np.asarray(Pipeline.load(engine_modules)("a red circle", seed=4, steps=8).image)
    size, steps, total = run.stdout.split()
    assert size == f"{image.shape[1]}x{image.shape[0]}" and steps.endswith("/8")
    assert abs(int(total) - int(image.astype(np.int64).sum())) <= image.size  # within one level a value
    exported = subprocess.run(["nm", "-D", "--defined-only", str(libseer / "libseer.so")], capture_output=True, text=True,
                              check=True).stdout
    symbols = {line.split()[-1] for line in exported.splitlines() if " T " in line}
    assert symbols and all(s.startswith("seer_") for s in symbols), sorted(symbols)[:10]


@pytest.mark.parametrize("variant", [{"family": "flux", "cache": "modules"},
                                     {"family": "flux", "cache": "lite", "factor_dtype": "float32"},
                                     {"family": "dit", "cache": "modules"}])
def test_float16_directories_conform(libseer, dit_model, tmp_path, variant):
    """16-bit graphs: latents, predictions and factors rounded to float16 as the Python runtime (numpy) rounds
    them, the graphs bound through half-precision buffers; factors in float32 beside float16 graphs too."""
    from seer.export.dit_export import export_dit
    from seer.export.flux_export import export_flux

    out = tmp_path / "engine"
    kw = {"cache": variant["cache"], "precision": "float16", "log": lambda m: None}
    if "factor_dtype" in variant:
        kw["factor_dtype"] = variant["factor_dtype"]
    if variant["family"] == "flux":
        export_flux("flux-tiny", out, max_order=2, torch_program=False, **kw)
        cases = [{"prompt": "a red circle", "seed": 1, "steps": 10}, {"prompt": "two squares", "seed": 3, "steps": 12, "order": 2,
                                                                      "interval": 3, "images": 2}]
    else:
        export_dit(str(dit_model), out, max_order=2, **kw)
        cases = [{"class_label": "3", "seed": 5, "steps": 10, "guidance_scale": 4.0}]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["graphs"]["full"]["inputs"][0]["dtype"] == "float16"
    report = _conformance(libseer, _golden(out, tmp_path / "golden", cases))
    assert report["failures"] == 0
