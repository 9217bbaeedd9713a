"""Plans: the mapping of weights over stored features onto the forecast graph's coefficients, the
least-squares fit and the placement search (against hand-derived values), calibrated plans in an
engine directory (seer-calibrate, --plan) and their refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from seer.calib import calibrate as cal
from seer.calib import plans
from seer.calib.cli import main as calibrate_main
from seer.errors import EngineDirError, OutputError, UsageError
from seer.runtime.cli import main as run_main
from seer.runtime.pipeline import Pipeline
from seer.runtime.plan import Plan, coefficients_for_weights, feature_bases, weights_for_coefficients
from seer.runtime.schedule import Schedule
from seer.runtime.taylor import TaylorState
from tests.cli_contract import one_line_error, run


def lagrange_weights(t: float, nodes: list[float]) -> np.ndarray:
    """Polynomial extrapolation to t through `nodes`, by hand: w_l = prod_{m != l} (t - t_m) / (t_l - t_m)."""
    return np.array([math.prod((t - m) / (l - m) for m in nodes if m != l) for l in nodes])


@pytest.mark.parametrize("order", [0, 1, 2, 3])
@pytest.mark.parametrize("schedule", [Schedule.taylorseer(24, 4, 3), Schedule.taylorseer(24, 5, 1),
                                      Schedule.diffusers(24, 3, 2),
                                      Schedule(tuple(i in (0, 1, 3, 7, 8, 15, 22) for i in range(24)), 0)])
def test_weights_map_onto_the_factors_the_state_holds(order, schedule):
    """Through the real Taylor state (its divided differences, its warm-up gate), the coefficients made
    for weights w compute exactly sum_l w_l F(q_l) over the stored full-step features, and back."""
    rng = np.random.default_rng(order)
    features = rng.normal(size=(schedule.steps, 5))
    bases = feature_bases(schedule.full, schedule.derive_from, order)
    state = TaylorState(order, lambda: np.zeros(5), slots=5)
    for i in range(schedule.steps):
        if schedule.full[i]:
            state.spare[...] = features[i]
            state.update(i, derive=i >= schedule.derive_from)
            continue
        q, basis = bases[i]
        assert q == sorted((s for s in schedule.full_steps if s < i), reverse=True)[:state.valid]
        w = rng.normal(size=len(q))
        c = coefficients_for_weights(basis, w, 5)
        assert not c[state.valid:].any()
        got = sum(c[j] * state.factors[j] for j in range(5))
        np.testing.assert_allclose(got, features[q].T @ w, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(weights_for_coefficients(basis, c), w, rtol=1e-5, atol=1e-5)


def test_taylor_coefficients_as_weights_by_hand():
    """TaylorSeer's forecast over equally spaced full steps (distance d, k steps after the last), written
    out by hand: F0 + k (F0 - F1) / d + k^2 / 2 (F0 - 2 F1 + F2) / d^2. At order 1 that is linear
    extrapolation, the Lagrange weights through the last two full steps."""
    s = Schedule(tuple(i % 3 == 0 for i in range(13)), 0)
    bases = feature_bases(s.full, 0, 2)
    plan = Plan.from_schedule(s, 2, 3)
    for i in (7, 8, 10, 11):
        k, d = i % 3, 3
        by_hand = [1 + k / d + k * k / (2 * d * d), -k / d - k * k / (d * d), k * k / (2 * d * d)]
        np.testing.assert_allclose(weights_for_coefficients(bases[i][1], plan.coefficients[i]), by_hand, atol=1e-6)
    linear = Plan.from_schedule(s, 1, 3)
    bases = feature_bases(s.full, 0, 1)
    for i in (4, 8, 11):
        q, basis = bases[i]
        np.testing.assert_allclose(weights_for_coefficients(basis, linear.coefficients[i]), lagrange_weights(i, q),
                                   atol=1e-6)


def test_rule_plans_carry_the_states_own_coefficients():
    s = Schedule.taylorseer(30, 5, 3)
    plan = Plan.from_schedule(s, 2, 4)
    state = TaylorState(2, lambda: np.zeros(1), slots=4)
    for i in range(30):
        if s.full[i]:
            state.update(i, derive=i >= s.derive_from)
            assert plan.coefficients[i] is None
        else:
            np.testing.assert_array_equal(plan.coefficients[i], state.coefficients(i))


def test_the_fit_recovers_exact_extrapolation_weights():
    """Features on quadratic trajectories in the step index: with three stored full steps the least
    squares weights are the Lagrange ones and the residual vanishes; one step fewer cannot be exact."""
    rng = np.random.default_rng(0)
    steps, n = 20, 400
    a, b, c = rng.normal(size=(3, n))
    t = np.arange(steps, dtype=np.float64)
    features = a + np.outer(t, b) + np.outer(t ** 2, c) / 20
    gram = features @ features.T
    full = plans.full_of((0, 1, 2, 5, 9, 14), steps)
    fitted = plans.fit(gram, full, order=2, slots=3, ridge=0.0)
    bases = feature_bases(full, 0, 2)
    for i in (3, 4, 6, 8, 12, 19):
        q, basis = bases[i]
        np.testing.assert_allclose(weights_for_coefficients(basis, fitted.coefficients[i]), lagrange_weights(i, q),
                                   rtol=1e-4, atol=1e-4)
        assert fitted.residuals[i] < 1e-9
    assert plans.fit(gram, full, order=1, slots=3, ridge=0.0).residuals[12] > 1e-4


def test_flow_match_sensitivity_is_the_step_size():
    """Euler: x' = x + (sigma_{i+1} - sigma_i) * v, so a prediction error moves the final latents by the
    step's |dt| and latents pass through later steps unchanged (gain 1)."""
    from seer.runtime.samplers.flow_match import FlowMatchEuler

    sampler = FlowMatchEuler.from_manifest({"type": "flow_match_euler", "shift": 1.0, "use_dynamic_shifting": False,
                                            "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
                                            "max_image_seq_len": 4096, "num_train_timesteps": 1000})
    sampling = sampler.plan(10, 16, "float32")
    got = plans.sensitivity(lambda i, x, p: sampler.step(sampling, i, x, p, np.zeros_like(x), None), 10)
    np.testing.assert_allclose(got, np.abs(np.diff(sampling.sigmas[:11])), rtol=1e-5)


def test_the_search_finds_a_planted_placement():
    steps, budget, warmup = 30, 7, 2
    target = (0, 1, 4, 9, 15, 22, 28)

    def score(p, order):
        return sum(abs(x - y) for x, y in zip(p, target)) + (order != 1)

    placement, order, value, evaluations = plans.search(score, steps, budget, warmup, [0, 1, 2], 2000)
    assert (placement, order, value) == (target, 1, 0)
    assert all(len(p) == budget and p[:warmup] == (0, 1) and list(p) == sorted(set(p)) and p[-1] < steps
               for p in plans.placements(steps, budget, warmup))


def test_taylorseer_budget_rule():
    assert plans.taylorseer_for_budget(50, 10, 3).full_steps == Schedule.taylorseer(50, 6, 3).full_steps
    for k in (6, 7, 8, 14):
        assert len(plans.taylorseer_for_budget(50, k, 3).full_steps) == k


# --- in an engine directory -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, engine_lite):
    """The lite flux-tiny directory with plans of 8 and 10 full steps, made by seer-calibrate."""
    import shutil

    d = tmp_path_factory.mktemp("plans") / "lite"
    shutil.copytree(engine_lite, d)
    code, out = run([d, "-k", "8", "-k", "10", "--calibration-size", "4", "--max-evaluations", "60", "--judge", "real"],
                    calibrate_main)
    assert code == 0, out
    assert "k8-s50" in out and "k10-s50" in out and "TaylorSeer 6/1/3" in out
    return d


def test_a_calibrated_plan_beats_the_fixed_interval_on_held_out_runs(calibrated):
    """The point of calibrating: on prompts and seeds calibration never saw, 10 full steps placed and
    weighted by seer-calibrate keep closer to --no-cache than TaylorSeer 6/1/3's 10."""
    pipe = Pipeline.load(calibrated)
    plan = pipe.load_plan("k10-s50")
    prov = plan.provenance
    held_out = ["a large red circle at the top left", "a small blue triangle in the middle", "a green square"]
    assert not set(held_out) & set(prov["conditions"]) and min(prov["seeds"]) >= cal.CALIBRATION_SEED
    gains = []
    for k, prompt in enumerate(held_out):
        ref = pipe(prompt, seed=k, no_cache=True, return_latents=True).latents
        rule = pipe(prompt, seed=k, interval=6, order=1, warmup=3, return_latents=True)
        ours = pipe(prompt, seed=k, plan="k10-s50", return_latents=True)
        assert len(ours.schedule.full_steps) == len(rule.schedule.full_steps) == 10 and ours.plan == "k10-s50"
        gains.append(plans.latent_snr_db(ref, ours.latents) - plans.latent_snr_db(ref, rule.latents))
    assert np.mean(gains) > 2.0, gains  # README: about +7 dB in latents with 8 calibration prompts and 400 evaluations


def test_the_loop_forecasts_what_the_weights_say(calibrated):
    """Lite caches the model output, so at a forecast step the prediction must be exactly the weighted
    sum of the stored full-step predictions; read off Euler's update, (x_{i+1} - x_i) / dt_i."""
    pipe = Pipeline.load(calibrated)
    full = plans.full_of((0, 1, 2, 6, 12, 20, 30, 42), 50)
    bases = feature_bases(full, 0, 1)
    rows = [None if f else coefficients_for_weights(bases[i][1], [2.0, -1.0] if len(bases[i][0]) == 2 else [1.0], 2)
            for i, f in enumerate(full)]
    plan = Plan(full, 1, tuple(rows))
    outputs, latents = {}, []
    pipe.feature_tap = lambda i, f: outputs.__setitem__(i, np.array(f, dtype=np.float64).reshape(-1))
    pipe("a red circle", seed=3, plan=plan, on_step=lambda i, _f, x: latents.append(np.array(x, np.float64)))
    pipe.feature_tap = None
    sigmas = pipe.sampler.plan(50, pipe.family.sequence(64, 64)[0], "float32").sigmas
    for i in (3, 5, 13, 31, 49):
        q = bases[i][0]
        pred = (latents[i] - latents[i - 1]).reshape(-1) / (sigmas[i + 1] - sigmas[i])
        np.testing.assert_allclose(pred, 2 * outputs[q[0]] - outputs[q[1]], rtol=1e-3, atol=1e-4)


def test_plans_are_in_the_manifest_and_run_from_the_cli(calibrated, tmp_path):
    from seer.engines.manifest import read_manifest

    m = read_manifest(calibrated)
    assert set(m["schedules"]) == {"k8-s50", "k10-s50"}
    for name, entry in m["schedules"].items():
        assert entry["file"] == f"schedules/{name}.json" and entry["file"] in m["files"]
        data = json.loads((calibrated / entry["file"]).read_text())
        assert len(data["full_steps"]) == entry["full_steps"] and data["provenance"]["graphs"]["full"]
    code, out = run([calibrated, "-p", "a red circle", "--plan", "k8-s50", "--json", "--out", tmp_path / "a.png"])
    assert code == 0, out
    report = json.loads(out.strip().splitlines()[-1])
    assert report["plan"] == "k8-s50" and len(report["full_steps"]) == 8 and report["interval"] is None


def test_seer_eval_takes_plans_as_rows(calibrated):
    from seer.evaluate.harness import ScheduleSpec, evaluate

    report = evaluate([calibrated], [ScheduleSpec.parse("none"), ScheduleSpec.parse("6/1/3"),
                                     ScheduleSpec.parse("plan:k10-s50")], ["a red circle", "a blue square"], [0],
                      judge=False)
    rows = {r["schedule"]: r for r in report["rows"]}
    assert rows["plan:k10-s50"]["full_steps"] == 10
    with pytest.raises(UsageError, match="no plan named 'k9'.*k10-s50, k8-s50"):
        evaluate([calibrated], [ScheduleSpec.parse("plan:k9")], ["a red circle"], [0], judge=False)


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, needles", [
    (["-k", "51"], ["budget of 51", "above the 50 steps"]),
    (["-k", "2", "--warmup", "3"], ["below the warm-up of 3", "--warmup"]),
    (["-k", "4", "--warmup", "0"], ["warm-up must be at least 1"]),
    (["-k", "6", "--prompts", "missing.txt"], ["missing.txt does not exist"]),
    (["-k", "6", "--prompts", "EMPTY"], ["holds no prompts"]),
    (["-k", "6", "--name", "../x"], ["is not a name"]),
    (["-k", "6", "-k", "8", "--name", "a"], ["--name names one plan"]),
    (["-k", "6", "--steps", "5000"], ["steps must be at most 1000"]),
])
def test_calibrate_refuses_bad_input(engine_copy, tmp_path, args, needles):
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    args = [str(empty) if a == "EMPTY" else a for a in args]
    before = (engine_copy / "manifest.json").read_bytes()
    one_line_error(*run([engine_copy, *args], calibrate_main), *needles)
    assert (engine_copy / "manifest.json").read_bytes() == before and not (engine_copy / "schedules").exists()


def test_run_refuses_what_a_plan_cannot_do(calibrated, tmp_path):
    png = tmp_path / "x.png"
    one_line_error(*run([calibrated, "-p", "a", "--plan", "k9", "--out", png]), "no plan named 'k9'",
                   "k10-s50, k8-s50", "seer-calibrate")
    one_line_error(*run([calibrated, "-p", "a", "--plan", "k8-s50", "--steps", "28", "--out", png]),
                   "calibrated for 50 steps, not 28")
    one_line_error(*run([calibrated, "-p", "a", "--plan", "k8-s50", "--interval", "3", "--out", png]),
                   "interval cannot be given with it")
    one_line_error(*run([calibrated, "-p", "a", "--plan", "k8-s50", "--no-cache", "--out", png]), "no_cache")
    assert not png.exists()


def _rewrite_plan(directory: Path, name: str, change) -> None:
    """Change a plan's content and re-hash it in the manifest, as someone forging a plan would."""
    import hashlib

    rel = f"schedules/{name}.json"
    data = json.loads((directory / rel).read_text())
    change(data)
    raw = json.dumps(data).encode()
    (directory / rel).write_bytes(raw)
    m = json.loads((directory / "manifest.json").read_text())
    m["files"][rel] = {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    (directory / "manifest.json").write_text(json.dumps(m))


def _weigh_an_order_not_held(data: dict) -> None:
    """Order 0 holds one factor; weighing the second would read a buffer of no feature of this request."""
    data["order"] = 0
    row = next(r for r in data["coefficients"] if r is not None)
    row[1] = 5.0


@pytest.mark.parametrize("change, needle", [
    (lambda d: d["provenance"]["graphs"].update(full="0" * 64), "calibrated on other graphs"),
    (lambda d: _weigh_an_order_not_held(d), "orders the state does not hold"),
    (lambda d: d["coefficients"].pop(), "coefficient rows for 50 steps"),
    (lambda d: d["coefficients"].__setitem__(0, [1.0, 0.0]), "first step is not full"),
    (lambda d: d.update(version=9), "plan format version 9"),
    (lambda d: d["coefficients"][-1 if d["coefficients"][-1] else -2].__setitem__(0, 1e300), "finite numbers"),
])
def test_a_forged_or_foreign_plan_is_refused(calibrated, tmp_path, change, needle):
    import shutil

    d = tmp_path / "d"
    shutil.copytree(calibrated, d)
    _rewrite_plan(d, "k8-s50", change)
    pipe = Pipeline.load(d)
    with pytest.raises(EngineDirError, match=needle):
        pipe("a red circle", plan="k8-s50")
    one_line_error(*run([d, "-p", "a", "--plan", "k8-s50", "--out", tmp_path / "x.png"]), needle.split()[0])


def test_a_plan_changed_after_export_fails_its_hash(calibrated, tmp_path):
    import shutil

    d = tmp_path / "d"
    shutil.copytree(calibrated, d)
    path = d / "schedules" / "k8-s50.json"
    path.write_text(path.read_text().replace('"order": 1', '"order": 0', 1))
    one_line_error(*run([d, "-p", "a", "--plan", "k8-s50", "--out", tmp_path / "x.png"]), "schedules/k8-s50.json")


def test_adding_plans_is_atomic_and_keeps_the_others(calibrated, tmp_path):
    import shutil

    from seer.engines.manifest import open_engine_dir

    d = tmp_path / "d"
    shutil.copytree(calibrated, d)
    pipe = Pipeline.load(d)
    plan = pipe.load_plan("k8-s50")
    graphs = cal.graph_hashes(pipe.manifest)
    cal.add_plans(d, {"extra": plan}, graphs)
    manifest, _ = open_engine_dir(d, verify=True)
    assert set(manifest["schedules"]) == {"k8-s50", "k10-s50", "extra"}
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(UsageError, match="already holds a plan named 'extra'"):
        cal.add_plans(d, {"extra": plan}, graphs)
    with pytest.raises(OutputError, match="changed while it was calibrated"):
        cal.add_plans(d, {"other": plan}, {**graphs, "full": "0" * 64})
    after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # nothing half-written, no temporary left beside it
    cal.add_plans(d, {"extra": plan}, graphs, replace=True)
    assert Pipeline.load(d).load_plan("extra").full == plan.full


def test_the_manifest_names_plan_files_by_their_names(calibrated, tmp_path):
    import shutil

    d = tmp_path / "d"
    shutil.copytree(calibrated, d)
    m = json.loads((d / "manifest.json").read_text())
    m["schedules"]["k8-s50"]["file"] = "schedules/k10-s50.json"
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EngineDirError, match="schedules.k8-s50.file"):
        Pipeline.load(d)


def test_the_proxy_judge_ranks_by_the_recorded_features(engine_lite):
    """Where real runs are too dear the search never runs a cached generation: it ranks placements by
    the proxy; real runs of the calibration set then choose among its plan, TaylorSeer's placement with
    fitted weights and TaylorSeer itself, so the plan is never worse there than TaylorSeer."""
    pipe = Pipeline.load(engine_lite)
    runs = cal.calibration_runs(pipe, cal.default_conditions(pipe, 3))
    calls = []
    result = cal.calibrate(pipe, 8, 30, runs, 3, judge="proxy", max_evaluations=40,
                           progress=lambda what, total: (lambda: calls.append(what)))
    rule, ours = result.table
    assert result.judge == "proxy" and result.evaluations <= 41 and rule["plan"] == "TaylorSeer 5/1/3"
    assert ours["psnr_db"] >= rule["psnr_db"] and len(ours["full_steps"]) == 8 == len(result.plan.full_steps)
    assert ours["full_steps"] == result.plan.full_steps and ours["full_steps"][:3] == [0, 1, 2]


def test_a_class_conditional_directory_calibrates_on_classes_apart(engine_dit):
    from seer.evaluate import harness

    from types import SimpleNamespace

    from seer.evaluate import shapes

    labelled = {"model": {}, "classes": {"count": 90, "labels": {str(k): v for k, v in shapes.CLASS_LABELS.items()}}}
    picked = cal.default_conditions(SimpleNamespace(family=SimpleNamespace(conditioning="class"), manifest=labelled), 8)
    assert len(set(picked)) == 8 and not set(picked) & set(harness.default_class_ids(labelled))
    pipe = Pipeline.load(engine_dit)  # 5 classes, all in seer-eval's set: apart by their seeds only
    classes = cal.default_conditions(pipe, 3)
    runs = cal.calibration_runs(pipe, classes)
    result = cal.calibrate(pipe, 6, 20, runs, 2, judge="real", max_evaluations=15)
    assert min(r["seed"] for r in runs) >= cal.CALIBRATION_SEED
    g = pipe(class_labels=[classes[0]], plan=result.plan, seed=5)
    assert g.schedule.full_steps == result.plan.full_steps and len(g.schedule.full_steps) == 6


def test_a_rule_schedule_stored_as_a_plan_runs_bit_identically(calibrated, tmp_path):
    """TaylorSeer's and diffusers' rules are plans in the same format: written into the directory and
    run by name, each gives the very latents its interval/order/warm-up arguments give."""
    import shutil

    d = tmp_path / "d"
    shutil.copytree(calibrated, d)
    pipe = Pipeline.load(d)
    rules = {"ts-5-1-3": dict(interval=5, order=1, warmup=3),
             "diffusers-4-1-2": dict(interval=4, order=1, warmup=2, schedule_style="diffusers")}
    made = {}
    for name, kw in rules.items():
        p = pipe.plan(50, **{("style" if k == "schedule_style" else k): v for k, v in kw.items()})
        made[name] = Plan(p.full, p.order, p.coefficients, p.derive_from, name,
                          {"graphs": cal.graph_hashes(pipe.manifest)})
    cal.add_plans(d, made, cal.graph_hashes(pipe.manifest))
    pipe = Pipeline.load(d)
    for name, kw in rules.items():
        a = pipe("a blue square", seed=1, return_latents=True, **kw).latents
        b = pipe("a blue square", seed=1, return_latents=True, plan=name).latents
        np.testing.assert_array_equal(a, b)


def test_hostile_numbers_and_plan_objects_are_refused_in_one_line(calibrated, tmp_path):
    """A coefficient written as a 400-digit integer, a Plan object that forecasts step 0 or weighs an
    order the state does not hold (it would read the last request's factors), and a plan seer would
    refuse are never written by add_plans."""
    import shutil

    d = tmp_path / "d"
    shutil.copytree(calibrated, d)
    _rewrite_plan(d, "k8-s50", lambda data: next(r for r in data["coefficients"] if r).__setitem__(0, 10 ** 400))
    one_line_error(*run([d, "-p", "a", "--plan", "k8-s50", "--out", tmp_path / "x.png"]), "finite numbers")
    pipe = Pipeline.load(calibrated)
    good = pipe.load_plan("k8-s50")
    early = Plan((False, *good.full[1:]), good.order, (np.zeros(2, np.float32), *good.coefficients[1:]))
    with pytest.raises(UsageError, match="first step is not full"):
        pipe("a red circle", plan=early)
    rows = list(good.coefficients)
    i = next(k for k, c in enumerate(rows) if c is not None)
    rows[i] = np.array([1.0, 5.0], np.float32)
    stale = Plan(good.full, 0, tuple(rows))
    with pytest.raises(UsageError, match="orders the state does not hold"):
        pipe("a red circle", plan=stale)
    huge = Plan(good.full, good.order, tuple(None if c is None else c * 1e7 for c in good.coefficients))
    before = (calibrated / "manifest.json").read_bytes()
    with pytest.raises(OutputError, match="at most 1e"):
        cal.add_plans(calibrated, {"huge": huge}, cal.graph_hashes(pipe.manifest))
    assert (calibrated / "manifest.json").read_bytes() == before and not (calibrated / "schedules" / "huge.json").exists()
