"""File-system steps that either happen whole or not at all: swapping two directories in one rename,
renaming without replacing, writing a file beside its target and renaming it over, and the advisory
locks that tell a live writer from one that is gone.

Linux's renameat2(2) does the directory steps in one system call; where it is missing (another OS,
an old kernel, a file system that answers EINVAL) the callers fall back to plain renames, which
leave a short window, and say so where they do.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import secrets
from pathlib import Path
from typing import Callable, Iterator

try:
    import fcntl
except ImportError:  # not POSIX: no advisory locks, callers proceed without them
    fcntl = None

AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
# renameat2's number where glibc is older than 2.28 and lacks the wrapper
_SYSCALL_RENAMEAT2 = {"x86_64": 316, "aarch64": 276, "riscv64": 276, "ppc64le": 357, "s390x": 347}


class Unsupported(Exception):
    """renameat2 with these flags is not available here (no such call, or the file system refuses)."""


def _load_renameat2() -> Callable[[bytes, bytes, int], int] | None:
    if platform.system() != "Linux":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    fn = getattr(libc, "renameat2", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        fn.restype = ctypes.c_int
        return lambda src, dst, flags: fn(AT_FDCWD, src, AT_FDCWD, dst, flags)
    number = _SYSCALL_RENAMEAT2.get(platform.machine())
    syscall = getattr(libc, "syscall", None)
    if number is None or syscall is None:
        return None
    syscall.restype = ctypes.c_long
    return lambda src, dst, flags: syscall(ctypes.c_long(number), ctypes.c_int(AT_FDCWD), ctypes.c_char_p(src),
                                           ctypes.c_int(AT_FDCWD), ctypes.c_char_p(dst), ctypes.c_uint(flags))


_renameat2 = _load_renameat2()


def _rename2(src: Path, dst: Path, flags: int) -> None:
    if _renameat2 is None:
        raise Unsupported("renameat2 is not available on this system")
    if _renameat2(os.fsencode(src), os.fsencode(dst), flags) != 0:
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise Unsupported(os.strerror(err))
        raise OSError(err, os.strerror(err), str(src), None, str(dst))


def exchange(a: Path, b: Path) -> None:
    """Swap `a` and `b` in one step: at every instant each path holds one of the two, complete.
    Raises Unsupported where renameat2(RENAME_EXCHANGE) is not available."""
    _rename2(a, b, RENAME_EXCHANGE)


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename `src` to `dst`, failing with EEXIST if anything is at `dst` (checked by the kernel in
    the same step). Raises Unsupported where renameat2(RENAME_NOREPLACE) is not available."""
    _rename2(src, dst, RENAME_NOREPLACE)


def make_parents(path: Path) -> Path | None:
    """Create the missing folders above `path`. Returns the nearest existing ancestor instead, creating
    nothing, when that ancestor is not a directory (its folders cannot be made); OSErrors propagate."""
    ancestor = path.parent
    while not os.path.lexists(ancestor):
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return ancestor
    path.parent.mkdir(parents=True, exist_ok=True)
    return None


def fsync_path(path: Path) -> None:
    """Flush a file or a directory's entries to the disk, so a rename after it cannot outlive the data
    on a power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:  # some file systems (and directories on some) do not sync; nothing to do then
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under `root`, deepest first."""
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            p = Path(dirpath) / name
            if not p.is_symlink():
                fsync_path(p)
        fsync_path(Path(dirpath))


def try_lock(fd: int) -> bool | None:
    """An exclusive advisory lock (flock) on `fd`, without waiting: True when taken, False when another
    open file holds it, None where this system or file system has no such locks (then nothing can be
    proved either way). Locks die with their process: that is what makes a takeable lock proof that
    its writer is gone."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        return None  # ENOLCK, EBADF (NFS wants a writable file for exclusive locks), EINVAL
    return True


def open_dir(path: Path) -> int:
    """A descriptor on directory `path` to lock: a lock on it follows the directory through renames."""
    return os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def write_file_atomically(path: Path, write: Callable[[object], None]) -> None:
    """Write `path` through `write(file)` into a hidden temporary file beside it, flushed to the disk,
    then rename it over `path`: readers see the old file or the new one, never a part. On any failure
    (a full disk, an interrupt) the temporary file is removed and `path` is left as it was. A replaced
    file's permissions are kept; a new one gets the umask's, as open() would give it."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        mode = None
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:  # 0o666 less the umask, set by the kernel (reading the umask would change it process-wide)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the new name is durable only once its directory is; best effort
        fsync_path(path.parent)
