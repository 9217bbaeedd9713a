"""Every bad input gets one line naming the problem and the fix, and exit code 2."""

from __future__ import annotations

import json

import pytest

from seer.export.cli import main as export_main

from cli_contract import one_line_error as _one_line_error, run


def test_missing_file(engine_copy):
    (engine_copy / "forecast.onnx").unlink()
    _one_line_error(*run([engine_copy, "-p", "x"]), "missing forecast.onnx", "re-export")


def test_changed_file(engine_copy):
    p = engine_copy / "tokenizers" / "clip.json"
    data = bytearray(p.read_bytes())
    data[10] ^= 1
    p.write_bytes(bytes(data))
    _one_line_error(*run([engine_copy, "-p", "x"]), "does not match its sha256", "re-export")


@pytest.mark.parametrize("version,fix", [(99, "upgrade seer"), (0, "re-export")])
def test_other_schema_version(engine_copy, version, fix):
    m = json.loads((engine_copy / "manifest.json").read_text())
    m["schema_version"] = version
    (engine_copy / "manifest.json").write_text(json.dumps(m))
    _one_line_error(*run([engine_copy, "-p", "x"]), f"schema v{version}", fix)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_older_directories_still_run(engine_copy, version):
    m = json.loads((engine_copy / "manifest.json").read_text())
    assert m["schema_version"] == 4
    # what seer wrote before model families (v3: FLUX only, its guidance and sizes implied), before
    # per-graph precision (v2) and before FP8 and TensorRT plans (v1): the same keys minus those
    m["schema_version"] = version
    del m["guidance"], m["dims"]
    if version < 3:
        for g in m["graphs"].values():
            del g["precision"]
        del m["cache"]["factor_dtype"]
    (engine_copy / "manifest.json").write_text(json.dumps(m))
    assert run([engine_copy, "-p", "a red circle", "--steps", "2", "--out", str(engine_copy / "x.png")])[0] == 0


def test_not_an_engine_dir(tmp_path):
    _one_line_error(*run([tmp_path, "-p", "x"]), "no manifest.json", "seer-export")


def test_backend_not_available(engine_lite):
    # exported without torch programs
    _one_line_error(*run([engine_lite, "-p", "x", "--backend", "torch"]), "without torch programs", "--backend onnxruntime")


def test_cuda_provider_not_installed(engine_modules):
    _one_line_error(*run([engine_modules, "-p", "x", "--device", "cuda"]), "no CUDA provider", "onnxruntime-gpu")


@pytest.mark.parametrize("args,needles", [
    (["--height", "100"], ["height 100", "multiple of 16", "try 96 or 112"]),
    (["--width", "0"], ["width 0"]),
    (["--interval", "0"], ["interval must be at least 1"]),
    (["--order", "-1"], ["order must be 0 or more"]),
    (["--order", "3"], ["above the 2", "--max-order 3"]),
    (["--warmup", "9", "--steps", "8"], ["warm-up must be between 1 and the number of steps (8)"]),
    (["--steps", "0"], ["steps must be at least 1"]),
])
def test_bad_settings(engine_modules, args, needles):
    _one_line_error(*run([engine_modules, "-p", "a red circle", *args]), *needles)


def test_empty_prompt(engine_modules):
    _one_line_error(*run([engine_modules, "-p", "   "]), "prompt is empty")


def test_long_prompt_is_truncated_with_a_warning(engine_modules, tmp_path):
    prompt = " ".join(["a red circle at the top left"] * 30)
    code, out = run([engine_modules, "-p", prompt, "--steps", "2", "--out", tmp_path / "x.png"])
    assert code == 0, out
    assert "warning: the prompt is longer than the t5 encoder takes" in out and "truncated" in out
    assert "clip" in out  # 180 words exceed CLIP's 77 tokens too


def test_unknown_model_offline(tmp_path):
    code, out = run(["nobody/no-such-flux", "--out", tmp_path / "e"], main=export_main,
                    env={"HF_HUB_OFFLINE": "1"})
    _one_line_error(code, out, "cannot get 'nobody/no-such-flux'", "local diffusers directory")
    assert not (tmp_path / "e").exists()


def test_model_dir_that_is_not_flux(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    _one_line_error(*run([tmp_path / "m", "--out", tmp_path / "e"], main=export_main), "FLUX")


@pytest.mark.parametrize("index,needles", [
    ("{not json", ["model_index.json is not valid JSON", "save_pretrained"]),
    ("\udcff", ["model_index.json is not valid JSON"]),
    ("[]", ["does not name its pipeline class"]),
    ("null", ["does not name its pipeline class"]),
    ("{}", ["does not name its pipeline class"]),
    ('{"_class_name": 3}', ["does not name its pipeline class"]),
    ('{"_class_name": "FluxPipeline", "transformer": null}', ["names no text_encoder", "complete FLUX pipeline"]),
])
def test_model_dir_with_a_malformed_model_index(tmp_path, index, needles):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model_index.json").write_bytes(index.encode("utf-8", "surrogateescape"))
    _one_line_error(*run([tmp_path / "m", "--out", tmp_path / "e"], main=export_main), *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


@pytest.mark.parametrize("length,needles", [
    (0, ["--max-sequence-length must be at least 1 (got 0)"]),
    (-5, ["--max-sequence-length must be at least 1 (got -5)"]),
    (17, ["--max-sequence-length 17 is more than the 16 T5 tokens", "choose 1 to 16"]),  # flux-tiny's tokenizer
])
def test_max_sequence_length_out_of_range(tmp_path, length, needles):
    _one_line_error(*run(["flux-tiny", "--out", tmp_path / "e", "--max-sequence-length", length], main=export_main),
                    *needles)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_not_overwritten(engine_modules):
    _one_line_error(*run(["flux-tiny", "--out", engine_modules], main=export_main), "already exists", "--overwrite")


def test_failed_export_leaves_nothing(tiny_model, tmp_path, monkeypatch):
    from seer.export import flux_export

    real = flux_export.export_graph

    def fail_on_t5(module, inputs, outputs, dims, directory, name, *a, **k):
        if name == "t5":
            raise KeyboardInterrupt
        return real(module, inputs, outputs, dims, directory, name, *a, **k)

    monkeypatch.setattr(flux_export, "export_graph", fail_on_t5)
    with pytest.raises(KeyboardInterrupt):
        flux_export.export_flux("flux-tiny", tmp_path / "e", log=lambda m: None)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("short", ["disk", "memory"])
def test_export_refuses_to_start_without_the_resources_it_needs(tmp_path, monkeypatch, short):
    import collections

    import psutil

    from seer.export import checkpoint

    if short == "disk":
        usage = collections.namedtuple("usage", "total used free")
        monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: usage(10**12, 10**12 - 1000, 1000))
        needles = ("GB free in", "another --out")
    else:
        memory = collections.namedtuple("memory", "available")
        monkeypatch.setattr(psutil, "virtual_memory", lambda: memory(1000))
        needles = ("GB of memory", "available")
    out = tmp_path / "engine"
    _one_line_error(*run(["flux-tiny", "--out", out], main=export_main), "needs about", *needles)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a partial directory


def test_fp8_directory_without_torch_programs_on_the_torch_backend_names_the_fix(engine_copy):
    m = json.loads((engine_copy / "manifest.json").read_text())
    m["quantization"] = {"full": {"format": "fp8-e4m3fn"}}  # as exported with --fp8 --no-torch-programs
    m["formats"] = ["onnx"]
    (engine_copy / "manifest.json").write_text(json.dumps(m))
    _one_line_error(*run([engine_copy, "-p", "x", "--backend", "torch"]), "FP8", "--backend onnxruntime")


@pytest.mark.parametrize("dtype", ["object", None, "float64"])
def test_manifest_with_a_buffer_dtype_seer_does_not_bind(engine_copy, dtype):
    m = json.loads((engine_copy / "manifest.json").read_text())
    spec = next(t for t in m["graphs"]["forecast"]["inputs"] if t["name"] == "factor_0")
    spec["dtype"] = dtype
    (engine_copy / "manifest.json").write_text(json.dumps(m))
    _one_line_error(*run([engine_copy, "-p", "x", "--no-verify"]), "factor_0", "re-export")


@pytest.mark.parametrize("args,needles", [
    (["--steps", "abc"], ["'--steps'", "not a valid integer", "--help"]),
    (["--bogus"], ["No such option '--bogus'", "--help"]),
    (["--backend", "cuda"], ["'--backend'", "--help"]),
])
def test_usage_errors_are_one_line_too(engine_modules, args, needles):
    _one_line_error(*run([engine_modules, "-p", "x", *args]), *needles)


def test_a_missing_argument_is_one_line(tmp_path):
    _one_line_error(*run(["--out", tmp_path / "e"], main=export_main), "Missing argument 'MODEL'",
                    "--help")
