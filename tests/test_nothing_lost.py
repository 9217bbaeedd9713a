"""Engine directories are replaced in one step, only when they are engine directories, by one writer
at a time; killed exports leave nothing that is not swept; a full or read-only disk and SIGTERM end
an export with one line and nothing left behind."""

from __future__ import annotations

import ctypes
import errno
import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from seer import atomic
from seer.engines import writing
from seer.engines.manifest import write_manifest
from seer.engines.writing import claiming_engine_dir, sweep_leftovers, writing_engine_dir
from seer.errors import OutputError
from seer.export.cli import main as export_main

from cli_contract import one_line_error as _one_line_error


def export_cli(args, env=None):
    result = CliRunner().invoke(export_main, [str(a) for a in args], env=env)
    return result.exit_code, result.output


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` (hidden ones too) with its bytes (None for a directory)."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for d in dirs:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = None
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = Path(p).read_bytes()
    return out


def fill(tmp: Path, marker: str) -> None:
    """A minimal engine directory: one file and a seer manifest."""
    (tmp / "weights.bin").write_bytes(marker.encode() * 1000)
    write_manifest(tmp, {"marker": marker})


def marker_of(directory: Path) -> str:
    """Which of the minimal directories above sits at `directory` (its manifest, read as JSON: these
    directories are not whole engine directories, which read_manifest would refuse)."""
    return json.loads((Path(directory) / "manifest.json").read_text())["marker"]


def made(target: Path, marker: str, **kw) -> None:
    with writing_engine_dir(target, **kw) as tmp:
        fill(tmp, marker)


# --- the system calls ------------------------------------------------------------------------------

def test_exchange_swaps_two_directories(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_text("from a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "y").write_text("from b")
    atomic.exchange(tmp_path / "a", tmp_path / "b")
    assert snapshot(tmp_path) == {"a": None, "b": None, "a/y": b"from b", "b/x": b"from a"}


def test_rename_noreplace_never_replaces(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "dst").mkdir()  # empty: a plain rename would silently replace it
    with pytest.raises(FileExistsError):
        atomic.rename_noreplace(tmp_path / "src", tmp_path / "dst")
    atomic.rename_noreplace(tmp_path / "src", tmp_path / "new")
    assert sorted(os.listdir(tmp_path)) == ["dst", "new"]


def test_renameat2_through_syscall_where_libc_has_no_wrapper(tmp_path, monkeypatch):
    libc = ctypes.CDLL(None, use_errno=True)

    class OldLibc:  # glibc before 2.28: syscall() but no renameat2()
        syscall = libc.syscall

    monkeypatch.setattr(atomic.ctypes, "CDLL", lambda *a, **k: OldLibc())
    monkeypatch.setattr(atomic, "_renameat2", atomic._load_renameat2())
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_text("1")
    (tmp_path / "b").mkdir()
    atomic.exchange(tmp_path / "a", tmp_path / "b")
    assert os.listdir(tmp_path / "b") == ["x"] and os.listdir(tmp_path / "a") == []
    with pytest.raises(FileExistsError):
        atomic.rename_noreplace(tmp_path / "a", tmp_path / "b")


# --- replacing: one step, and only engine directories ----------------------------------------------

def test_overwrite_replaces_an_engine_directory_in_one_step(tmp_path, monkeypatch):
    target = tmp_path / "e"
    made(target, "old")
    real = writing.exchange
    seen = []

    def watched(a, b):  # at the only move, --out still holds the old directory, complete
        seen.append(marker_of(b))
        real(a, b)
        seen.append(marker_of(b))

    def no_two_step(*a):
        raise AssertionError("a two-rename replacement where renameat2 works")

    monkeypatch.setattr(writing, "exchange", watched)
    monkeypatch.setattr(writing.os, "rename", no_two_step)
    made(target, "new", overwrite=True)
    assert seen == ["old", "new"]
    assert marker_of(target) == "new"
    assert sorted(os.listdir(tmp_path)) == ["e"]  # no partial, no old copy, no lock file


def test_killed_right_after_the_swap_leaves_the_new_directory_and_a_sweepable_old_one(tmp_path, monkeypatch):
    target = tmp_path / "e"
    made(target, "old")

    def killed(path, ignore_errors=False):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(writing.shutil, "rmtree", killed)  # the first rmtree after the swap is the old directory's
        with pytest.raises(KeyboardInterrupt):
            made(target, "new", overwrite=True)
    assert marker_of(target) == "new"
    leftovers = [p for p in os.listdir(tmp_path) if p != "e"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".e.partial-")
    log = []
    assert sweep_leftovers(target, log.append) == [tmp_path / leftovers[0]]
    assert sorted(os.listdir(tmp_path)) == ["e"] and "left by an interrupted export" in log[0]


def test_where_renameat2_is_unsupported_two_renames_still_replace(tmp_path, monkeypatch):
    def unsupported(*a):
        raise atomic.Unsupported("EINVAL")

    monkeypatch.setattr(writing, "exchange", unsupported)
    monkeypatch.setattr(writing, "rename_noreplace", unsupported)
    target = tmp_path / "e"
    made(target, "old")
    made(target, "new", overwrite=True)
    assert marker_of(target) == "new"
    assert sorted(os.listdir(tmp_path)) == ["e"]


def test_overwrite_replaces_an_empty_directory(tmp_path):
    (tmp_path / "e").mkdir()
    made(tmp_path / "e", "new", overwrite=True)
    assert marker_of(tmp_path / "e") == "new"


def test_an_empty_mount_point_is_not_replaced(tmp_path, monkeypatch):
    (tmp_path / "e").mkdir()  # renaming a mount point fails (EBUSY): say so before any work
    monkeypatch.setattr(writing.os.path, "ismount", lambda p: Path(p) == tmp_path / "e")
    with pytest.raises(OutputError, match="a mount point.*pass a folder inside it"):
        made(tmp_path / "e", "new", overwrite=True)
    assert snapshot(tmp_path) == {"e": None}


def test_without_overwrite_an_existing_empty_directory_is_kept(tmp_path):
    (tmp_path / "e").mkdir()
    with pytest.raises(OutputError, match="already exists.*--overwrite"):
        made(tmp_path / "e", "new")
    assert snapshot(tmp_path) == {"e": None}


def _not_engine_dirs(tmp_path):
    yield "a folder of photos", lambda p: (p.mkdir(), (p / "photo.jpg").write_bytes(b"\xff\xd8 mine"))
    yield "another tool's manifest", lambda p: (p.mkdir(), (p / "manifest.json").write_text('{"schema": "x"}'))
    yield "a manifest that is not JSON", lambda p: (p.mkdir(), (p / "manifest.json").write_text("{"))
    yield "a file", lambda p: p.write_bytes(b"notes")
    yield "a link to an engine directory", lambda p: (made(tmp_path / "real", "x"), p.symlink_to(tmp_path / "real"))


@pytest.mark.parametrize("kind", [k for k, _ in _not_engine_dirs(Path("."))])
def test_overwrite_refuses_what_is_not_an_engine_directory_and_touches_nothing(tmp_path, kind, monkeypatch):
    from seer.export import flux_export

    dict(_not_engine_dirs(tmp_path))[kind](tmp_path / "e")
    before = snapshot(tmp_path)
    monkeypatch.setattr(flux_export, "resolve", lambda m: pytest.fail("the export started"))
    line = _one_line_error(*export_cli(["flux-tiny", "--out", tmp_path / "e", "--overwrite"]),
                           str(tmp_path / "e"), "replaces only an engine directory", "choose another --out")
    assert "move it away" in line
    assert snapshot(tmp_path) == before


# --- something appears at a fresh --out during the export -------------------------------------------

@pytest.mark.parametrize("renameat2", [True, False])
def test_a_directory_made_at_out_during_the_export_is_never_replaced(tmp_path, monkeypatch, renameat2):
    if not renameat2:
        def unsupported(*a):
            raise atomic.Unsupported("EINVAL")

        monkeypatch.setattr(writing, "rename_noreplace", unsupported)
    target = tmp_path / "e"
    with pytest.raises(OutputError) as e:
        with writing_engine_dir(target) as tmp:
            fill(tmp, "new")
            target.mkdir()
            (target / "theirs.txt").write_text("someone else's")
    assert snapshot(target) == {"theirs.txt": b"someone else's"}
    kept = [p for p in os.listdir(tmp_path) if p != "e"]
    assert len(kept) == 1 and kept[0].startswith("e.new-")  # visible, and no sweep pattern matches it
    assert marker_of(tmp_path / kept[0]) == "new"  # the finished export, whole
    assert "appeared while the export ran" in str(e.value) and str(tmp_path / kept[0]) in str(e.value)


def test_an_engine_directory_swapped_for_other_data_during_the_export_is_not_replaced(tmp_path):
    target = tmp_path / "e"
    made(target, "old")
    with pytest.raises(OutputError, match="changed while the export ran"):
        with writing_engine_dir(target, overwrite=True) as tmp:
            fill(tmp, "new")
            os.rename(target, tmp_path / "moved")
            target.mkdir()
            (target / "data.csv").write_text("1,2")
    assert snapshot(target) == {"data.csv": b"1,2"}


# --- one writer at a time, and the lock file ---------------------------------------------------------

def test_a_second_export_to_the_same_out_fails_before_any_work_naming_the_first(tmp_path, monkeypatch):
    from seer.export import flux_export

    monkeypatch.setattr(flux_export, "resolve", lambda m: pytest.fail("the second export started"))
    with claiming_engine_dir(tmp_path / "e"):
        before = snapshot(tmp_path)
        _one_line_error(*export_cli(["flux-tiny", "--out", tmp_path / "e"]),
                        f"pid {os.getpid()}", str(tmp_path / "e"), "wait for it to finish", "choose another --out")
        assert snapshot(tmp_path) == before
    assert os.listdir(tmp_path) == []  # the lock file goes with its holder


def test_the_lock_file_is_removed_after_success_and_after_failure(tmp_path):
    made(tmp_path / "e", "x")
    assert os.listdir(tmp_path) == ["e"]
    with pytest.raises(RuntimeError, match="without a manifest"):
        with writing_engine_dir(tmp_path / "f"):
            pass
    assert os.listdir(tmp_path) == ["e"]


def test_a_lock_file_left_by_a_killed_export_does_not_block_the_next(tmp_path):
    (tmp_path / ".e.lock").write_text("pid 999999 on elsewhere\n")  # its holder is gone: nobody holds the flock
    made(tmp_path / "e", "x")
    assert os.listdir(tmp_path) == ["e"]


# --- sweeping what killed exports left -------------------------------------------------------------

def test_only_stale_leftovers_of_this_target_are_swept(tmp_path):
    def folder(name, content=b"partial weights"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "full.onnx.data").write_bytes(content)

    stale = [".e.partial-abcd1234", ".e.partial-a_b0c9zz", ".e.old-4242"]
    for name in stale:
        folder(name)
    live = ".e.partial-live0001"  # its writer still runs (holds the lock)
    folder(live)
    kept = [".e.partial-abc", ".e.partial-abcd1234.bak", "e.partial-abcd1234", ".f.partial-abcd1234",
            ".e.partial-ABCD1234", ".e.old-12x", ".e.x.partial-abcd1234", "e.new-abcd1234"]
    for name in kept:
        folder(name)
    (tmp_path / ".e.old-77").write_bytes(b"a file, not a folder seer made")
    before = snapshot(tmp_path)
    fd = atomic.open_dir(tmp_path / live)
    assert atomic.try_lock(fd) is True
    try:
        log = []
        with claiming_engine_dir(tmp_path / "e", log=log.append):
            pass
    finally:
        os.close(fd)
    after = snapshot(tmp_path)
    assert after == {k: v for k, v in before.items() if k.split("/")[0] not in stale}
    assert sorted(log) == sorted(f"removed {tmp_path / n} (0.00 GB), left by an interrupted export" for n in stale)


def test_an_export_sweeps_what_a_killed_export_to_the_same_out_left(tmp_path):
    (tmp_path / ".e.partial-zzzz0000").mkdir()
    (tmp_path / ".e.partial-zzzz0000" / "t5.onnx").write_bytes(b"x" * 5000)
    log = []
    made(tmp_path / "e", "x", log=log.append)
    assert os.listdir(tmp_path) == ["e"]
    assert log == [f"removed {tmp_path / '.e.partial-zzzz0000'} (0.00 GB), left by an interrupted export"]


# --- full and read-only disks, bad --out -----------------------------------------------------------

@pytest.mark.parametrize("code,existing,needles", [
    (errno.ENOSPC, True, ["No space left on device", "free some space there or choose another --out"]),
    (errno.EROFS, False, ["Read-only file system", "remount it writable or choose another --out"]),
    (errno.EACCES, True, ["Permission denied", "check the permissions or choose another --out"]),
])
def test_an_os_error_during_the_export_is_one_line_and_loses_nothing(tiny_model, tmp_path, monkeypatch, code,
                                                                     existing, needles):
    from seer.export import flux_export

    def fail(module, inputs, outputs, dims, directory, name, *a, **k):  # the first graph's write fails
        raise OSError(code, os.strerror(code), str(Path(directory) / f"{name}.onnx"))

    target = tmp_path / "e"
    if existing:
        made(target, "old")
    before = snapshot(tmp_path)
    monkeypatch.setattr(flux_export, "export_graph", fail)
    line = _one_line_error(*export_cli(["flux-tiny", "--out", target, "--overwrite"]),
                           f"cannot write {target} (writing clip.onnx)", *needles)
    assert ("it is unchanged" if existing else "nothing was left behind") in line
    assert snapshot(tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0o555 folder anyway")
def test_a_folder_without_write_permission_is_refused_before_any_work(tmp_path, monkeypatch):
    from seer.export import flux_export

    monkeypatch.setattr(flux_export, "resolve", lambda m: pytest.fail("the export started"))
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    try:
        _one_line_error(*export_cli(["flux-tiny", "--out", tmp_path / "ro" / "e"]),
                        f"cannot write in {tmp_path / 'ro'}", "Permission denied", "choose another --out")
        assert os.listdir(tmp_path / "ro") == []
    finally:
        (tmp_path / "ro").chmod(0o755)


def test_a_read_only_file_system_is_refused_before_any_work(tmp_path, monkeypatch):
    from seer.export import flux_export

    real_open = os.open

    def read_only(path, flags, *a):
        if flags & os.O_CREAT and str(path).startswith(str(tmp_path)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *a)

    monkeypatch.setattr(flux_export, "resolve", lambda m: pytest.fail("the export started"))
    monkeypatch.setattr(writing.os, "open", read_only)
    _one_line_error(*export_cli(["flux-tiny", "--out", tmp_path / "e"]), "Read-only file system",
                    "remount it writable or choose another --out")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("out,needles", [
    ("file/e", ["is not a directory", "choose another --out"]),
    ("file/deeper/e", ["is not a directory", "choose another --out"]),
    ("/", ["names no directory"]),
])
def test_an_unusable_out_is_refused_before_any_work(tmp_path, monkeypatch, out, needles):
    from seer.export import flux_export

    (tmp_path / "file").write_text("notes")
    before = snapshot(tmp_path)
    monkeypatch.setattr(flux_export, "resolve", lambda m: pytest.fail("the export started"))
    _one_line_error(*export_cli(["flux-tiny", "--out", tmp_path / out if out != "/" else out]), *needles)
    assert snapshot(tmp_path) == before


# --- signals ---------------------------------------------------------------------------------------

def test_sigterm_during_an_export_removes_its_partial_directory_and_exits_143(tmp_path):
    target = tmp_path / "e"
    code = "import sys; from seer.export.cli import main; sys.exit(main())"
    proc = subprocess.Popen([sys.executable, "-c", code, "flux-tiny", "--out", str(target)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not glob.glob(str(tmp_path / ".e.partial-*")) and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1] == "terminated" and "Traceback" not in err
    assert os.listdir(tmp_path) == []  # no partial, no lock file, no engine directory


def test_user_errors_turns_sigterm_into_an_unwinding_exit_143(tmp_path):
    import click

    from seer.cli_common import user_errors

    before = signal.getsignal(signal.SIGTERM)

    @click.command()
    @user_errors
    def cmd():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)  # the handler raises here, at once
        finally:
            (tmp_path / "cleaned").write_text("yes")

    result = CliRunner().invoke(cmd, [])
    assert result.exit_code == 143 and result.output.strip() == "terminated"
    assert (tmp_path / "cleaned").read_text() == "yes"
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped exception
def test_a_sigterm_dropped_inside_a_finalizer_still_stops_the_replacement(tmp_path):
    import click

    from seer.cli_common import user_errors

    made(tmp_path / "e", "old")

    class Finalized:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)  # the handler raises here, and Python drops exceptions raised in __del__

    @click.command()
    @user_errors
    def cmd():
        with writing_engine_dir(tmp_path / "e", overwrite=True) as tmp:
            obj = Finalized()
            del obj  # the SIGTERM arrives and its exception is dropped; the export goes on
            fill(tmp, "new")

    result = CliRunner().invoke(cmd, [])
    assert result.exit_code == 143 and result.output.strip().splitlines()[-1] == "terminated"
    assert marker_of(tmp_path / "e") == "old" and os.listdir(tmp_path) == ["e"]


@pytest.mark.parametrize("error,code,line", [
    (OSError(errno.ENOSPC, "No space left on device", "/data/x.bin"), 2,
     "error: cannot use /data/x.bin: No space left on device; free some space there or choose another path"),
    (OSError(errno.EROFS, "Read-only file system", "/data"), 2,
     "error: cannot use /data: Read-only file system; remount it writable or choose another path"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/seer/bug"), 1, None),  # a bug: traceback
    (ValueError("a bug"), 1, None),
])
def test_user_errors_reports_the_machines_state_in_one_line_and_bugs_with_a_traceback(error, code, line):
    import click

    from seer.cli_common import user_errors

    @click.command()
    @user_errors
    def cmd():
        raise error

    result = CliRunner().invoke(cmd, [])
    assert result.exit_code == code
    if line is None:
        assert result.exception is error  # left for the traceback
    else:
        assert result.output.strip() == line



@pytest.mark.parametrize("plant", ["symlink", "fifo"])
def test_a_lock_file_planted_by_someone_else_is_refused_and_its_target_kept(tmp_path, plant):
    """In a shared folder another user could put a symlink (or a FIFO) at the lock's name: the export
    must neither truncate what it points to nor block."""
    victim = tmp_path / "victim.txt"
    victim.write_text("important data")
    lock = tmp_path / ".e.lock"
    if plant == "symlink":
        lock.symlink_to(victim)
    else:
        os.mkfifo(lock)
    with pytest.raises(OutputError, match="lock file"):
        made(tmp_path / "e", "new")
    assert victim.read_text() == "important data" and not (tmp_path / "e").exists()
