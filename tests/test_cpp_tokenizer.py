"""libseer's C++ tokenizer (cpp/src/tokenizer.cpp) against the Python `tokenizers` library: exact token ids.

Builds cpp/tests/test_tokenizer.cpp with g++ (into cpp/build/tokenizer_test, reused while the sources are
unchanged), writes golden ids with cpp/tests/tokenizer_golden.py for flux-tiny's tokenizers (the asset files and
the engine-directory copies), a T5 tokenizer with sentencepiece's Precompiled normalizer trained here, a CLIP-style
byte-level BPE trained here, and variants exercising the other supported components, on ~500 prompts each, and
requires the C++ ids to equal them. A missing compiler, ICU or nlohmann-json fails the test (it is not skipped).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CPP = REPO / "cpp"
SOURCES = [CPP / "src" / "tokenizer.cpp", CPP / "src" / "tokenizer.h", CPP / "tests" / "test_tokenizer.cpp"]
BUILD = CPP / "build" / "tokenizer_test"


def _icu_flags() -> list[str]:
    try:
        out = subprocess.run(["pkg-config", "--cflags", "--libs", "icu-uc", "icu-i18n"], capture_output=True,
                             text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.fail(f"ICU not found through pkg-config (icu-uc, icu-i18n): {e}; install libicu-dev and pkg-config")
    return out.split()


@pytest.fixture(scope="module")
def test_binary() -> Path:
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        pytest.fail("no C++ compiler: g++ (or $CXX) is not on PATH; install g++ to build libseer")
    include = CPP / "deps" / "include"
    if not (include / "nlohmann" / "json.hpp").is_file():
        pytest.fail(f"nlohmann-json headers missing under {include.relative_to(REPO)}; run `bash cpp/fetch_deps.sh`")
    cmd = [cxx, "-std=c++17", "-O2", "-Wall", "-Wextra", f"-I{include}", f"-I{CPP / 'src'}",
           str(SOURCES[0]), str(SOURCES[2]), "-o", str(BUILD / "test_tokenizer"), "-pthread", *_icu_flags()]
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256("\0".join([*cmd, version, *(p.read_text() for p in SOURCES)]).encode()).hexdigest()
    stamp = BUILD / "stamp"
    if not ((BUILD / "test_tokenizer").is_file() and stamp.is_file() and stamp.read_text() == key):
        BUILD.mkdir(parents=True, exist_ok=True)
        stamp.unlink(missing_ok=True)
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            pytest.fail(f"compiling the tokenizer test failed:\n{' '.join(cmd)}\n{r.stderr[-4000:]}")
        stamp.write_text(key)
    return BUILD / "test_tokenizer"


@pytest.fixture(scope="module")
def goldens(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("tokenizer_golden")
    r = subprocess.run([sys.executable, str(CPP / "tests" / "tokenizer_golden.py"), "all", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, f"writing the goldens failed:\n{r.stderr[-4000:]}"
    return out, json.loads((out / "manifest.json").read_text())


def test_golden_ids(test_binary, goldens):
    out, manifest = goldens
    names = {m["name"] for m in manifest}
    for required in ("flux_tiny_clip", "flux_tiny_t5", "engine_clip", "engine_t5", "t5_flux", "t5_transformers",
                     "clip_bpe"):
        assert required in names, f"fixture {required} was not built"
    t5 = json.loads((out / "t5_flux.json").read_text())
    assert [n["type"] for n in t5["normalizer"]["normalizers"]] == ["Precompiled", "Replace"]
    assert json.loads((out / "t5_transformers.json").read_text())["normalizer"]["type"] == "Precompiled"
    assert len(json.loads((out / "clip_bpe.json").read_text())["model"]["merges"]) > 4000
    prompts = json.loads((out / "prompts.json").read_text())
    assert len(prompts) >= 200
    goldens = [str(out / f"golden_{m['name']}.json") for m in manifest]
    r = subprocess.run([str(test_binary), *goldens], capture_output=True, text=True, timeout=120)
    summary = [line for line in r.stdout.splitlines() if line.startswith(("ok", "FAIL"))]
    assert len(summary) == len(goldens), r.stdout[-4000:] + r.stderr[-2000:]
    assert r.returncode == 0, "token ids differ from the tokenizers library:\n" + r.stdout[-6000:]


def _variant(tmp_path: Path, edit) -> Path:
    data = json.loads((REPO / "export" / "assets" / "flux-tiny" / "tokenizer" / "tokenizer.json").read_text())
    edit(data)
    path = tmp_path / "clip.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(normalizer={"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                                    "strip_accents": None, "lowercase": True}),
     "clip.json: normalizer type 'BertNormalizer' is not supported"),
    (lambda d: d.update(pre_tokenizer={"type": "UnicodeScripts"}),
     "clip.json: pre_tokenizer type 'UnicodeScripts' is not supported"),
    (lambda d: d["model"].update(type="WordPiece"), "clip.json: model type 'WordPiece' is not supported"),
    (lambda d: d.update(post_processor={"type": "Mystery"}),
     "clip.json: post_processor type 'Mystery' is not supported"),
    (lambda d: d["model"].update(dropout=0.1), "clip.json: BPE dropout is not supported"),
    (lambda d: d["pre_tokenizer"]["pretokenizers"][0]["pattern"].update(Regex="(unclosed"), "clip.json: Split"),
    (lambda d: d["model"]["merges"].append("nothere x"), "clip.json: BPE merge token 'nothere'"),
    (lambda d: d.update(version="2.0"), "clip.json: tokenizer version"),
])
def test_unsupported_is_refused_in_one_line(test_binary, tmp_path, edit, message):
    path = _variant(tmp_path, edit)
    r = subprocess.run([str(test_binary), "--expect-error", str(path), message], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_unreadable_files_are_refused(test_binary, tmp_path):
    r = subprocess.run([str(test_binary), "--expect-error", str(tmp_path / "t5.json"), "t5.json: cannot open"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    (tmp_path / "t5.json").write_text("{not json")
    r = subprocess.run([str(test_binary), "--expect-error", str(tmp_path / "t5.json"), "t5.json: not valid JSON"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
