"""seer-calibrate's work: record a directory's own --no-cache runs, fit and search a plan for a budget
of full steps (calib/plans.py), and add it to the directory in one atomic step.

Calibration runs are kept apart from evaluation: by default their prompts (or classes) are outside
seer-eval's default set and their seeds start at CALIBRATION_SEED, where evaluations use 0, 1, 2...
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import __version__
from ..errors import EngineDirError, OutputError, UsageError
from ..prompts import read_prompt_file
from ..runtime.plan import MAX_COEFFICIENT, Plan, check_name, encode_plan, graph_hashes, plan_file, plan_from_json
from . import plans

CALIBRATION_SEED = 1000
DEFAULT_SIZE = 8
MAX_ELEMENTS = 1 << 22  # recorded per run and step: 50 steps of them are 800 MiB of float32 at most
GRAM_CHUNK = 1 << 18
REAL_RUN_SECONDS = 600.0  # auto judge: real runs when a whole search of them fits in about this
EXPECTED_EVALUATIONS = 150
METHOD = "least-squares weights over the last full steps' features, local search of the placement"


@dataclass
class Recording:
    gram: np.ndarray  # steps x steps, float64
    references: list[np.ndarray]  # each run's --no-cache image, decoded in float (before 8-bit rounding)
    runs: list[dict]
    steps: int
    elements: int  # recorded per run and step
    feature_elements: int  # the features' size per run and step
    seconds: float  # the recording's wall time
    run_seconds: float  # median --no-cache denoising loop of one run


@dataclass
class Calibration:
    plan: Plan
    table: list[dict] = field(default_factory=list)
    recording: Recording | None = None
    evaluations: int = 0
    judge: str = "real"
    seconds: float = 0.0


def default_conditions(pipe, count: int) -> list[Any]:
    """`count` prompts or class ids outside seer-eval's default set: the shapes world's for the embedded
    models, calib/prompts.txt's for other text-to-image models, other classes for class-conditional ones."""
    from ..evaluate import harness, shapes

    rng = random.Random(CALIBRATION_SEED)
    if pipe.family.conditioning == "prompt":
        if pipe.manifest["model"].get("source") == "flux-tiny":
            held = {s.prompt for s in shapes.eval_specs(harness.DEFAULT_COUNT)}
            pool = [p for p in shapes.PROMPTS if p not in held]
        else:
            pool = read_prompt_file(Path(__file__).with_name("prompts.txt"))
        return rng.sample(pool, min(count, len(pool)))
    labels = harness.class_labels(pipe.manifest)
    held = set(harness.default_class_ids(pipe.manifest))
    pool = [i for i in (sorted(labels) if labels else range(int(pipe.manifest["classes"]["count"]))) if i not in held]
    return rng.sample(pool, min(count, len(pool))) if pool else sorted(held)[:count]


def calibration_runs(pipe, conditions: list[Any], seeds_per_condition: int = 1) -> list[dict]:
    from ..evaluate.harness import condition_kwargs

    kind = pipe.family.conditioning
    runs = []
    for k, c in enumerate(conditions):
        for s in range(seeds_per_condition):
            runs.append({**condition_kwargs(kind, c), "seed": CALIBRATION_SEED + k * seeds_per_condition + s})
    return runs


def record(pipe, runs: list[dict], steps: int, max_elements: int = MAX_ELEMENTS,
           progress: Callable[[], None] = lambda: None) -> Recording:
    """Every run --no-cache, with the Gram matrix of its features over steps (a fixed subsample of
    `max_elements` per step when the features are larger) and its final latents as the reference."""
    gram = np.zeros((steps, steps))
    references, loops = [], []
    t0 = time.perf_counter()
    sizes = {}
    x: np.ndarray | None = None  # steps x recorded elements, float32, reused by every run
    for run in runs:
        def tap(i, features):
            nonlocal x
            flat = features.reshape(-1)
            n = int(np.prod(features.shape))
            if n not in sizes:  # the same elements at every step and in every run of a shape
                k = min(n, max_elements)
                pick = np.sort(np.random.default_rng(CALIBRATION_SEED).choice(n, k, replace=False)) if k < n else None
                sizes[n] = (pick, None if pick is None else pipe.backend.asarray(pick))
                x = np.zeros((steps, k), dtype=np.float32)
            pick, on_device = sizes[n]
            # subsampled where the features are (a GPU's), so only the subsample crosses to the host
            x[i] = pipe.backend.numpy(flat if pick is None else flat[on_device])

        pipe.feature_tap = tap
        try:
            g = pipe(**run, steps=steps, no_cache=True, return_latents=True)
        finally:
            pipe.feature_tap = None
        for k in range(0, x.shape[1], GRAM_CHUNK):  # float64 sums without a float64 copy of it all
            part = x[:, k:k + GRAM_CHUNK].astype(np.float64)
            gram += part @ part.T
        references.append(decoded(pipe, g.latents))
        loops.append(g.timings["denoise"])
        progress()
    total = next(iter(sizes))
    kept = total if sizes[total][0] is None else len(sizes[total][0])
    return Recording(gram, references, runs, steps, kept, total, time.perf_counter() - t0, float(np.median(loops)))


def decoded(pipe, latents: np.ndarray) -> np.ndarray:
    """The image of final latents as the VAE decodes it, in [-1, 1], before 8-bit rounding: the real judge
    compares images (what users see; the decoder weighs latent errors unevenly) without the plateaus
    that rounding puts on PSNR above about 50 dB."""
    h, w = pipe.manifest["defaults"]["height"], pipe.manifest["defaults"]["width"]
    x = pipe.family.decoder_latents(latents, h, w)
    out = pipe.backend.run("vae_decoder", {"latents": pipe.backend.asarray(x, pipe.dtypes["vae"])})["image"]
    return np.asarray(pipe.backend.numpy(out), dtype=np.float64)


def check_budget(budget: int, steps: int, warmup: int) -> None:
    if budget > steps:
        raise UsageError(f"a budget of {budget} full steps is above the {steps} steps; give --budget {steps} or "
                         "fewer (or more --steps)")
    if warmup < 1:
        raise UsageError(f"warm-up must be at least 1 (got {warmup}): the first step is always full")
    if budget < warmup:
        raise UsageError(f"a budget of {budget} full steps is below the warm-up of {warmup} (the first {warmup} steps "
                         f"are always full); give --budget {warmup} or more, or a smaller --warmup")


def calibrate(pipe, budget: int, steps: int, runs: list[dict], warmup: int, judge: str = "auto", ridge: float = 1e-4,
              max_evaluations: int = 400, max_elements: int = MAX_ELEMENTS,
              progress: Callable[[str, int | None], Callable[[], None]] | None = None,
              recording: Recording | None = None) -> Calibration:
    """Record `runs` (or take `recording` of them, made for another budget), then find the plan of
    `budget` full steps (the first `warmup` of them fixed) that keeps closest to --no-cache. `judge`:
    real (score placements by cached runs of `runs`), proxy (calib/plans.py), or auto (real when a
    search of them takes about REAL_RUN_SECONDS or less)."""
    check_budget(budget, steps, warmup)
    if not runs:
        raise UsageError("no calibration prompts or classes; give at least one")
    started = time.perf_counter()
    progress = progress or (lambda what, total: (lambda: None))
    rec = recording or record(pipe, runs, steps, max_elements, progress("recording --no-cache runs", len(runs)))
    slots = pipe.cache["max_order"] + 1
    orders = list(range(pipe.cache["max_order"] + 1))
    sampling = pipe.sampler.plan(steps, pipe.family.sequence(pipe.manifest["defaults"]["height"],
                                                             pipe.manifest["defaults"]["width"])[0], "float32")
    sens = plans.sensitivity(lambda i, x, p: pipe.sampler.step(sampling, i, x, p, np.zeros_like(x), None), steps)
    diag = np.diag(rec.gram)
    if judge == "auto":
        cost = len(runs) * rec.run_seconds * budget / steps * EXPECTED_EVALUATIONS
        judge = "real" if cost <= REAL_RUN_SECONDS else "proxy"

    def plan_for(placement: tuple[int, ...], order: int) -> Plan:
        full = plans.full_of(placement, steps)
        return Plan(full, order, plans.fit(rec.gram, full, order, slots, ridge).coefficients)

    def real(plan: Plan) -> float:
        """Mean PSNR (dB) of the runs' images under `plan` against their --no-cache images."""
        return float(np.mean([plans.psnr_db(ref, decoded(pipe, pipe(**run, plan=plan, return_latents=True).latents))
                              for run, ref in zip(runs, rec.references)]))

    def score(placement, order) -> float:
        plan = plan_for(placement, order)
        if not runnable(plan):  # full steps too far apart for this order: coefficients a plan may not hold
            return math.inf
        if judge == "real":
            return -real(plan)
        full = plans.full_of(placement, steps)
        return plans.proxy(plans.fit(rec.gram, full, order, slots, ridge).residuals, sens, diag)

    tick = progress(f"budget {budget}: searching placements ({judge})", max_evaluations)
    placement, order, _, evaluations = plans.search(score, steps, budget, warmup, orders, max_evaluations, tick)
    plan = plan_for(placement, order)
    if not runnable(plan):
        raise UsageError(f"no placement of {budget} full steps in {steps} found coefficients of at most "
                         f"{MAX_COEFFICIENT:g} (the full steps are too far apart); give a larger --budget")
    chosen = {"plan": "calibrated", "full_steps": plan.full_steps, "order": order,
              "proxy": plans.proxy(plans.fit(rec.gram, plan.full, order, slots, ridge).residuals, sens, diag),
              "psnr_db": real(plan)}
    table = []
    rule_warmup = pipe.manifest["defaults"]["schedule"]["warmup"]  # the baseline: the directory's own TaylorSeer
    rule = plans.taylorseer_for_budget(steps, budget, rule_warmup)
    if rule is not None:
        default_order = min(pipe.manifest["defaults"]["schedule"]["order"], pipe.cache["max_order"])
        taylor = Plan.from_schedule(rule, default_order, slots)
        baseline = {"plan": f"TaylorSeer {_interval(rule)}/{default_order}/{rule_warmup}", "full_steps": rule.full_steps,
                    "order": default_order, "proxy": plans.proxy(plans.taylor_residuals(rec.gram, taylor), sens, diag),
                    "psnr_db": real(taylor)}
        table.append(baseline)
        if judge == "proxy":
            # The proxy leaves the model out: real runs of the calibration set choose among its plan, TaylorSeer's
            # placement with fitted weights and TaylorSeer itself, so a plan never does worse there than the rule.
            fitted = plan_for(tuple(rule.full_steps), order)
            fitted_proxy = plans.proxy(plans.fit(rec.gram, fitted.full, order, slots, ridge).residuals, sens, diag)
            options = [(chosen, plan), ({**chosen, "plan": "calibrated (TaylorSeer's placement)",
                                         "full_steps": rule.full_steps, "proxy": fitted_proxy,
                                         "psnr_db": real(fitted)}, fitted),
                       ({**baseline, "plan": "calibrated (TaylorSeer kept)"}, taylor)]
            chosen, plan = max((o for o in options if runnable(o[1])), key=lambda o: o[0]["psnr_db"])
    table.append(chosen)
    return Calibration(plan, table, rec, evaluations, judge, time.perf_counter() - started)


def runnable(plan: Plan) -> bool:
    """Coefficients a plan file may hold: finite and at most MAX_COEFFICIENT."""
    return all(c is None or (np.isfinite(c).all() and np.abs(c).max() <= MAX_COEFFICIENT) for c in plan.coefficients)


def _interval(schedule) -> int:
    fulls = schedule.full_steps
    return fulls[-1] - fulls[-2] if len(fulls) > 1 else schedule.steps


def provenance(pipe, cal: Calibration, name: str, budget: int, warmup: int, ridge: float, conditions: list) -> dict:
    rec = cal.recording
    calibrated = cal.table[-1]
    return {
        "method": METHOD, "judge": cal.judge, "budget": budget, "warmup": warmup, "ridge": ridge,
        "conditioning": pipe.family.conditioning, "conditions": [str(c) for c in conditions],
        "seeds": sorted({r["seed"] for r in rec.runs}),
        "height": pipe.manifest["defaults"]["height"], "width": pipe.manifest["defaults"]["width"],
        "recorded_elements": rec.elements, "feature_elements": rec.feature_elements,
        "metric": "mean image PSNR dB (float, before 8-bit rounding) against --no-cache on the calibration runs",
        "value": calibrated["psnr_db"],
        "baseline": cal.table[0] if len(cal.table) > 1 else None,
        "evaluations": cal.evaluations, "seconds": round(cal.seconds, 2),
        "graphs": graph_hashes(pipe.manifest), "seer": __version__,
    }


def add_plans(directory: str | Path, named: dict[str, Plan], graphs: dict[str, str], replace: bool = False,
              log: Callable[[str], None] = lambda m: None) -> dict:
    """Add plans to the directory as schedules/NAME.json, listed and hashed in the manifest, in one step:
    the directory with the plans takes the old one's place by one rename (engines/writing.py), so a
    reader sees the old directory or the new one, and a kill or a full disk leaves the old one as it was.
    The manifest is read again under the directory's lock: a plan added meanwhile by another process is
    kept, and graphs changed meanwhile refuse these plans."""
    from ..engines.manifest import read_manifest, write_manifest
    from ..engines.writing import link_files, writing_engine_dir

    directory = Path(directory)
    files = {plan_file(check_name(name)): name for name in named}
    with writing_engine_dir(directory, overwrite=True, log=log) as tmp:
        manifest = read_manifest(directory, verify=True)
        if graph_hashes(manifest) != graphs:
            raise OutputError(f"the graphs of {directory} changed while it was calibrated (re-exported or rebuilt); "
                              "calibrate it again")
        taken = sorted(set(named) & set(manifest.get("schedules", {})))
        if taken and not replace:
            raise UsageError(f"{directory} already holds a plan named {taken[0]!r}; pass --overwrite to replace it, "
                             "or choose another --name")
        link_files(directory, tmp, manifest, skip=lambda r: r in files)
        body = {k: v for k, v in manifest.items() if k not in ("schema", "schema_version", "files")}
        schedules = dict(body.get("schedules", {}))
        for rel, name in files.items():
            plan = named[name]
            data = encode_plan(Plan(plan.full, plan.order, plan.coefficients, plan.derive_from, name, plan.provenance))
            try:  # what every reader will check: a plan seer-run would refuse is never written
                plan_from_json(json.loads(data), manifest, f"plan {name}", check_graphs=False)
            except EngineDirError as e:
                raise OutputError(str(e).split("; calibrate it again")[0] + "; nothing was written") from None
            (tmp / rel).parent.mkdir(exist_ok=True)
            (tmp / rel).write_bytes(data)
            schedules[name] = {"file": rel, "steps": plan.steps, "full_steps": len(plan.full_steps),
                               "method": str(plan.provenance.get("method", ""))[:200]}
        body["schedules"] = schedules
        return write_manifest(tmp, body)
