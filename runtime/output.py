"""seer-run's image file: checked before any generation, written whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path

from .. import signals
from ..atomic import make_parents, write_file_atomically
from ..errors import OutputError, UsageError
from ..oserrors import describe


def check_image_path(out: str | os.PathLike) -> Path:
    """Where the PNG will go, checked before a generation that may take minutes: a .png name (the
    image is PNG, with its settings in PNG text chunks; another suffix would name another format), not
    a directory, its folder existing or creatable, and writable. The folder is made now. A symbolic
    link at `out` is written through (the link stays, its target gets the image)."""
    path = Path(out)
    if path.suffix.lower() != ".png":
        raise UsageError(f"--out {out}: seer-run writes PNG images; give a file name ending in .png")
    if os.path.islink(path):
        path = Path(os.path.realpath(path))
    if path.is_dir():
        raise UsageError(f"--out {out} is a directory; give a file name ending in .png")
    if path.exists() and not path.is_file():
        raise UsageError(f"--out {out} is not a regular file; give a file name ending in .png")
    try:
        blocker = make_parents(path)
    except OSError as e:
        raise OutputError(describe(e, f"cannot create the folder of {out}")) from None
    if blocker is not None:
        raise UsageError(f"cannot write {out}: {blocker} is not a directory; choose another --out")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        read_only = os.statvfs(path.parent).f_flag & os.ST_RDONLY if hasattr(os, "statvfs") else False
        reason = "it is on a read-only file system" if read_only else "no permission to write in it"
        raise OutputError(f"cannot write {out}: {reason}; choose another --out")
    return path


def write_png(image, path: Path, pnginfo, shown: str | os.PathLike | None = None) -> None:
    """Save `image` as PNG at `path` through a temporary file beside it, flushed to the disk, renamed
    over `path`: a full disk or an interrupt leaves the previous file there, byte for byte."""
    shown = shown or path
    signals.check()  # a SIGTERM whose exception was dropped (in a finalizer) still keeps the old image
    try:
        write_file_atomically(path, lambda f: image.save(f, format="PNG", pnginfo=pnginfo))
    except OSError as e:
        kept = f"; {shown} is unchanged" if path.exists() else ""
        raise OutputError(describe(e, f"cannot write {shown}") + kept) from None
