"""scripts/export_footprint.py end to end on a narrow model: two depths, real seer-export runs in
child processes, the JSON it writes and the FLUX.1-dev extrapolation (no timings checked)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "export_footprint.py"


def _script():
    spec = importlib.util.spec_from_file_location("export_footprint", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_footprint_narrow_model(tmp_path, capsys):
    footprint = _script()
    out = tmp_path / "footprint.json"
    code = footprint.main(["--work", str(tmp_path / "work"), "--width-heads", "2", "--head-dim", "16",
                           "--depths", "1x1,2x1", "--precisions", "fp32", "--cache", "lite",
                           "--max-sequence-length", "16", "--json", str(out)])
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert code == 0, [r.get("error") for r in result["rows"]]

    rows = result["rows"]
    assert [(r["depth"], r["precision"]) for r in rows] == [("1x1", "fp32"), ("2x1", "fp32")]
    for r in rows:
        assert "error" not in r
        assert r["peak_rss_bytes"] > 0 and r["peak_rss_hwm_bytes"] > 0
        assert 0 < r["peak_anon_bytes"] <= r["peak_rss_bytes"]
        assert {"t5", "full", "vae_decoder"} <= set(r["phases"])  # from seer-export's log lines
        assert r["peak_disk_bytes"] >= r["dir_bytes"] > r["graph_bytes"] > 0
        assert r["params"] > 0 and r["bf16_bytes"] == 2 * r["params"]
        assert r["stored_bytes"] == r["bf16_bytes"]  # the built checkpoint is bfloat16, as FLUX.1-dev ships
        assert "manifest.json" in r["files"] and "full.onnx" in r["files"]
    small, large = rows
    assert large["params"] > small["params"]
    assert large["dir_bytes"] > small["dir_bytes"]
    assert large["graph_bytes"] > small["graph_bytes"]
    # the engine directories are gone (--keep not given); the models stay cached for a rerun
    assert not any((tmp_path / "work" / "runs").rglob("manifest.json"))
    assert len(list((tmp_path / "work" / "models").glob("flux-2x16-*/model_index.json"))) == 2

    fit = result["fits"]["fp32"]
    assert fit["points"] == 2
    dev = fit["flux_dev"]
    assert dev["params"] == footprint.FLUX_DEV_PARAMS == 11_901_408_320
    assert dev["peak_rss_bytes"] > 0 and dev["dir_bytes"] > 0 and dev["peak_disk_bytes"] > 0
    for metric in ("peak_rss_bytes", "peak_disk_bytes", "dir_bytes"):
        line = fit[metric]
        expected = line["slope_per_param"] * footprint.FLUX_DEV_PARAMS + line["intercept"]
        assert abs(line["flux_dev"] - expected) <= 1e-6 * abs(expected) + 1
    # phase by phase: FLUX.1-dev's predicted peaks are never below the overall lines
    assert "full" in fit["phases"]
    assert dev["peak_rss_bytes"] >= fit["peak_rss_bytes"]["flux_dev"]
    assert dev["peak_disk_bytes"] >= fit["peak_disk_bytes"]["flux_dev"]
    # graphs' bytes per added parameter: at least its fp32 weight (a narrow model's graphs also carry
    # their nodes, a large share of its bytes)
    assert 3.5 < fit["dir_bytes"]["slope_per_param"] < 20
    assert "| 1x1 |" in printed and "FLUX.1-dev" in printed
