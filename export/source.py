"""Where a model to export comes from: the embedded flux-tiny, a local diffusers directory, or a
Hugging Face Hub repository (through the normal hub cache, so it also works offline once cached).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ModelSourceError

ALIASES = {
    "flux": "black-forest-labs/FLUX.1-dev",
    "flux-dev": "black-forest-labs/FLUX.1-dev",
    "flux-schnell": "black-forest-labs/FLUX.1-schnell",
}
EMBEDDED = "flux-tiny"
# Only what the pipeline needs: skips the single-file checkpoints that hub FLUX repos also carry.
_PATTERNS = ["model_index.json", "*/*.json", "*/*.safetensors", "*/*.txt", "*/*.model"]


def embedded_dir() -> Path:
    """The trained flux-tiny pipeline shipped inside the package (python -m seer.export.tiny rebuilds it)."""
    return Path(__file__).parent / "assets" / EMBEDDED


def resolve(model: str) -> Path:
    """A local directory holding a diffusers FLUX pipeline for `model`."""
    if model == EMBEDDED:
        path = embedded_dir()
        if not (path / "model_index.json").is_file():
            raise ModelSourceError(f"the embedded {EMBEDDED} weights are missing from this installation ({path}); "
                                   "reinstall seer, or rebuild them with: python -m seer.export.tiny --out " + str(path))
        return path
    local = Path(model).expanduser()
    if local.exists():
        return _check_pipeline(local)
    repo = ALIASES.get(model, model)
    if repo.count("/") != 1:
        raise ModelSourceError(
            f"{model!r} is neither a local directory nor a Hugging Face repo id (owner/name); "
            f"try '{EMBEDDED}', 'flux' or a path to a diffusers FLUX pipeline"
        )
    return _check_pipeline(_download(repo))


def _download(repo: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, allow_patterns=_PATTERNS))
    except Exception as online_error:  # network down, offline mode, gated repo, unknown id
        try:
            return Path(snapshot_download(repo, allow_patterns=_PATTERNS, local_files_only=True))
        except Exception:
            reason = str(online_error).strip().splitlines()[0][:200]
            raise ModelSourceError(
                f"cannot get {repo!r}: not in the local Hugging Face cache and the hub did not answer "
                f"({type(online_error).__name__}: {reason}). Check the id, log in for gated models "
                "(huggingface-cli login), connect once to cache it, or pass a local diffusers directory"
            ) from None


def _check_pipeline(path: Path) -> Path:
    index = path / "model_index.json"
    if not index.is_file():
        raise ModelSourceError(f"{path} has no model_index.json; pass a diffusers-format FLUX pipeline directory")
    try:
        meta = json.loads(index.read_text())
    except ValueError as e:  # a UnicodeDecodeError included
        raise ModelSourceError(f"{index} is not valid JSON ({e}); pass a diffusers-format FLUX pipeline directory "
                               "(save it again with save_pretrained)") from None
    cls = meta.get("_class_name") if isinstance(meta, dict) else None
    if not isinstance(cls, str) or not cls:
        raise ModelSourceError(f"{index} does not name its pipeline class (_class_name); pass a diffusers-format "
                               "FLUX pipeline directory (save it again with save_pretrained)")
    if not cls.startswith("Flux"):
        raise ModelSourceError(f"{path} holds a {cls or 'unknown'} pipeline; seer-export flux takes FLUX pipelines")
    for component in ("text_encoder", "text_encoder_2", "transformer", "vae"):
        entry = meta.get(component)
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(x, str) for x in entry)):
            raise ModelSourceError(f"{index} names no {component} ([library, class]); seer-export needs a complete "
                                   "FLUX pipeline")
    return path
