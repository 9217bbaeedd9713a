"""Calibrated plans, the math: least-squares forecast weights from recorded features, and the
search for where a budget of full steps goes. No I/O here (calib/calibrate.py runs the model).

What is recorded. A `--no-cache` run gives every step's cached features: the per-module streams
(`--cache modules`) or the model output (`--cache lite`). Only their Gram matrix over steps is kept,
G[i, j] = sum over runs and recorded elements of F_i * F_j, because that is all the fit needs: for a
forecast step i predicted from the latest full steps q_0 > q_1 > ..., the least-squares weights solve
G[q, q] w = G[q, i], and the residual is G[i, i] - 2 w.G[q, i] + w.G[q, q].w. Any placement and order
is then fitted and scored from one S x S matrix, with no pass over the data. Elements are a fixed
uniform subsample of each run's features when they are many (the fit has at most 9 unknowns a step).

The fit is ridge-regularised towards Taylor's own weights (which it contains as one special case),
so near-collinear features of neighbouring steps cannot make it blow up. Weights are then mapped onto
the forecast graph's coefficient input by runtime/plan.py.

The proxy a placement is judged by when real runs are too dear: each forecast step's relative
residual, weighted by how much an error in that step's prediction moves the final latents through
the sampler (the step's own factor times the latent gains of the steps after it, the model's Jacobian
left out). Real runs, where they are cheap, judge by the decoded images against --no-cache instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..runtime.plan import Plan, coefficients_for_weights, feature_bases, weights_for_coefficients
from ..runtime.schedule import Schedule
from ..runtime.taylor import forecast_coefficients


@dataclass(frozen=True)
class Fit:
    coefficients: tuple[np.ndarray | None, ...]
    residuals: np.ndarray  # per step: the relative squared residual of the forecast (0 at full steps)


def fit(gram: np.ndarray, full: tuple[bool, ...], order: int, slots: int, ridge: float = 1e-4) -> Fit:
    """Least-squares weights for every forecast step of `full` (every full step derives), as coefficients."""
    steps = len(full)
    coefficients: list[np.ndarray | None] = []
    residuals = np.zeros(steps)
    last = None
    bases = feature_bases(full, 0, order)
    for i in range(steps):
        if full[i]:
            coefficients.append(None)
            last = i
            continue
        q, basis = bases[i]
        taylor = forecast_coefficients(i - last, len(q), len(q) - 1).astype(np.float64) @ basis
        a, b = gram[np.ix_(q, q)], gram[q, i]
        lam = ridge * max(float(np.mean(np.diag(a))), 1e-30)
        # lstsq, not solve: features that repeat exactly (or --ridge 0) leave the system singular
        w = np.linalg.lstsq(a + lam * np.eye(len(q)), b + lam * taylor, rcond=None)[0]
        residual = gram[i, i] - 2 * w @ b + w @ a @ w
        residuals[i] = max(residual, 0.0) / max(gram[i, i], 1e-30)
        coefficients.append(coefficients_for_weights(basis, w, slots))
    return Fit(tuple(coefficients), residuals)


def taylor_residuals(gram: np.ndarray, plan: Plan) -> np.ndarray:
    """The relative squared residual of a plan's own coefficients (e.g. TaylorSeer's rule) per step."""
    out = np.zeros(plan.steps)
    bases = feature_bases(plan.full, plan.derive_from, plan.order)
    for i, c in enumerate(plan.coefficients):
        if c is None:
            continue
        q, basis = bases[i]
        w = weights_for_coefficients(basis, c)
        a, b = gram[np.ix_(q, q)], gram[q, i]
        out[i] = max(gram[i, i] - 2 * w @ b + w @ a @ w, 0.0) / max(gram[i, i], 1e-30)
    return out


def proxy(residuals: np.ndarray, sensitivity: np.ndarray, gram_diag: np.ndarray) -> float:
    """The proxy's final-latent error (lower is better): sum_i s_i * sqrt(r_i * G_ii), errors taken
    as adding up (the triangle inequality's worst case, which forecast bias tends to reach)."""
    return float(np.sum(sensitivity * np.sqrt(residuals * gram_diag)))


def sensitivity(step: Callable[[int, np.ndarray, np.ndarray], None], steps: int) -> np.ndarray:
    """How much a unit error in step i's prediction moves the final latents, through the sampler alone:
    `step(i, latents, prediction)` updates latents in place. Measured on one-element arrays, so any
    sampler with an affine step (flow-match Euler, DDIM) is covered."""
    def run(i, x, p):
        latents = np.array([x], dtype=np.float32)
        step(i, latents, np.array([p], dtype=np.float32))
        return float(latents[0])

    own = np.array([run(i, 0.0, 1.0) - run(i, 0.0, 0.0) for i in range(steps)])
    gain = np.array([run(i, 1.0, 0.0) - run(i, 0.0, 0.0) for i in range(steps)])
    after = np.ones(steps)
    for i in range(steps - 2, -1, -1):
        after[i] = after[i + 1] * abs(gain[i + 1])
    return np.abs(own) * after


def placements(steps: int, budget: int, warmup: int) -> list[tuple[int, ...]]:
    """Starting placements of `budget` full steps whose first `warmup` steps are full: TaylorSeer's
    even interval, and front-loaded ones (more full steps early, where errors are amplified most:
    position ~ (j / n)**p for p above 1), each ending at the last step or short of it."""
    free = budget - warmup
    head = tuple(range(warmup))
    if free <= 0:
        return [head[:budget]]
    out = []
    span = steps - warmup  # positions warmup .. steps - 1
    interval = max(1, span // free)
    out.append(head + tuple(warmup - 1 + interval * j for j in range(1, free + 1)))
    for p in (1.0, 1.3, 1.6, 2.0, 2.5):
        for end in (steps - 1, steps - 1 - max(1, span // (2 * free))):
            last = warmup - 1
            picks = []
            for j in range(1, free + 1):
                x = warmup - 1 + (end - (warmup - 1)) * (j / free) ** p
                last = max(last + 1, int(round(x)))
                picks.append(last)
            if picks[-1] <= steps - 1:
                out.append(head + tuple(picks))
    return list(dict.fromkeys(p for p in out if len(p) == budget and p[-1] < steps))


def neighbours(placement: tuple[int, ...], warmup: int, steps: int, moves=(1, -1, 2, -2, 4, -4)):
    """Placements that move one non-warm-up full step, keeping the steps distinct and in order."""
    for j in range(warmup, len(placement)):
        low = placement[j - 1] + 1
        high = placement[j + 1] - 1 if j + 1 < len(placement) else steps - 1
        for m in moves:
            x = placement[j] + m
            if low <= x <= high:
                yield placement[:j] + (x,) + placement[j + 1:]


def full_of(placement: tuple[int, ...], steps: int) -> tuple[bool, ...]:
    chosen = set(placement)
    return tuple(i in chosen for i in range(steps))


def taylorseer_for_budget(steps: int, budget: int, warmup: int) -> Schedule | None:
    """TaylorSeer's rule with `warmup` and the smallest interval giving exactly `budget` full steps
    (None when no interval does): what a calibrated plan is measured against at the same budget."""
    for interval in range(1, steps + 1):
        s = Schedule.taylorseer(steps, interval, min(warmup, steps))
        if len(s.full_steps) == budget:
            return s
    return None


def search(score: Callable[[tuple[int, ...], int], float], steps: int, budget: int, warmup: int, orders: list[int],
           max_evaluations: int = 400, on_evaluation: Callable[[], None] = lambda: None
           ) -> tuple[tuple[int, ...], int, float, int]:
    """Local search over placements and orders: every starting placement at every order, then from the
    best one move single full steps (first improvement) until no move helps or the evaluations run
    out; then the order once more. Returns (placement, order, score, evaluations)."""
    seen: dict[tuple[tuple[int, ...], int], float] = {}

    def value(p, order):
        key = (p, order)
        if key not in seen:
            seen[key] = score(p, order)
            on_evaluation()
        return seen[key]

    best = min(((p, o) for p in placements(steps, budget, warmup) for o in orders), key=lambda k: value(*k))
    for _ in range(2):
        improved = True
        while improved and len(seen) < max_evaluations:
            improved = False
            for p in neighbours(best[0], warmup, steps):
                if len(seen) >= max_evaluations:
                    break
                if value(p, best[1]) < value(*best) - 1e-12:
                    best, improved = (p, best[1]), True
                    break
        order = min(orders, key=lambda o: value(best[0], o))
        if order == best[1]:
            break
        best = (best[0], order)
    return best[0], best[1], value(*best), len(seen)


def psnr_db(reference: np.ndarray, image: np.ndarray) -> float:
    """PSNR of images in [-1, 1] (a range of 2), capped at 100 dB for identical images."""
    err = float(np.mean((image.astype(np.float64) - reference) ** 2))
    return 100.0 if err == 0 else min(100.0, 10 * math.log10(4.0 / err))


def latent_snr_db(reference: np.ndarray, latents: np.ndarray) -> float:
    """10 log10(|reference|^2 / |latents - reference|^2), capped at 100 dB for identical latents."""
    err = float(np.sum((latents.astype(np.float64) - reference) ** 2))
    power = float(np.sum(reference.astype(np.float64) ** 2))
    return 100.0 if err == 0 else min(100.0, 10 * math.log10(max(power, 1e-30) / err))
