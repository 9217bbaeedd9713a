"""seer-bench's model sizes: the FLUX presets against FLUX.1-dev's published size, and the build
of a size's engine directories (built once, reused while the recorded configuration matches)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from seer.errors import UsageError
from seer.evaluate import sizes


def _parameters(config: dict) -> int:
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        return sum(p.numel() for p in FluxTransformer2DModel(**config).parameters())


def test_flux_preset_is_flux1_dev_but_for_the_text_widths():
    # FLUX.1-dev's transformer has 11,901,408,320 parameters with its T5-XXL (4096) and CLIP-L (768) widths.
    real_text = {"joint_attention_dim": 4096, "pooled_projection_dim": 768}
    assert _parameters({**sizes.SIZES["flux"].transformer, **real_text}) == 11_901_408_320
    slim = sizes.SIZES["flux-slim"].transformer
    assert {k: v for k, v in slim.items() if k not in ("num_layers", "num_single_layers")} == \
        {k: v for k, v in sizes.SIZES["flux"].transformer.items() if k not in ("num_layers", "num_single_layers")}
    assert 69e6 < _parameters(sizes.SIZES["mid"].transformer) < 72e6


def test_flux_sizes_need_a_gpu():
    with pytest.raises(UsageError, match="needs a GPU"):
        sizes.get("flux-slim", "cpu")
    assert sizes.get("flux", "cuda:0").gpu_only
    with pytest.raises(UsageError, match="unknown size"):
        sizes.get("huge", "cpu")


def test_prepare_builds_once_then_reuses(tmp_path, monkeypatch):
    from seer.engines.manifest import read_manifest

    small = sizes.Size("test", "test size", transformer={**sizes.SIZES["mid"].transformer, "num_layers": 1,
                       "num_single_layers": 1, "num_attention_heads": 2, "attention_head_dim": 32,
                       "axes_dims_rope": (8, 12, 12)}, resolution=128, granularities=("lite",))
    logs = []
    dirs = sizes.prepare(small, tmp_path / "w", "onnxruntime", log=logs.append)
    manifest = read_manifest(dirs[0])
    assert manifest["cache"]["granularity"] == "lite" and manifest["defaults"]["height"] == 128
    assert manifest["model"]["config"]["dim"] == 64 and manifest["model"]["config"]["n_single"] == 1
    assert json.loads((tmp_path / "w" / "size.json").read_text())["size"]["name"] == "test"

    exported = []
    monkeypatch.setattr("seer.export.flux_export.export_flux", lambda *a, **kw: exported.append(a))
    assert sizes.prepare(small, tmp_path / "w", "onnxruntime", log=logs.append) == dirs and not exported
    assert "reusing" in logs[-1]
    changed = dataclasses.replace(small, resolution=256)
    sizes.prepare(changed, tmp_path / "w", "onnxruntime", log=logs.append)
    assert len(exported) == 1  # rebuilt (the stub writes no engine directory)
    assert json.loads((tmp_path / "w" / "model" / "vae" / "config.json").read_text())["sample_size"] == 256
    assert json.loads((tmp_path / "w" / "size.json").read_text())["size"]["resolution"] == 256

    built = []
    monkeypatch.setattr("seer.engines.tensorrt_build.build_plans", lambda d, log: built.append(d))
    dirs = sizes.prepare(changed, tmp_path / "w", "tensorrt", log=logs.append)
    assert len(exported) == 2 and built == dirs  # another backend: rebuilt, with plans
    assert json.loads((tmp_path / "w" / "size.json").read_text())["backend"] == "tensorrt"
