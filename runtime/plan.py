"""Plans: per step, full or forecast, and for a forecast step the coefficient vector the forecast
graph takes. Every schedule the loop runs is a plan.

- The rule-based schedules (runtime/schedule.py: TaylorSeer's interval, diffusers' convention) become
  plans through `Plan.from_schedule`. A forecast step's coefficients are then Taylor's `k**i / i!`
  over the orders the state holds at that step.
- Calibrated plans (seer-calibrate, calib/plans.py) place their full steps anywhere. Their coefficients
  are least-squares weights over the features of the last full steps, mapped onto the Taylor factors
  (`coefficients_for_weights`). They are stored in the engine directory as `schedules/NAME.json`,
  listed in the manifest's `schedules` section and hashed like every file (docs/engine-dir.md, "Plans").

How weights over stored features map onto the factor buffers. The state keeps divided differences
of the last `valid` full steps' features: factor j is a fixed linear combination of F(q_0) .. F(q_j),
where q_0 is the latest full step and the weight on F(q_j) is never zero. A forecast step's output
`sum_j c_j factor_j` is therefore `sum_l w_l F(q_l)` for exactly one `w` per `c`, and the other way
round: a triangular solve maps each. `feature_basis` computes those combinations by running the
state itself on unit vectors, so the mapping cannot disagree with the update the loop performs.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import EngineDirError, UsageError
from .schedule import Schedule
from .taylor import TaylorState, forecast_coefficients

PLAN_FORMAT = "seer.plan"
PLAN_VERSION = 1
PLAN_DIR = "schedules"  # in the engine directory (TensorRT's engines are in plans/)
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
MAX_PLAN_BYTES = 4 * 2**20  # a 1000-step plan of order 8 is about 200 kB
MAX_COEFFICIENT = 1e6  # far above any fit; bounds what a forged plan can make the forecast compute


@dataclass(frozen=True)
class Plan:
    full: tuple[bool, ...]
    """full[i] is True when step i runs the full transformer."""
    order: int
    """The highest Taylor order the state derives (its factors 0..order)."""
    coefficients: tuple[np.ndarray | None, ...]
    """Per step: None at a full step, the forecast graph's coefficient vector (slots values) otherwise."""
    derive_from: int = 0
    """Full steps below this index refresh order 0 only (TaylorSeer's warm-up gate)."""
    name: str | None = None
    provenance: dict = field(default_factory=dict, compare=False)

    @property
    def steps(self) -> int:
        return len(self.full)

    @property
    def schedule(self) -> Schedule:
        return Schedule(full=self.full, derive_from=self.derive_from)

    @property
    def full_steps(self) -> list[int]:
        return [i for i, f in enumerate(self.full) if f]

    @classmethod
    def from_schedule(cls, schedule: Schedule, order: int, slots: int, name: str | None = None) -> Plan:
        """A rule-based schedule with Taylor's coefficients, exactly as the state ramps its orders up."""
        valid = valid_orders(schedule.full, schedule.derive_from, order)
        coefficients = []
        last = None
        for i, f in enumerate(schedule.full):
            if f:
                last = i
                coefficients.append(None)
            else:
                coefficients.append(forecast_coefficients(i - last, valid[i], slots - 1))
        return cls(schedule.full, order, tuple(coefficients), schedule.derive_from, name)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT, "version": PLAN_VERSION, "name": self.name, "steps": self.steps,
            "order": self.order, "derive_from": self.derive_from, "full_steps": self.full_steps,
            "coefficients": [None if c is None else [float(v) for v in c] for c in self.coefficients],
            "provenance": self.provenance,
        }


def valid_orders(full: tuple[bool, ...], derive_from: int, order: int) -> list[int]:
    """How many Taylor factors the state holds at each step (after that step's update, if full)."""
    state = TaylorState(order, lambda: np.zeros(1))
    out = []
    for i, f in enumerate(full):
        if f:
            state.update(i, derive=i >= derive_from)
        out.append(state.valid)
    return out


def feature_bases(full: tuple[bool, ...], derive_from: int, order: int) -> dict[int, tuple[list[int], np.ndarray]]:
    """At every forecast step: the full steps q_0 > q_1 > ... whose features the factors hold, and T
    with factor_j = sum_l T[j, l] F(q_l) (float64), found by running the state on unit vectors."""
    fulls = [i for i, f in enumerate(full) if f]
    state = TaylorState(order, lambda: np.zeros(len(fulls)))
    out, n = {}, 0
    for i, f in enumerate(full):
        if f:
            state.spare[...] = 0.0
            state.spare[n] = 1.0
            state.update(i, derive=i >= derive_from)
            n += 1
        elif n:
            used = list(range(n - 1, n - 1 - state.valid, -1))  # latest first
            basis = np.array([[state.factors[j][u] for u in used] for j in range(state.valid)], dtype=np.float64)
            out[i] = ([fulls[u] for u in used], basis)
    return out


def feature_basis(full: tuple[bool, ...], derive_from: int, order: int, step: int) -> tuple[list[int], np.ndarray]:
    """`feature_bases` at one forecast step."""
    return feature_bases(full, derive_from, order)[step]


def coefficients_for_weights(basis: np.ndarray, weights, slots: int) -> np.ndarray:
    """The forecast graph's coefficients that compute `sum_l weights[l] F(q_l)` at a forecast step whose
    factors are `basis` over its latest full steps q_l (`feature_bases`); orders it does not hold get 0."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (basis.shape[0],):
        raise ValueError(f"this step forecasts from {basis.shape[0]} full steps, got {w.shape[0]} weights")
    c = np.zeros(slots, dtype=np.float64)
    c[:len(w)] = np.linalg.solve(basis.T, w)  # sum_j c_j T[j, l] = w_l; T is triangular with a non-zero diagonal
    return c.astype(np.float32)


def weights_for_coefficients(basis: np.ndarray, coefficients) -> np.ndarray:
    """The inverse: the weights over the latest full steps' features that `coefficients` amount to."""
    return np.asarray(coefficients, dtype=np.float64)[:basis.shape[0]] @ basis


# ---------------------------------------------------------------------------------------------------
# Plans in an engine directory


def plan_file(name: str) -> str:
    return f"{PLAN_DIR}/{name}.json"


def check_name(name: str) -> str:
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
        raise UsageError(f"plan name {str(name)[:80]!r} is not a name: use 1-64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit (e.g. k10)")
    return name


def graph_hashes(manifest: dict) -> dict[str, str]:
    """The sha256 of the graphs a plan was calibrated on: its coefficients are only right for those."""
    files = manifest["files"]
    return {g: files[manifest["graphs"][g]["onnx"]]["sha256"] for g in ("full", "forecast")}


def plan_from_json(data: Any, manifest: dict, where: str, check_graphs: bool = True) -> Plan:
    """Check a plan file's content against the directory it is in, then build the Plan (`check_graphs`:
    also that it was fitted to this directory's graphs)."""
    def bad(what: str) -> EngineDirError:
        return EngineDirError(f"{where}: {what}; calibrate it again (seer-calibrate) or remove it from the directory")

    if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
        raise bad("it is not a seer plan")
    if data.get("version") != PLAN_VERSION:
        raise bad(f"plan format version {data.get('version')!r}, this seer reads version {PLAN_VERSION}")
    steps, order, derive_from = data.get("steps"), data.get("order"), data.get("derive_from", 0)
    max_order = manifest["cache"]["max_order"]
    for key, value, top in (("steps", steps, 1000), ("order", order, max_order), ("derive_from", derive_from, 1000)):
        if type(value) is not int or not 0 <= value <= top or (key == "steps" and value < 1):
            raise bad(f"{key} is {value!r}, not a whole number from {1 if key == 'steps' else 0} to {top}")
    rows = data.get("coefficients")
    if not isinstance(rows, list) or len(rows) != steps:
        raise bad(f"it has {len(rows) if isinstance(rows, list) else 'no'} coefficient rows for {steps} steps")
    slots = max_order + 1
    full = tuple(r is None for r in rows)
    if not full[0]:
        raise bad("its first step is not full (nothing can be forecast before the first full step)")
    valid = valid_orders(full, derive_from, order)
    coefficients = []
    for i, row in enumerate(rows):
        if row is None:
            coefficients.append(None)
            continue
        if (not isinstance(row, list) or len(row) != slots
                or not all(type(v) in (int, float) and abs(v) <= MAX_COEFFICIENT and math.isfinite(v) for v in row)):
            raise bad(f"step {i}'s coefficients are not {slots} finite numbers of at most {MAX_COEFFICIENT:g}")
        if any(v != 0 for v in row[valid[i]:]):  # those factor buffers hold no feature of this request
            raise bad(f"step {i} weights Taylor orders the state does not hold there (it holds {valid[i]})")
        coefficients.append(np.asarray(row, dtype=np.float32))
    if data.get("full_steps") is not None and data["full_steps"] != [i for i, f in enumerate(full) if f]:
        raise bad("its full_steps do not match its coefficient rows")
    provenance = data.get("provenance") if isinstance(data.get("provenance"), dict) else {}
    hashes = provenance.get("graphs")
    if check_graphs and hashes != graph_hashes(manifest):
        raise EngineDirError(
            f"{where} was calibrated on other graphs than this directory's (the sha256 of its full and forecast "
            "graphs differ), so its weights do not fit them; calibrate it again on this directory (seer-calibrate)")
    return Plan(full, order, tuple(coefficients), derive_from, data.get("name"), provenance)


def encode_plan(plan: Plan) -> bytes:
    return (json.dumps(plan.to_json(), indent=1, allow_nan=False) + "\n").encode()


def read_plan_bytes(data: bytes, manifest: dict, rel: str, where: str) -> Plan:
    """A plan file's bytes, checked against the sha256 the manifest holds for `rel` (so a file changed
    after the directory was opened is refused too) and then against the directory."""
    if hashlib.sha256(data).hexdigest() != manifest["files"][rel]["sha256"]:
        raise EngineDirError(f"{where} does not match its sha256 in manifest.json; the file was altered, "
                             "calibrate it again or re-export the directory")
    try:
        content = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise EngineDirError(f"{where} is not valid JSON ({str(e)[:120]}); calibrate it again") from None
    return plan_from_json(content, manifest, where)
