"""TaylorSeer's feature forecasting: the one place its formula lives.

At a full step the transformer's cached features F are turned into Taylor factors by finite
differences over step indices, with d the distance (in steps) to the previous full step:

    new[0] = F,   new[i+1] = (new[i] - old[i]) / d     for i < min(valid orders of old, order)

so factor i approximates the i-th derivative (in step units). An order is only formed when the
previous full step held the order below it, so the available order ramps up one full step at a
time (this is what the official implementation does, and it changes the numbers: zero-filling
missing orders would form `new[i+1]` against a zero). At a forecast step k steps after the last
full step the features are predicted as

    F_hat = sum_i factor[i] * k**i / i!     over the valid orders.

`forecast_coefficients` gives the per-order weights the forecast graphs take as an input (0 for
orders not yet valid), `forecast` applies them (export traces it into the graphs), and
`TaylorState` keeps the factors in the backend's device buffers and updates them in place. All
three work on numpy arrays and torch tensors alike.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np


def forecast_coefficients(k: int, valid_orders: int, max_order: int) -> np.ndarray:
    """Weights `k**i / i!` for i < valid_orders, 0 for the other orders up to max_order."""
    c = np.zeros(max_order + 1, dtype=np.float32)
    for i in range(min(valid_orders, max_order + 1)):
        c[i] = k**i / math.factorial(i)
    return c


def forecast(factors: Sequence[Any], coefficients: Any) -> Any:
    """sum_i coefficients[i] * factors[i]; traced into the forecast graphs at export time."""
    out = factors[0] * coefficients[0]
    for i in range(1, len(factors)):
        out = out + factors[i] * coefficients[i]
    return out


class TaylorState:
    """Taylor factors of one request, kept in device buffers and updated in place.

    Holds `order + 1` factor buffers and one spare buffer that the next full step writes its
    features into. An update never allocates or copies to the host: the differences are formed
    in place and the buffers are re-labelled (swapped), so the full path's output buffer becomes
    factor 0 and the displaced buffer becomes the next spare.
    """

    def __init__(self, order: int, allocate: Callable[[], Any], slots: int | None = None):
        """`allocate` returns one zeroed device buffer; `slots` (>= order + 1) is how many factors
        the forecast graph takes, the ones above `order` stay zero-weighted."""
        if order < 0:
            raise ValueError("order must be >= 0")
        self.order = order
        self.factors = [allocate() for _ in range(max(order + 1, slots or 0))]
        self.spare = allocate()
        self.reset()

    def reset(self) -> None:
        """Forget everything: a new request must never see the last one's factors."""
        self.valid = 0
        self.last_full_step: int | None = None

    def update(self, step: int, derive: bool = True) -> None:
        """Fold the features written into `self.spare` at full step `step` into the factors.

        `derive=False` refreshes order 0 only (the official warm-up gate).
        """
        if self.last_full_step is not None and step <= self.last_full_step:
            raise ValueError(f"full steps must increase (got {step} after {self.last_full_step})")
        orders = min(self.valid, self.order) if (derive and self.last_full_step is not None) else 0
        d = float(step - self.last_full_step) if orders else 1.0
        cur = self.spare
        for i in range(orders):
            old = self.factors[i]
            old -= cur  # old_i - new_i
            old /= -d  # (new_i - old_i) / d = new_{i+1}
            self.factors[i], cur = cur, old
        self.factors[orders], self.spare = cur, self.factors[orders]
        self.valid = orders + 1
        self.last_full_step = step

    def coefficients(self, step: int) -> np.ndarray:
        if self.last_full_step is None:
            raise ValueError("cannot forecast before the first full step")
        return forecast_coefficients(step - self.last_full_step, self.valid, len(self.factors) - 1)
