"""An engine directory from someone else: it cannot run code, reach outside itself, hang or exhaust
the reader, or be swapped under a service that pinned its digest; a manifest value it gets wrong is
named in one line."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from click.testing import CliRunner

from seer.errors import EngineDirError, NotTrusted, UsageError
from seer.runtime.pipeline import Pipeline

from cli_contract import one_line_error, run


def manifest(d):
    return json.loads((d / "manifest.json").read_text())


def rewrite(d, m, rehash=()):
    """Write `m` as d's manifest, recording the current size and sha256 of the files in `rehash`:
    what an attacker who writes the directory also does."""
    for rel in rehash:
        data = (d / rel).read_bytes()
        m["files"][rel] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (d / "manifest.json").write_text(json.dumps(m))


# --- no code runs from a directory -------------------------------------------------------------


class _Payload:
    """Unpickling this creates the file at `path`: a stand-in for any code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def _poison_pt2(pt2, marker):
    """Replace the example inputs of a .pt2 archive (which torch.export.load unpickles, falling back
    to an unrestricted unpickler when the safe one refuses) with a pickle payload."""
    import torch

    payload = io.BytesIO()
    torch.save(_Payload(marker), payload)
    with zipfile.ZipFile(pt2) as src:
        members = [(i, src.read(i.filename)) for i in src.infolist()]
    targets = [i.filename for i, _ in members if "sample_inputs" in i.filename or "example_inputs" in i.filename]
    assert targets, [i.filename for i, _ in members]
    with zipfile.ZipFile(pt2, "w", zipfile.ZIP_STORED) as dst:
        for info, data in members:
            dst.writestr(info, payload.getvalue() if info.filename in targets else data)


@pytest.fixture()
def poisoned(engine_copy, tmp_path):
    marker = tmp_path / "payload-ran"
    m = manifest(engine_copy)
    first = next(iter(m["graphs"]))  # the torch backend loads the graphs in the manifest's order
    _poison_pt2(engine_copy / m["graphs"][first]["torch"], marker)
    rewrite(engine_copy, m, rehash=[m["graphs"][first]["torch"]])
    return engine_copy, marker


def test_a_pickle_payload_in_a_torch_program_does_not_run(poisoned, tmp_path):
    d, marker = poisoned
    one_line_error(*run([d, "-p", "a red circle", "--backend", "torch", "--steps", "2", "--out", tmp_path / "x.png"]),
                   "runs Python code", "--trust-torch-programs", "--backend onnxruntime")
    with pytest.raises(NotTrusted):
        Pipeline.load(d, backend="torch")
    # the same directory on ONNX Runtime never opens the .pt2
    assert run([d, "-p", "a red circle", "--steps", "2", "--out", tmp_path / "x.png"])[0] == 0
    assert not marker.exists()


def test_the_payload_is_real_when_the_directory_is_trusted(poisoned):
    """What the refusal above prevents: a trusted .pt2 is unpickled, and the payload runs."""
    d, marker = poisoned
    with pytest.raises(Exception):  # noqa: B017 (the payload's return value breaks the load afterwards)
        Pipeline.load(d, backend="torch", trust_torch_programs=True)
    assert marker.exists()


def test_tensorrt_plans_are_never_allowed_host_code():
    import ast
    from pathlib import Path

    import seer.runtime.tensorrt_backend as trt_backend

    tree = ast.parse(Path(trt_backend.__file__).read_text())
    settings = [n for n in ast.walk(tree) if isinstance(n, ast.Assign) and any(
        isinstance(t, ast.Attribute) and t.attr == "engine_host_code_allowed" for t in n.targets)]
    assert settings and all(isinstance(n.value, ast.Constant) and n.value.value is False for n in settings)


# --- confinement -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["../outside.onnx", "/etc/hostname", "x/../full.onnx", "./full.onnx", "a//b.onnx",
                                  "..\\full.onnx"])
def test_paths_leading_out_are_refused(engine_copy, path):
    m = manifest(engine_copy)
    m["graphs"]["full"]["onnx"] = path
    rewrite(engine_copy, m)
    one_line_error(*run([engine_copy, "-p", "x"]), "graphs.full.onnx", "not a path inside the directory")


def test_a_symlink_leading_out_is_refused_even_with_the_right_hash(engine_copy, tmp_path):
    outside = tmp_path / "outside.json"
    shutil.copy(engine_copy / "tokenizers" / "clip.json", outside)
    (engine_copy / "tokenizers" / "clip.json").unlink()
    (engine_copy / "tokenizers" / "clip.json").symlink_to(outside)
    one_line_error(*run([engine_copy, "-p", "x"]), "tokenizers/clip.json", "symbolic link")


def test_a_symlinked_folder_is_refused(engine_copy, tmp_path):
    shutil.move(engine_copy / "tokenizers", tmp_path / "elsewhere")
    (engine_copy / "tokenizers").symlink_to(tmp_path / "elsewhere")
    one_line_error(*run([engine_copy, "-p", "x"]), "symbolic link", "tokenizers")


def test_a_symlinked_manifest_is_refused(engine_copy, tmp_path):
    shutil.move(engine_copy / "manifest.json", tmp_path / "manifest.json")
    (engine_copy / "manifest.json").symlink_to(tmp_path / "manifest.json")
    one_line_error(*run([engine_copy, "-p", "x"]), "manifest.json", "symbolic link")


def test_a_fifo_does_not_hang_the_reader(engine_copy):
    m = manifest(engine_copy)
    (engine_copy / "tokenizers" / "t5.json").unlink()
    os.mkfifo(engine_copy / "tokenizers" / "t5.json")
    m["files"]["tokenizers/t5.json"] = {"bytes": 0, "sha256": hashlib.sha256(b"").hexdigest()}
    rewrite(engine_copy, m)
    # in a child process with a deadline: a reader that opens the FIFO blocks forever
    proc = subprocess.run([sys.executable, "-m", "seer.runtime.cli", str(engine_copy), "-p", "x"],
                          capture_output=True, text=True, timeout=120)
    one_line_error(proc.returncode, proc.stderr, "tokenizers/t5.json", "not a regular file")


def test_every_file_used_must_be_listed(engine_copy):
    m = manifest(engine_copy)
    del m["files"]["tokenizers/t5.json"]
    rewrite(engine_copy, m)
    one_line_error(*run([engine_copy, "-p", "x"]), "text.t5.tokenizer", "does not list", "re-export")


@pytest.mark.parametrize("files", [None, {}])
def test_deleting_the_file_list_does_not_turn_verification_off(engine_copy, files):
    m = manifest(engine_copy)
    if files is None:
        del m["files"]
    else:
        m["files"] = files
    rewrite(engine_copy, m)
    one_line_error(*run([engine_copy, "-p", "x"]), "files", "re-export")


# --- pinning -----------------------------------------------------------------------------------


def test_the_digest_pins_the_manifest(engine_copy, tmp_path):
    digest = "sha256:" + hashlib.sha256((engine_copy / "manifest.json").read_bytes()).hexdigest()
    pipe = Pipeline.load(engine_copy, expect_digest=digest)
    assert pipe.digest == digest
    assert Pipeline.load(engine_copy, expect_digest=digest.split(":")[1].upper()).digest == digest  # bare hex too
    code, out = run([engine_copy, "-p", "a red circle", "--steps", "2", "--expect-digest", digest, "--json",
                     "--out", tmp_path / "x.png"])
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["digest"] == digest
    # an edit a hash check cannot see: a manifest value (files untouched)
    m = manifest(engine_copy)
    m["defaults"]["steps"] = 2
    rewrite(engine_copy, m)
    Pipeline.load(engine_copy)  # still a valid directory...
    one_line_error(*run([engine_copy, "-p", "x", "--expect-digest", digest]), "not the expected", digest)
    with pytest.raises(EngineDirError, match="not the expected"):
        Pipeline.load(engine_copy, expect_digest=digest)  # ...but not the pinned one


@pytest.mark.parametrize("digest", ["", "sha256:", "abc", "sha256:" + "g" * 64])
def test_a_pin_must_be_a_digest(engine_copy, digest):
    with pytest.raises(UsageError, match="is not a digest"):
        Pipeline.load(engine_copy, expect_digest=digest)


def test_weights_in_an_unlisted_file_are_refused(engine_copy):
    """A graph that keeps its weights in a file `files` does not list: a pinned directory could then
    compute something else with the same digest."""
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    m = manifest(engine_copy)
    model = onnx.load(engine_copy / "clip.onnx")
    convert_model_to_external_data(model, location="w.bin")  # the weights over 1 kB
    onnx.save(model, engine_copy / "clip.onnx")
    rewrite(engine_copy, m, rehash=["clip.onnx"])  # clip.onnx verified; w.bin not listed
    one_line_error(*run([engine_copy, "-p", "x"]), "'w.bin'", "does not list", "re-export")
    rewrite(engine_copy, m, rehash=["clip.onnx", "w.bin"])  # listed: verified and pinned, and it runs
    Pipeline.load(engine_copy)


def test_a_pin_needs_verification(engine_copy):
    with pytest.raises(UsageError, match="--no-verify"):
        Pipeline.load(engine_copy, verify=False, expect_digest="sha256:" + "0" * 64)


def test_export_prints_the_digest(tmp_path):
    from seer.export.cli import main as export_main

    out = tmp_path / "e"
    result = CliRunner().invoke(export_main, ["flux-tiny", "--out", str(out), "--cache", "lite", "--max-order", "1",
                                              "--no-torch-programs"])
    assert result.exit_code == 0, result.output
    digest = "sha256:" + hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest()
    assert f"digest {digest}" in result.output


# --- manifest values ---------------------------------------------------------------------------


def _set(m, key, value):
    *parents, last = key if isinstance(key, tuple) else key.split(".")
    for p in parents:
        m = m[int(p)] if isinstance(m, list) else m[p]
    if value is _DELETE:
        del m[last]
    else:
        m[last] = value


_DELETE = object()

BAD_VALUES = [  # (key, value, what the error line names)
    ("text.t5.max_length", 10**9, "text.t5.max_length"),
    ("text.t5.max_length", 0, "text.t5.max_length"),
    ("cache.max_order", 10**7, "cache.max_order"),
    ("cache.feature_dim", -1, "cache.feature_dim"),
    ("cache.streams", [], "cache.streams"),
    ("cache.granularity", "everything", "cache.granularity"),
    ("defaults.steps", "50", "defaults.steps"),
    ("defaults.height", 1e9, "defaults.height"),
    ("defaults.guidance_scale", None, "defaults.guidance_scale"),
    ("defaults.schedule", _DELETE, "schedule"),
    ("model.config.guidance", "yes", "model.config.guidance"),
    ("model.config.dim", 0, "model.config.dim"),
    ("model.family", "sdxl", "model.family"),
    ("sampler.type", "ddim", "sampler.type"),
    ("sampler", [], "sampler"),
    ("latent.vae_scale_factor", 0, "latent.vae_scale_factor"),
    ("graphs.full.inputs", {}, "graphs.full.inputs"),
    ("graphs.full.inputs.0.shape", [1e12], "graphs.full.inputs[0] (hidden_states).shape"),
    ("graphs.forecast.inputs.4.dtype", "float64", "factor_0"),
    ("graphs.extra", {"onnx": "full.onnx", "inputs": [], "outputs": []}, "extra"),
    (("files", "full.onnx", "sha256"), "zz", "files.full.onnx.sha256"),
    # values that disagree with the rest of the manifest
    ("cache.max_order", 1, "graphs.forecast"),
    ("cache.feature_dim", 65, "size 64"),
    ("text.t5.max_length", 17, "graphs.t5.inputs input_ids"),
    ("model.config.guidance", True, "graphs.full"),
    ("defaults.schedule.order", 2, None),  # fine: max_order is 2
    # whole-number floats are not integers to a reader that sizes buffers with them
    ("cache.max_order", 2.0, "cache.max_order"),
    ("defaults.height", 64.0, "defaults.height"),
    ("text.t5.pad_id", 0.0, "text.t5.pad_id"),
    ("schema_version", 3.0, "schema v3.0"),
    ("graphs.clip.onnx", "clip.onnx\n", "graphs.clip.onnx"),
    # values within their ranges that the graphs or tokenizers cannot take
    ("text.t5.pad_id", 10**7, "outside the tokenizer's vocabulary"),
    ("graphs.t5.inputs.0.shape", ["B", "L"], "size 'L' that dims does not define"),
    ("dims.N_img", "(H // 8) * (W // 16)", "FLUX's 2x2 packing"),
    ("dims.N_img", "__import__('os')", "dims.N_img"),
    ("guidance.kind", "cfg", "guidance.kind"),
    ("model.family", "wan", "model.family"),
    ("graphs.clip.onnx", "tokenizers/clip.json", "not an ONNX graph"),
    ("latent.vae_scale_factor", 4, "FLUX's 2x2 packing"),  # the graphs' sizes would not be the runtime's
    ("sampler", {"type": "flow_match_euler", "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True,
                 "base_shift": -100, "max_shift": 100, "base_image_seq_len": 1, "max_image_seq_len": 2},
     "time shift overflows"),
]


@pytest.mark.parametrize("key,value,needle", BAD_VALUES, ids=[f"{k}={v!r}"[:50] for k, v, _ in BAD_VALUES])
def test_manifest_values_are_validated_before_use(engine_copy, key, value, needle, tmp_path):
    m = manifest(engine_copy)
    _set(m, key, value)
    rewrite(engine_copy, m)
    code, out = run([engine_copy, "-p", "a red circle", "--steps", "2", "--out", tmp_path / "x.png"])
    if needle is None:
        assert code == 0, out
    else:
        one_line_error(code, out, needle, "re-export")


@pytest.mark.parametrize("text", ["[]", "null", '"seer"', "{}", "\u00ff\u00fe{", "{" * 100000, '{"a": NaN}',
                                  '{"schema": "seer.engine-dir", "schema": "x"}', '{"a": ' + "9" * 5000 + "}"])
def test_malformed_manifests(engine_copy, text):
    (engine_copy / "manifest.json").write_bytes(text.encode("latin-1"))
    one_line_error(*run([engine_copy, "-p", "x"]), "manifest.json")


def test_an_oversized_manifest_is_not_read_whole(engine_copy):
    with open(engine_copy / "manifest.json", "ab") as f:
        f.write(b" " * (17 << 20))
    one_line_error(*run([engine_copy, "-p", "x"]), "larger than 16 MiB")


@pytest.mark.parametrize("change,needle", [
    (lambda g: g["inputs"][0].update(name="latents_in"), "'latents_in'"),
    (lambda g: g["inputs"][0].update(dtype="float16"), "as float16, the graph has float32"),
    (lambda g: g["outputs"][0]["shape"].__setitem__(1, 4), "with shape ['B', 4, 'H', 'W']"),
])
def test_manifest_that_disagrees_with_its_graphs(engine_copy, change, needle):
    m = manifest(engine_copy)
    change(m["graphs"]["vae_decoder"])
    rewrite(engine_copy, m)
    one_line_error(*run([engine_copy, "-p", "x"]), "vae_decoder", needle, "re-export")
