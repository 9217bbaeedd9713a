"""Which denoising steps run the full transformer and which are forecast.

A `Schedule` is a plain list of per-step decisions plus the one rule that decides when Taylor
derivatives may be formed. Two constructors cover the conventions users meet:

* `Schedule.taylorseer(...)` -- the TaylorSeer paper's convention (the default): the first
  `warmup` steps are full, then every `interval`-th step counted from the last warm-up step,
  i.e. for 50 steps, interval 6, warm-up 3: full at 0, 1, 2, 8, 14, ..., 44. Derivatives are only
  formed from the last warm-up step on (step >= warmup - 1), so the first-order factor appears at
  step 2 with a distance of one step.
* `Schedule.diffusers(...)` -- diffusers' `TaylorSeerCacheConfig` convention: full before
  `disable_cache_before_step`, then every step where `(step - before - 1) % interval == 0`, plus
  every step from `disable_cache_after_step` on; derivatives from the first full step on.

Both accept `final_full` (the last steps always full), which neither reference forces but which
users often want for fine detail.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError


@dataclass(frozen=True)
class Schedule:
    full: tuple[bool, ...]
    """full[i] is True when step i runs the full transformer."""
    derive_from: int = 0
    """Full steps with an index below this never form derivatives (they only refresh order 0)."""

    @property
    def steps(self) -> int:
        return len(self.full)

    @property
    def full_steps(self) -> list[int]:
        return [i for i, f in enumerate(self.full) if f]

    @property
    def ideal_speedup(self) -> float:
        """Steps per full step: the speed-up if a forecast step cost nothing."""
        return self.steps / max(1, len(self.full_steps))

    def describe(self) -> str:
        return f"{len(self.full_steps)}/{self.steps} full steps ({self.ideal_speedup:.2f}x ideal)"

    @classmethod
    def no_cache(cls, steps: int) -> Schedule:
        _check_steps(steps)
        return cls(full=(True,) * steps)

    @classmethod
    def taylorseer(cls, steps: int, interval: int = 6, warmup: int = 3, final_full: int = 0) -> Schedule:
        _check(steps, interval, warmup)
        _check_final(final_full, steps)
        full = tuple(
            i < warmup or (i - (warmup - 1)) % interval == 0 or i >= steps - final_full for i in range(steps)
        )
        return cls(full=full, derive_from=warmup - 1)

    @classmethod
    def diffusers(
        cls,
        steps: int,
        cache_interval: int = 5,
        disable_cache_before_step: int = 3,
        disable_cache_after_step: int | None = None,
    ) -> Schedule:
        _check(steps, cache_interval, disable_cache_before_step)
        if disable_cache_after_step is not None and not 0 <= disable_cache_after_step <= steps:
            raise UsageError(f"disable_cache_after_step must be between 0 and the number of steps ({steps}), got "
                             f"{disable_cache_after_step}")
        after = steps if disable_cache_after_step is None else disable_cache_after_step
        full = tuple(
            i < disable_cache_before_step
            or (i - disable_cache_before_step - 1) % cache_interval == 0
            or i >= after
            for i in range(steps)
        )
        return cls(full=full, derive_from=0)


def _check_steps(steps: int) -> None:
    if steps < 1:
        raise UsageError(f"steps must be at least 1 (got {steps}); FLUX.1-dev uses 28 to 50")


def _check(steps: int, interval: int, warmup: int) -> None:
    _check_steps(steps)
    if interval < 1:
        raise UsageError(f"interval must be at least 1 (got {interval}); 1 runs every step in full")
    if warmup < 1 or warmup > steps:
        raise UsageError(
            f"warm-up must be between 1 and the number of steps ({steps}), got {warmup}: "
            "the first step is always full because nothing can be forecast before it"
        )


def _check_final(final_full: int, steps: int) -> None:
    if final_full < 0 or final_full > steps:
        raise UsageError(f"final full steps must be between 0 and {steps} (got {final_full}); "
                         "pass --final-full in that range")
