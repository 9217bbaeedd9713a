"""The engine directory: `manifest.json` plus the files it names. This module is its only reader
and writer; docs/engine-dir.md is the written spec a C++ service implements against.

A directory is written into a temporary sibling and takes its place in one rename only once every
file and the manifest (with a sha256 per file) are complete (engines/writing.py), so an interrupted
export never leaves a directory that looks valid.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
from pathlib import Path
from typing import Any, Iterator

from ..errors import EngineDirError, UsageError

SCHEMA = "seer.engine-dir"
SCHEMA_VERSION = 4  # 2: v1 plus `quantization` (FP8) and `tensorrt` (plans); 3: per-graph precision;
# 4: model families (flux, dit): `guidance` kinds, `dims` (the symbols' sizes), `classes`, DDIM samplers
READABLE_VERSIONS = (1, 2, 3, 4)  # v1 to v3 are FLUX directories, upgraded to v4 when read (`upgrade`)
MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return _sha256(f)


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


MAX_MANIFEST_BYTES = 16 * 2**20  # a real manifest is tens of kB; this bounds what a reader loads


def manifest_digest(data: bytes) -> str:
    """The digest that pins a directory: sha256 over manifest.json's bytes, which hold every file's sha256."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def read_manifest_digest(directory: str | os.PathLike) -> str:
    """The digest of a directory seer just wrote (no checks: `open_engine_dir` checks what it pins)."""
    return manifest_digest((Path(directory) / MANIFEST).read_bytes())


def read_manifest(directory: str | os.PathLike, verify: bool = True,
                  expect_digest: str | None = None) -> dict[str, Any]:
    """Load and check a manifest (see `open_engine_dir`)."""
    return open_engine_dir(directory, verify, expect_digest)[0]


def open_engine_dir(directory: str | os.PathLike, verify: bool = True,
                    expect_digest: str | None = None) -> tuple[dict[str, Any], str]:
    """Check an engine directory before anything in it is used; return its manifest and digest.

    In order: manifest.json is a regular file of bounded size; its digest matches `expect_digest`
    (when given); schema and version; every value within its schema and consistent with the rest
    (engines/schema.py); every path it names is listed in `files`; every listed file is a regular
    file inside the directory (no symlink on the way, no FIFO or device), of its recorded size and,
    with `verify`, its sha256.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise EngineDirError(f"{directory} is not a directory; pass the folder seer-export wrote")
    if expect_digest is not None and not verify:
        raise UsageError("--expect-digest pins every file through its sha256, so it cannot be combined with "
                         "--no-verify; drop one of them")
    if not (directory / MANIFEST).exists() and not (directory / MANIFEST).is_symlink():
        raise EngineDirError(f"{directory} has no {MANIFEST}; it is not an engine directory (run seer-export first)")
    data = read_regular(directory, MANIFEST, MAX_MANIFEST_BYTES)
    digest = manifest_digest(data)
    if expect_digest is not None:
        want = expect_digest.strip().lower() if isinstance(expect_digest, str) else ""
        want = want if want.startswith("sha256:") else f"sha256:{want}"
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", want):
            raise UsageError(f"expected digest {str(expect_digest)[:80]!r} is not a digest: give the sha256:<64 hex "
                             "digits> seer-export printed")
        if want != digest:
            raise EngineDirError(
                f"{directory} has manifest digest {digest}, not the expected {want}: it is not the directory that "
                "was pinned (re-exported, rebuilt or altered); pin the new digest only after testing that directory")
    path = directory / MANIFEST
    try:
        manifest = json.loads(data.decode("utf-8"), parse_constant=_no_constant, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as e:  # bad UTF-8 or JSON, NaN/Infinity, a key twice, a 5000-digit number
        raise EngineDirError(f"{path} is not valid JSON ({str(e)[:200]}); re-export the engine directory") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        schema = manifest.get("schema") if isinstance(manifest, dict) else type(manifest).__name__
        raise EngineDirError(f"{path} is not a seer manifest (schema {schema!r}); pass a directory seer-export wrote")
    version = manifest.get("schema_version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        newer = isinstance(version, int) and version > SCHEMA_VERSION
        fix = "upgrade seer" if newer else "re-export it with this version of seer-export"
        raise EngineDirError(
            f"{directory} uses engine-directory schema v{version}, this seer reads "
            f"v{' and v'.join(map(str, READABLE_VERSIONS))}: {fix}"
        )
    from .schema import referenced_files, validate

    manifest = upgrade(manifest)
    validate(manifest, str(path))
    files = manifest["files"]
    for rel, key in referenced_files(manifest).items():
        if rel not in files:
            raise EngineDirError(f"{path}: {key} names {rel}, which `files` does not list, so it cannot be verified; "
                                 "re-export the engine directory")
    for rel, meta in files.items():
        with _open_regular(directory, rel) as f:
            size = os.fstat(f.fileno()).st_size
            if size != meta["bytes"]:
                raise EngineDirError(f"{rel} in {directory} has changed size since export; re-export the directory")
            if verify and _sha256(f) != meta["sha256"]:
                raise EngineDirError(
                    f"{rel} in {directory} does not match its sha256 in {MANIFEST}; the file was altered or "
                    "corrupted, re-export the directory"
                )
    if verify:
        _external_data(directory, manifest, path)
    return manifest, digest


def upgrade(manifest: dict[str, Any]) -> dict[str, Any]:
    """A v1-v3 manifest (FLUX only) in v4's terms: its guidance kind (embedded when the transformer
    takes a guidance input) and the sizes of its graphs' symbols, which v3 readers derived from FLUX's
    2x2 packing. Anything malformed is left for the schema to name."""
    if manifest.get("schema_version") == SCHEMA_VERSION:
        return manifest
    try:
        guidance = manifest["model"]["config"]["guidance"]
        token = 2 * int(manifest["latent"]["vae_scale_factor"])
    except (KeyError, TypeError, ValueError):
        return manifest
    return {**manifest, "guidance": {"kind": "embedded" if guidance is True else "none"},
            "dims": {"N_img": f"(H // {token}) * (W // {token})", "H_latent": f"H // {token}",
                     "W_latent": f"W // {token}"}}


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A key given twice is refused: readers in other languages may keep the other one."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"key {twice!r} appears twice in one object")
    return out


def _external_data(directory: Path, manifest: dict[str, Any], path: Path) -> None:
    """Every file a graph reads its weights from (ONNX external data) is listed in `files`, so it is
    verified and pinned like the graph: otherwise an unlisted file could change what a pinned
    directory computes. (ONNX Runtime itself refuses external data outside the graph's folder.)"""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors

    for name, g in manifest["graphs"].items():
        try:
            model = onnx.load(str(directory / g["onnx"]), load_external_data=False)
        except Exception as e:  # noqa: BLE001 (any parse failure of an untrusted file is the same problem)
            raise EngineDirError(f"{g['onnx']} in {directory} is not an ONNX graph ({' '.join(str(e).split())[:120]}); "
                                 "re-export the engine directory") from None
        for tensor in _get_all_tensors(model):
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                location = ExternalDataInfo(tensor).location
                if location not in manifest["files"]:
                    raise EngineDirError(f"{path}: the {name} graph reads weights from {location!r}, which `files` "
                                         "does not list, so they cannot be verified; re-export the engine directory")


@contextlib.contextmanager
def _open_regular(directory: Path, rel: str) -> Iterator[Any]:
    """Open `rel` for reading only if it is a regular file inside `directory`: no '..', no symlink
    anywhere on its path, no FIFO or device (opened non-blocking, so a FIFO cannot hang the reader)."""
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise EngineDirError(f"{directory}: {rel!r} is not a path inside the directory; re-export the engine directory")
    here = directory
    for i, part in enumerate(parts):
        here = here / part
        try:
            st = os.lstat(here)
        except FileNotFoundError:
            raise EngineDirError(f"{directory} is missing {rel}; the directory is incomplete, re-export it") from None
        last = i == len(parts) - 1
        if stat.S_ISLNK(st.st_mode):
            raise EngineDirError(f"{rel} in {directory} is a symbolic link ({'/'.join(parts[:i + 1])}); an engine "
                                 "directory holds its own files, copy them in (cp -L) or re-export")
        if not (stat.S_ISREG(st.st_mode) if last else stat.S_ISDIR(st.st_mode)):
            raise EngineDirError(f"{rel} in {directory} is not a regular file; re-export the engine directory")
    fd = os.open(here, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    f = os.fdopen(fd, "rb")
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced between the check and the open
            raise EngineDirError(f"{rel} in {directory} is not a regular file; re-export the engine directory")
        yield f
    finally:
        f.close()


def read_regular(directory: Path, rel: str, limit: int) -> bytes:
    with _open_regular(directory, rel) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise EngineDirError(f"{directory / rel} is larger than {limit >> 20} MiB, no manifest is; the directory is "
                             "damaged or not seer's, re-export it")
    return data


def _sha256(f) -> str:
    h = hashlib.sha256()
    for chunk in iter(lambda: f.read(1 << 22), b""):
        h.update(chunk)
    return h.hexdigest()
