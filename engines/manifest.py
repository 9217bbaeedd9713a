"""The engine directory: `manifest.json` plus the files it names. This module is its only reader
and writer; docs/engine-dir.md is the written spec a C++ service implements against.

A directory is written into a temporary sibling and takes its place in one rename only once every
file and the manifest (with a sha256 per file) are complete (engines/writing.py), so an interrupted
export never leaves a directory that looks valid.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..errors import EngineDirError

SCHEMA = "seer.engine-dir"
SCHEMA_VERSION = 3  # 2: v1 plus `quantization` (FP8) and `tensorrt` (plans); 3: per-graph precision
READABLE_VERSIONS = (1, 2, 3)  # v1 and v2 directories are float32 throughout (no `precision` per graph)
MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def tensor_spec(name: str, dtype: str, shape: list[int | str]) -> dict[str, Any]:
    """One graph input or output: symbolic dims are strings (B, N_img, ...), fixed ones ints."""
    return {"name": name, "dtype": dtype, "shape": list(shape)}


def write_manifest(directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Hash every file in `directory` into manifest['files'] and write manifest.json last."""
    files = {}
    for p in sorted(directory.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            rel = p.relative_to(directory).as_posix()
            files[rel] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
    manifest = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, **manifest, "files": files}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return manifest


def read_manifest(directory: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """Load and check a manifest: schema and version, every named file present, sizes and hashes."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise EngineDirError(f"{directory} is not a directory; pass the folder seer-export wrote")
    if not path.is_file():
        raise EngineDirError(f"{directory} has no {MANIFEST}; it is not an engine directory (run seer-export first)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise EngineDirError(f"{path} is not valid JSON ({e}); re-export the engine directory") from None
    if manifest.get("schema") != SCHEMA:
        raise EngineDirError(f"{path} is not a seer manifest (schema {manifest.get('schema')!r})")
    version = manifest.get("schema_version")
    if version not in READABLE_VERSIONS:
        newer = isinstance(version, int) and version > SCHEMA_VERSION
        fix = "upgrade seer" if newer else "re-export it with this version of seer-export"
        raise EngineDirError(
            f"{directory} uses engine-directory schema v{version}, this seer reads "
            f"v{' and v'.join(map(str, READABLE_VERSIONS))}: {fix}"
        )
    for rel, meta in manifest.get("files", {}).items():
        f = directory / rel
        if not f.is_file():
            raise EngineDirError(f"{directory} is missing {rel}; the directory is incomplete, re-export it")
        if f.stat().st_size != meta["bytes"]:
            raise EngineDirError(f"{rel} in {directory} has changed size since export; re-export the directory")
        if verify and sha256_file(f) != meta["sha256"]:
            raise EngineDirError(
                f"{rel} in {directory} does not match its sha256 in {MANIFEST}; the file was altered or "
                "corrupted, re-export the directory"
            )
    return manifest
