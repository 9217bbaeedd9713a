"""Putting an engine directory in place, with nothing lost on the way.

- The directory is written into a hidden sibling, `.NAME.partial-XXXXXXXX`, and takes the place of
  `--out` in one rename: renameat2(RENAME_EXCHANGE) swaps it with the directory it replaces, so
  `--out` holds the old directory or the new one at every instant, never neither. A fresh `--out` is
  taken with RENAME_NOREPLACE, so whatever appears there during the export is never replaced.
- `--overwrite` replaces only an engine directory (its manifest.json says `"schema":
  "seer.engine-dir"`) or an empty directory; anything else is refused before any work.
- One writer per target: `.NAME.lock` beside it is flock'ed for the whole export and removed after.
- A writer holds a lock on its partial directory; one whose lock can be taken was left by a writer
  that is gone (killed, crashed, power lost) and is removed by the next export to the same target.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .. import signals
from ..atomic import (Unsupported, exchange, fsync_path, fsync_tree, make_parents, open_dir, rename_noreplace,
                      try_lock)
from ..errors import OutputError, UsageError
from ..oserrors import describe, is_environment_error
from .manifest import MANIFEST, SCHEMA

Log = Callable[[str], None]


@dataclass(frozen=True)
class Claim:
    """`target` is this process's to write: its lock is held and its stale partial exports are gone."""

    target: Path
    replaces: bool  # an engine directory or an empty one was there when claimed (with overwrite)


def partial_prefix(target: Path) -> str:
    return f".{target.name}.partial-"


def lock_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.lock")


def leftover_pattern(target: Path) -> re.Pattern:
    """The names seer's own writers give their temporary siblings of `target`, and nothing else:
    mkdtemp's 8 characters after `.partial-`, a pid after `.old-` (the fallback's renamed-away old
    directory). Exact, so that `.a.partial-x` of a target named `a.partial-x` is never taken for `a`'s."""
    return re.compile(rf"\.{re.escape(target.name)}\.(partial-[a-z0-9_]{{8}}|old-[0-9]+)")


@contextlib.contextmanager
def claiming_engine_dir(out: str | os.PathLike, overwrite: bool = False, log: Log | None = None) -> Iterator[Claim]:
    """Check `out` can become an engine directory, take its lock and sweep what killed exports to it
    left; all before any real work, so a bad --out or a second writer fails in a second."""
    target = _target_path(out)
    _make_parent(target)
    log = log or (lambda m: None)
    with _target_lock(target):
        problem = _not_replaceable(target) if os.path.lexists(target) else None
        if problem:
            raise OutputError(f"{target} is {problem}; --overwrite replaces only an engine directory (or an "
                              "empty one): move it away or choose another --out")
        if os.path.lexists(target) and not overwrite:
            raise OutputError(f"{target} already exists; choose another --out or pass --overwrite to replace it")
        sweep_leftovers(target, log)
        yield Claim(target, os.path.lexists(target))


@contextlib.contextmanager
def writing_engine_dir(target: str | os.PathLike | Claim, overwrite: bool = False,
                       log: Log | None = None) -> Iterator[Path]:
    """Yield a temporary directory to fill; on success it takes `target`'s place in one step.

    The caller writes its files and then calls `write_manifest(tmp, manifest)`; a directory without
    a manifest is refused here, and any exception (an interrupt included) removes the temporary
    directory and leaves `target` as it was. `target` is a path (claimed here, `overwrite` and `log`
    as for `claiming_engine_dir`) or a Claim that function made earlier."""
    if not isinstance(target, Claim):
        with claiming_engine_dir(target, overwrite, log) as claim, writing_engine_dir(claim) as tmp:
            yield tmp
        return
    claim, target = target, target.target
    try:
        tmp = Path(tempfile.mkdtemp(prefix=partial_prefix(target), dir=target.parent))
    except OSError as e:
        raise _output_error(e, target) from None
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would make the finished directory private
    fd = None
    try:
        try:
            fd = open_dir(tmp)
            try_lock(fd)  # held until the directory is in place or removed: the sweep's proof we are alive
            yield tmp
            if not (tmp / MANIFEST).is_file():
                raise RuntimeError("engine directory written without a manifest")
            fsync_tree(tmp)  # on a power loss after the rename, the files must be there too
            signals.check()  # a SIGTERM whose exception was dropped still stops the replacement
            old = _place(tmp, claim)
        except OSError as e:
            if is_environment_error(e) and _inside(e.filename, tmp):
                raise _output_error(e, target, tmp) from None
            raise  # someone else's path (the model read, say): the CLI names it as it is
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already if kept under another name
        raise
    finally:
        if fd is not None:
            os.close(fd)
    with contextlib.suppress(OSError):
        fsync_path(target.parent)  # the rename itself durable
    if old is not None:
        path, old_fd = old
        try:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(old_fd)


def link_files(src: Path, dst: Path, manifest: dict, skip: Callable[[str], bool] = lambda rel: False) -> None:
    """The files `manifest` lists (verified, inside `src`), but those `skip` names, hard-linked into
    `dst` (copied across devices): nothing else of `src` is carried into the new directory."""
    for rel in manifest["files"]:
        if skip(rel):
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src / rel, dst / rel)
        except OSError:
            shutil.copy2(src / rel, dst / rel)


def _place(tmp: Path, claim: Claim) -> tuple[Path, int] | None:
    """Move the finished `tmp` to the claimed target; returns where the replaced directory now is
    (with a locked descriptor on it) for the caller to remove, or None."""
    target = claim.target
    if claim.replaces and os.path.lexists(target):
        problem = _not_replaceable(target)
        if problem:
            raise _kept(tmp, target, f"{target} changed while the export ran (it is now {problem})")
        old_fd = open_dir(target)
        try_lock(old_fd)  # the replaced directory, until deleted, is no stale leftover to sweep
        try:
            exchange(tmp, target)
            return tmp, old_fd  # `tmp` now names the old directory
        except Unsupported:
            # No renameat2 here (another OS, an old kernel, a file system that refuses it): two
            # renames, between which nothing is at `target`. A crash there leaves both directories as
            # leftovers (.NAME.old-PID, .NAME.partial-*), which the next export sweeps.
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.rename(target, old)
            try:
                os.rename(tmp, target)
            except BaseException:
                os.rename(old, target)
                raise
            return old, old_fd
        except BaseException:
            os.close(old_fd)
            raise
    try:
        rename_noreplace(tmp, target)
    except Unsupported:
        # Fallback: check, then rename. os.rename would replace an empty directory made in between.
        if os.path.lexists(target):
            raise _kept(tmp, target, f"{target} appeared while the export ran") from None
        os.rename(tmp, target)
    except FileExistsError:
        raise _kept(tmp, target, f"{target} appeared while the export ran") from None
    return None


def _kept(tmp: Path, target: Path, why: str) -> OutputError:
    """What someone else put at `target` stays; the finished export is kept, under a visible name
    that no sweep matches, rather than thrown away after hours of work."""
    kept = target.with_name(f"{target.name}.new-{tmp.name.rsplit('-', 1)[-1]}")
    os.rename(tmp, kept)
    return OutputError(f"{why}; it was left as it is and the finished export is in {kept}: move that into "
                       "place yourself, or delete it")


def sweep_leftovers(target: Path, log: Log) -> list[Path]:
    """Remove `.NAME.partial-*` and `.NAME.old-*` siblings of `target` whose writer is provably gone
    (their lock can be taken). Only exact matches of the names seer writes are considered."""
    pattern, removed = leftover_pattern(target), []
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return removed
    for entry in entries:
        if not pattern.fullmatch(entry.name) or not entry.is_dir(follow_symlinks=False):
            continue
        path = Path(entry.path)
        try:
            fd = open_dir(path)
        except OSError:
            continue
        try:
            if try_lock(fd) is not True:  # held by a live writer, or locks cannot tell here
                continue
            size = _tree_bytes(path)
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)
        if os.path.lexists(path):
            log(f"warning: could not remove {path}, left by an interrupted export; remove it by hand")
        else:
            log(f"removed {path} ({size / 1e9:.2f} GB), left by an interrupted export")
            removed.append(path)
    return removed


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def is_engine_dir(path: Path) -> bool:
    """A directory whose manifest.json is a seer manifest (its files are not checked here)."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("schema") == SCHEMA


def _not_replaceable(target: Path) -> str | None:
    """None if --overwrite may replace `target` (an engine directory or an empty directory), else what
    it is."""
    if target.is_symlink():
        return "a symbolic link (pass the directory it points to)"
    if not target.is_dir():
        return "a file, not an engine directory"
    if os.path.ismount(target):
        return "a mount point, which cannot be renamed (pass a folder inside it)"
    try:
        empty = next(os.scandir(target), None) is None
    except OSError as e:
        return f"a directory seer cannot read ({e.strerror})"
    if empty or is_engine_dir(target):
        return None
    return "a directory that is not an engine directory (it has no seer manifest.json)"


def _target_path(out: str | os.PathLike) -> Path:
    target = Path(os.path.abspath(os.fspath(out)))  # abspath, not resolve: `..` collapsed, links kept
    if target == target.parent:
        raise UsageError(f"--out {out} names no directory to create; choose one such as out/flux")
    return target


def _make_parent(target: Path) -> None:
    try:
        blocker = make_parents(target)
    except OSError as e:
        raise _output_error(e, target) from None
    if blocker is not None:
        raise UsageError(f"cannot create {target}: {blocker} is not a directory; choose another --out")


@contextlib.contextmanager
def _target_lock(target: Path) -> Iterator[None]:
    """`.NAME.lock` beside the target, flock'ed while this process writes it; removed afterwards
    (while still held, and a waiter that locked the removed file retries on the new one, so two
    writers can never both hold "the" lock)."""
    path = lock_path(target)
    while True:
        try:
            # never through a symlink, never a FIFO or device: in a shared folder another user could
            # plant either at this name to have the export truncate or block on their target
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
                         | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as e:
            if e.errno == errno.ELOOP or os.path.islink(path):
                raise OutputError(f"{path} is a symbolic link, not seer's lock file; remove it (or choose another "
                                  "--out)") from None
            raise _output_error(e, target, what=f"cannot write in {target.parent}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OutputError(f"{path} is not a regular file, so not seer's lock file; remove it (or choose another "
                              "--out)")
        held = try_lock(fd)
        if held is False:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "its pid unknown"
            os.close(fd)
            raise OutputError(f"another seer process ({holder}) is writing {target}; wait for it to finish "
                              "or stop it, or choose another --out")
        if held is None or _same_file(fd, path):
            break
        os.close(fd)
    try:
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        except OSError as e:
            raise _output_error(e, target, what=f"cannot write in {target.parent}") from None
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _inside(filename, directory: Path) -> bool:
    """Whether an OSError's `filename` is in `directory` (True when it names none: a failed write())."""
    if not filename:
        return True
    return Path(os.path.abspath(os.fsdecode(filename))).is_relative_to(directory)


def _output_error(e: OSError, target: Path, tmp: Path | None = None, what: str | None = None) -> Exception:
    """An environment error (full disk, read-only, permissions) while writing `target`, named by
    --out: the temporary sibling is gone by the time the user reads the line. Other OSErrors are
    returned as they are."""
    if not is_environment_error(e):
        return e
    where = ""
    if tmp is not None and e.filename:
        where = f" (writing {Path(os.fsdecode(e.filename)).relative_to(tmp).as_posix()})"
    state = "it is unchanged" if os.path.lexists(target) else "nothing was left behind"
    return OutputError(f"{describe(e, what or f'cannot write {target}{where}')}; {state}")
