"""Where a model to export comes from: an embedded model (flux-tiny, dit-tiny), a local diffusers
directory, or a Hugging Face Hub repository (through the normal hub cache, so it also works offline
once cached); and which family's exporter takes it, by the pipeline class its model_index.json names.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ModelSourceError

ALIASES = {
    "flux": "black-forest-labs/FLUX.1-dev",
    "flux-dev": "black-forest-labs/FLUX.1-dev",
    "flux-schnell": "black-forest-labs/FLUX.1-schnell",
    "dit": "facebook/DiT-XL-2-256",
    "dit-xl": "facebook/DiT-XL-2-256",
}
EMBEDDED = "flux-tiny"
DIT_EMBEDDED = "dit-tiny"
EMBEDDED_MODELS = (EMBEDDED, DIT_EMBEDDED)
# Only what the pipeline needs: skips the single-file checkpoints that hub FLUX repos also carry
# (DiT-XL/2's hub weights are .bin files, which diffusers reads without running code).
_PATTERNS = ["model_index.json", "*/*.json", "*/*.safetensors", "*/*.bin", "*/*.txt", "*/*.model"]
# pipeline class -> family, and the components its exporter loads
FAMILIES = {"flux": ("text_encoder", "text_encoder_2", "transformer", "vae"), "dit": ("transformer", "vae", "scheduler")}


def embedded_dir(name: str = EMBEDDED) -> Path:
    """A trained pipeline shipped inside the package (python -m seer.export.tiny / seer.export.dit_tiny
    rebuild them)."""
    return Path(__file__).parent / "assets" / name


def resolve(model: str) -> Path:
    """A local directory holding a diffusers pipeline (FLUX or DiT) for `model`."""
    if model in EMBEDDED_MODELS:
        path = embedded_dir(model)
        if not (path / "model_index.json").is_file():
            script = "tiny" if model == EMBEDDED else "dit_tiny"
            raise ModelSourceError(f"the embedded {model} weights are missing from this installation ({path}); "
                                   f"reinstall seer, or rebuild them with: python -m seer.export.{script} --out {path}")
        return path
    local = Path(model).expanduser()
    if local.exists():
        return _check_pipeline(local)
    repo = ALIASES.get(model, model)
    if repo.count("/") != 1:
        raise ModelSourceError(
            f"{model!r} is neither a local directory nor a Hugging Face repo id (owner/name); "
            f"try '{EMBEDDED}', 'flux', '{DIT_EMBEDDED}', 'dit' or a path to a diffusers FLUX or DiT pipeline"
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


def family_of(model: str) -> str:
    """The family whose exporter takes `model` ("flux" or "dit"), from the pipeline class its
    model_index.json names; for a hub repo only that file is fetched (the export fetches the rest)."""
    if model in EMBEDDED_MODELS:
        return "dit" if model == DIT_EMBEDDED else "flux"
    local = Path(model).expanduser()
    if local.exists():
        index = _check_pipeline(local) / "model_index.json"
    else:
        repo = ALIASES.get(model, model)
        if repo.count("/") != 1:
            return "flux"  # resolve() names the problem
        try:
            from huggingface_hub import hf_hub_download

            try:
                index = Path(hf_hub_download(repo, "model_index.json"))
            except Exception:
                index = Path(hf_hub_download(repo, "model_index.json", local_files_only=True))
        except Exception:
            return "flux"  # resolve() names the problem
    cls = json.loads(index.read_text()).get("_class_name")
    return "dit" if cls == "DiTPipeline" else "flux"


def _check_pipeline(path: Path) -> Path:
    index = path / "model_index.json"
    if not index.is_file():
        raise ModelSourceError(f"{path} has no model_index.json; pass a diffusers-format pipeline directory "
                               "(FLUX or DiT)")
    try:
        meta = json.loads(index.read_text())
    except ValueError as e:  # a UnicodeDecodeError included
        raise ModelSourceError(f"{index} is not valid JSON ({e}); pass a diffusers-format FLUX pipeline directory "
                               "(save it again with save_pretrained)") from None
    cls = meta.get("_class_name") if isinstance(meta, dict) else None
    if not isinstance(cls, str) or not cls:
        raise ModelSourceError(f"{index} does not name its pipeline class (_class_name); pass a diffusers-format "
                               "FLUX pipeline directory (save it again with save_pretrained)")
    if cls.startswith("Flux"):
        family = "flux"
    elif cls == "DiTPipeline":
        family = "dit"
    else:
        raise ModelSourceError(f"{path} holds a {cls} pipeline; seer-export takes FLUX pipelines (FluxPipeline) and "
                               "DiT pipelines (DiTPipeline)")
    for component in FAMILIES[family]:
        entry = meta.get(component)
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(x, str) for x in entry)):
            raise ModelSourceError(f"{index} names no {component} ([library, class]); seer-export needs a complete "
                                   f"{'FLUX' if family == 'flux' else 'DiT'} pipeline")
    return path
