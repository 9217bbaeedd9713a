"""Export details: hub-cache loading offline, external data for large graphs, no float64, PNG metadata."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import torch
from click.testing import CliRunner
from PIL import Image

from seer.export import graphs
from seer.export.graphs import GraphIO, export_graph
from seer.export.source import resolve


def test_hub_id_resolves_from_the_local_cache_offline(tiny_model, tmp_path, monkeypatch):
    # the layout huggingface_hub's cache uses: models--owner--name/{refs/main, snapshots/<rev>/...}
    repo = tmp_path / "hub" / "models--acme--flux-small"
    rev = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_model, repo / "snapshots" / rev)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    path = resolve("acme/flux-small")
    assert (path / "model_index.json").is_file() and rev in str(path)


def test_large_graphs_use_external_data(tmp_path, monkeypatch):
    monkeypatch.setattr(graphs, "EXTERNAL_DATA_THRESHOLD", 0)
    entry = export_graph(torch.nn.Linear(64, 64), [GraphIO("x", torch.randn(2, 64))], ["y"], [{}], tmp_path, "lin",
                         torch_program=False)
    assert entry["onnx_data"] == "lin.onnx.data" and (tmp_path / "lin.onnx.data").stat().st_size >= 64 * 64 * 4
    assert onnx.load(tmp_path / "lin.onnx", load_external_data=False).ByteSize() < 4096


def test_no_float64_anywhere_in_the_graphs(engine_modules):
    for f in engine_modules.glob("*.onnx"):
        m = onnx.load(f)
        graphs.check_no_float64(m, f.name)
        casts = [a.i for n in m.graph.node if n.op_type == "Cast" for a in n.attribute if a.name == "to"]
        assert onnx.TensorProto.DOUBLE not in casts, f.name


def test_png_carries_prompt_seed_and_schedule(engine_modules, tmp_path):
    from seer.runtime.cli import main

    out = tmp_path / "a.png"
    r = CliRunner().invoke(main, [str(engine_modules), "-p", "a blue star", "--seed", "5", "--steps", "12",
                                  "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    params = json.loads(Image.open(out).text["parameters"])
    assert params["prompt"] == "a blue star" and params["seed"] == 5
    assert params["full_steps"] == [0, 1, 2, 8] and params["interval"] == 6 and params["order"] == 1
    assert np.asarray(Image.open(out)).shape == (64, 64, 3)  # flux-tiny's default size


def test_graphs_carry_no_paths_of_the_exporting_machine(engine_lite):
    for graph in ("clip", "t5", "full", "forecast", "vae_decoder"):
        model = onnx.load(str(engine_lite / f"{graph}.onnx"))
        keys = {p.key for n in model.graph.node for p in n.metadata_props}
        assert "pkg.torch.onnx.stack_trace" not in keys, graph
        text = " ".join(p.value for n in model.graph.node for p in n.metadata_props)
        assert ".py" not in text and "site-packages" not in text, graph


def test_progress_bar_only_on_a_terminal(engine_lite, tmp_path, monkeypatch):
    import io

    from seer.runtime import cli

    r = CliRunner().invoke(cli.main, [str(engine_lite), "-p", "a red circle", "--steps", "6", "--out",
                                      str(tmp_path / "a.png")])
    assert r.exit_code == 0 and r.output.count("\n") == 1, r.output  # not a terminal: the summary line only

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    err = Terminal()
    monkeypatch.setattr(cli.sys, "stderr", err)
    with cli._progress(6, quiet=True) as on_step:  # --json
        assert on_step is None
    with cli._progress(6, quiet=False) as on_step:
        for i in range(6):
            on_step(i, i < 3, None)
    assert "denoising" in err.getvalue() and "/6" in err.getvalue()
