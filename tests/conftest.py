"""Shared fixtures: the embedded flux-tiny model and its engine directories, built once per run
into a temporary cache (offline, deterministic)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def seer_cache(tmp_path_factory):
    import os

    path = tmp_path_factory.mktemp("seer-cache")
    os.environ["SEER_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(seer_cache):
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
