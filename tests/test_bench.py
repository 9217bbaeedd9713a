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
    from seer.runtime.pipeline import Pipeline

    pipe = Pipeline.load(engine_lite)
    pipe.warmup()
    t = bench.timed_seer(pipe, harness.ScheduleSpec.parse("3/1/1"), "a red circle", 0, 9, per_step=True)
    assert len(t["full_step_s"]) == 3 - 1 and len(t["forecast_step_s"]) == 6  # full 0, 3, 6; the first is dropped
    assert 0 < max(t["forecast_step_s"]) < min(t["full_step_s"]) and t["loop_s"] < t["generation_s"]


def test_rounds_interleave_rows_and_take_medians():
    calls = []

    def row(name, seconds):
        return lambda per_step: calls.append(name) or {"generation_s": seconds.pop(0)}

    times = bench.measure_times({"a": row("a", [3.0, 1.0, 2.0]), "b": row("b", [5.0, 4.0, 9.0])}, 3, True,
                                lambda m: None)
    assert calls == ["a", "b"] * 3
    assert times == {"a": {"generation_s": 2.0, "repeats": 3}, "b": {"generation_s": 5.0, "repeats": 3}}


def test_bench_end_to_end(engine_modules, tmp_path):
    from seer.evaluate.cli import bench_main

    r = CliRunner().invoke(bench_main, [str(engine_modules), "-s", "3/1/2", "--prompts", "1", "--steps", "8",
                                        "--repeats", "2", "--no-memory", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "bench.json").read_text())
    ours = {row["schedule"]: row for row in report["rows"]}
    assert set(ours) == {"none", "3/1/2", "diffusers:3/1/2"} and ours["3/1/2"]["full_steps"] == 4  # 0, 1, 4, 7
    assert ours["3/1/2"]["ideal_speedup"] == 2.0 and 0 < ours["3/1/2"]["fraction_of_ideal"]
    assert 0 < ours["3/1/2"]["forecast_ratio"] < 1 and ours["3/1/2"]["repeats"] == 2
    peers = {row["method"]: row for row in report["peers"]}
    assert set(peers) == {"diffusers", "diffusers-taylorseer", "diffusers-fbcache"}
    # diffusers without a cache on the same weights and seed draws seer's --no-cache image
    assert peers["diffusers"]["psnr_db"] > 40
    # diffusers' hook and ours at its placement of the full steps (0, 1, 3, 6) forecast the same
    # features but for one nonlinearity (it forecasts single blocks' MLP before GELU, we after): close,
    # and far from ours at the TaylorSeer placement (0, 1, 4, 7; 12 dB lower here)
    twin, hook = ours["diffusers:3/1/2"], peers["diffusers-taylorseer"]
    assert twin["full_steps"] == hook["full_steps"] == 4 and abs(twin["psnr_db"] - hook["psnr_db"]) < 2.5
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| seer-modules | 3/1/2 | 4 |" in (tmp_path / "bench.md").read_text()


def test_bench_bad_input(engine_modules, tmp_path):
    from seer.evaluate.cli import bench_main

    r = CliRunner().invoke(bench_main, [str(engine_modules), "-s", "6-1-3", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "cannot read schedule" in r.output and "Traceback" not in r.output


def test_peak_memory_of_a_fresh_process(engine_modules, tiny_model):
    """seer's runtime loads no torch; diffusers does: a fresh process shows the difference."""
    common = {"condition": "a red circle", "seed": 0, "steps": 4, "backend": "onnxruntime", "device": "cpu",
              "schedule": "none"}
    ours = bench.peak_memory({**common, "kind": "seer", "engine_dir": str(engine_modules)})
    theirs = bench.peak_memory({**common, "kind": "diffusers", "model": str(tiny_model), "row": 0})
    assert 50 < ours["peak_rss_mib"] < theirs["peak_rss_mib"], (ours, theirs)
    broken = bench.peak_memory({**common, "kind": "seer", "engine_dir": "/nonexistent"})
    assert "memory_error" in broken


def test_size_and_engine_dirs_exclude_each_other(engine_modules, tmp_path):
    from seer.evaluate.cli import bench_main

    r = CliRunner().invoke(bench_main, [str(engine_modules), "--size", "mid", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "either ENGINE_DIRS or --size" in r.output
    r = CliRunner().invoke(bench_main, ["--size", "flux", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "--device cuda" in r.output and "Traceback" not in r.output


def test_schedule_spec_reads_both_placements():
    spec = harness.ScheduleSpec.parse("diffusers:6/1/3")
    assert spec.kwargs()["schedule_style"] == "diffusers" and harness.ScheduleSpec.parse(spec.label) == spec
    assert harness.ScheduleSpec.parse("6/2/3/1").kwargs() == {"interval": 6, "order": 2, "warmup": 3, "final_full": 1,
                                                               "schedule_style": "taylorseer"}
    with pytest.raises(harness.UsageError, match="cannot read schedule"):
        harness.ScheduleSpec.parse("teacache:6/1/3")
