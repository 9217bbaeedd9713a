"""Shared fixtures: the embedded (shipped, trained) flux-tiny model, a tiny random DiT, and their
engine directories, exported once per run (offline, deterministic)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model():
    from seer.export.source import resolve

    return resolve("flux-tiny")


def _export(tmp_path_factory, tiny_model, **kw):
    from seer.export.flux_export import export_flux

    out = tmp_path_factory.mktemp("engines") / "flux-tiny"
    export_flux("flux-tiny", out, log=lambda m: None, **kw)
    return out


@pytest.fixture(scope="session")
def engine_modules(tmp_path_factory, tiny_model):
    return _export(tmp_path_factory, tiny_model, cache="modules", max_order=2)


@pytest.fixture(scope="session")
def engine_lite(tmp_path_factory, tiny_model):
    return _export(tmp_path_factory, tiny_model, cache="lite", max_order=1, torch_program=False)


@pytest.fixture(scope="session")
def guided_model(tmp_path_factory):
    """flux-tiny's layout with FLUX.1-dev's guidance embedding, untrained (random weights)."""
    from seer.export.tiny import build_untrained

    path = tmp_path_factory.mktemp("flux-guided")
    build_untrained(path, seed=0, guidance_embeds=True).save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def engine_guided(tmp_path_factory, guided_model):
    from seer.export.flux_export import export_flux

    out = tmp_path_factory.mktemp("engines") / "flux-guided"
    export_flux(str(guided_model), out, log=lambda m: None, cache="modules", max_order=1, torch_program=False)
    return out


@pytest.fixture()
def engine_copy(engine_modules, tmp_path):
    """A copy of the modules directory that a test may damage."""
    import shutil

    dst = tmp_path / "engine"
    shutil.copytree(engine_modules, dst)
    return dst


# The tiny random DiT (tests/dit_models.py) and its engine directories, shared by the DiT tests
@pytest.fixture(scope="session")
def dit_model(tmp_path_factory):
    from dit_models import build_dit

    return build_dit(tmp_path_factory.mktemp("dit") / "pipeline")


@pytest.fixture(scope="session")
def engine_dit(tmp_path_factory, dit_model):
    from seer.export.dit_export import export_dit

    out = tmp_path_factory.mktemp("engines") / "dit"
    export_dit(str(dit_model), out, max_order=2, log=lambda m: None)
    return out


@pytest.fixture(scope="session")
def engine_dit_lite(tmp_path_factory, dit_model):
    from seer.export.dit_export import export_dit

    out = tmp_path_factory.mktemp("engines") / "dit-lite"
    export_dit(str(dit_model), out, cache="lite", max_order=2, log=lambda m: None)
    return out
