"""Operating-system errors that are the machine's state, not a bug in seer: a full or read-only disk,
a folder that is not ours. They become one line naming what failed and what to do; every other
OSError (a missing file seer itself should have made, say) stays a traceback, so bugs get reported.
"""

from __future__ import annotations

import errno

_FIXES = {
    errno.ENOSPC: "free some space there",
    errno.EDQUOT: "free some space there (the disk quota is used up)",
    errno.EFBIG: "use a file system that takes larger files",
    errno.EROFS: "remount it writable",
    errno.EACCES: "check the permissions",
    errno.EPERM: "check the permissions",
    errno.EIO: "check the disk (it reported an I/O error)",
    errno.ENAMETOOLONG: "use a shorter path",
    errno.EMFILE: "raise the open-files limit (ulimit -n)",
    errno.ENFILE: "raise the open-files limit (ulimit -n)",
}


def is_environment_error(e: BaseException) -> bool:
    """An OSError caused by the machine's state (disk full, read-only, permissions), not by seer."""
    return isinstance(e, OSError) and e.errno in _FIXES


def describe(e: OSError, what: str | None = None, alternative: str | None = "choose another --out") -> str:
    """`<what failed>: <strerror>; <fix>` for an environment error, e.g. `cannot write out.png: No space
    left on device; free some space there or choose another --out`."""
    if what is None:
        what = f"cannot use {e.filename}" if e.filename else "a file operation failed"
    fix = _FIXES.get(e.errno, "check the path")
    if alternative:
        fix = f"{fix} or {alternative}"
    strerror = e.strerror or str(e)
    return f"{what}: {strerror}; {fix}"
