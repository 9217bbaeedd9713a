"""seer-bench: the ideal-speed-up arithmetic by hand, step costs, and one small end-to-end run
whose diffusers no-cache peer must reproduce seer's --no-cache images (same weights, same seeds)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from seer.evaluate import bench, harness


def test_ideal_speedup_by_hand():
    assert bench.ideal(50, 10, 0.0) == (5.0, 5.0)
    plain, corrected = bench.ideal(50, 10, 0.1)  # 10 full steps + 40 forecasts at a tenth of one
    assert plain == 5.0 and corrected == pytest.approx(50 / 14)


def test_forecast_steps_cost_less_than_full_steps(engine_lite):
    costs = bench.step_costs(engine_lite, harness.ScheduleSpec.parse("3/1/1"), "a red circle", 9, "onnxruntime",
                             "cpu", repeats=1)
    assert 0 < costs["forecast_s"] < costs["full_s"]


def test_bench_end_to_end(engine_modules, tmp_path):
    from seer.evaluate.cli import bench_main

    r = CliRunner().invoke(bench_main, [str(engine_modules), "-s", "3/1/2", "--prompts", "1", "--steps", "8",
                                        "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "bench.json").read_text())
    ours = {row["schedule"]: row for row in report["rows"]}
    assert set(ours) == {"none", "3/1/2"} and ours["3/1/2"]["full_steps"] == 4  # 0, 1, 4, 7
    assert ours["3/1/2"]["ideal_speedup"] == 2.0 and 0 < ours["3/1/2"]["fraction_of_ideal"]
    peers = {row["method"]: row for row in report["peers"]}
    assert set(peers) == {"diffusers", "diffusers-taylorseer", "diffusers-fbcache"}
    # diffusers without a cache on the same weights and seed draws seer's --no-cache image
    assert peers["diffusers"]["psnr_db"] > 40
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| seer-modules | 3/1/2 | 4 |" in (tmp_path / "bench.md").read_text()


def test_bench_bad_input(engine_modules, tmp_path):
    from seer.evaluate.cli import bench_main

    r = CliRunner().invoke(bench_main, [str(engine_modules), "-s", "6-1-3", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "cannot read schedule" in r.output and "Traceback" not in r.output
