"""seer-run's image: --out checked before generating, the PNG written whole or not at all (a full
disk, an interrupt or SIGTERM keep the previous file byte for byte), one error line."""

from __future__ import annotations

import errno
import json
import os
import signal
import time

import pytest
from PIL import Image

from cli_contract import one_line_error as _one_line_error, run


@pytest.fixture()
def previous(tmp_path):
    """An image from an earlier run at --out."""
    path = tmp_path / "out.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(path)
    return path, path.read_bytes()


def _failing_save(exc):
    real = Image.Image.save

    def save(self, fp, *a, **k):
        real(self, fp, *a, **k)  # some bytes reach the temporary file, then the write fails
        raise exc

    return save


def test_a_full_disk_keeps_the_previous_image_and_is_one_line(engine_modules, previous, monkeypatch):
    path, before = previous
    monkeypatch.setattr(Image.Image, "save", _failing_save(OSError(errno.ENOSPC, "No space left on device")))
    _one_line_error(*run([engine_modules, "-p", "a red circle", "--steps", "2", "--out", path]),
                    f"cannot write {path}: No space left on device", "free some space there or choose another --out",
                    f"{path} is unchanged")
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == ["out.png"]  # no temporary file left


def test_an_interrupt_while_writing_keeps_the_previous_image(engine_modules, previous, monkeypatch):
    path, before = previous
    monkeypatch.setattr(Image.Image, "save", _failing_save(KeyboardInterrupt()))
    code, out = run([engine_modules, "-p", "a red circle", "--steps", "2", "--out", path])
    assert code == 130 and out.strip().splitlines()[-1] == "interrupted"
    assert path.read_bytes() == before and os.listdir(path.parent) == ["out.png"]


def test_sigterm_while_writing_keeps_the_previous_image_and_exits_143(engine_modules, previous, monkeypatch):
    path, before = previous
    real = Image.Image.save

    def save(self, fp, *a, **k):
        real(self, fp, *a, **k)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler raises here, at once

    monkeypatch.setattr(Image.Image, "save", save)
    code, out = run([engine_modules, "-p", "a red circle", "--steps", "2", "--out", path])
    assert code == 143 and out.strip().splitlines()[-1] == "terminated"
    assert path.read_bytes() == before and os.listdir(path.parent) == ["out.png"]


def test_the_new_image_replaces_the_old_whole_and_keeps_its_permissions(engine_modules, previous):
    path, before = previous
    path.chmod(0o640)
    code, out = run([engine_modules, "-p", "a red circle", "--steps", "2", "--out", path])
    assert code == 0, out
    assert path.read_bytes() != before and os.listdir(path.parent) == ["out.png"]
    assert path.stat().st_mode & 0o777 == 0o640
    with Image.open(path) as im:
        assert im.format == "PNG" and json.loads(im.text["parameters"])["prompt"] == "a red circle"


@pytest.fixture()
def no_generation(monkeypatch):
    from seer.runtime import pipeline

    monkeypatch.setattr(pipeline.Pipeline, "load", classmethod(lambda *a, **k: pytest.fail("generation started")))


@pytest.mark.parametrize("out,needles", [
    ("image.jpg", ["writes PNG images", ".png"]),
    ("image", ["writes PNG images", ".png"]),
    ("folder.png", ["is a directory", ".png"]),
    ("notes/out.png", ["notes is not a directory", "choose another --out"]),
    ("notes/deeper/out.png", ["notes is not a directory", "choose another --out"]),
])
def test_an_unusable_out_is_refused_before_generating(tmp_path, no_generation, out, needles):
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "notes").write_text("mine")
    _one_line_error(*run([tmp_path, "-p", "a red circle", "--out", tmp_path / out]), *needles)
    assert sorted(os.listdir(tmp_path)) == ["folder.png", "notes"]


def test_a_missing_folder_for_out_is_made(tmp_path, engine_modules):
    out = tmp_path / "a" / "b" / "x.png"
    assert run([engine_modules, "-p", "a red circle", "--steps", "2", "--out", out])[0] == 0
    assert out.is_file()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0o555 folder anyway")
def test_a_folder_without_write_permission_is_refused_before_generating(tmp_path, no_generation):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    try:
        _one_line_error(*run([tmp_path, "-p", "x", "--out", tmp_path / "ro" / "x.png"]), "no permission to write",
                        "choose another --out")
    finally:
        (tmp_path / "ro").chmod(0o755)


def test_a_read_only_file_system_is_refused_before_generating(tmp_path, no_generation, monkeypatch):
    from seer.runtime import output

    class ReadOnly:
        f_flag = os.ST_RDONLY

    (tmp_path / "mnt").mkdir()
    real_access = os.access
    monkeypatch.setattr(output.os, "access", lambda p, mode: p != tmp_path / "mnt" and real_access(p, mode))
    monkeypatch.setattr(output.os, "statvfs", lambda p: ReadOnly())
    _one_line_error(*run([tmp_path, "-p", "x", "--out", tmp_path / "mnt" / "x.png"]), "read-only file system",
                    "choose another --out")


@pytest.mark.parametrize("prompt", ["\udcff", "a red \udce9 circle"])
def test_a_prompt_that_is_not_utf8_is_refused_before_generating(tmp_path, no_generation, prompt):
    # what click hands over on POSIX for argument bytes the locale cannot decode
    _one_line_error(*run([tmp_path, "-p", prompt, "--out", tmp_path / "x.png"]), "not valid UTF-8", "locale")
