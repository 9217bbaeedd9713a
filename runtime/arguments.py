"""A request's arguments, checked before anything runs: a wrong type or a value outside its range
is one `UsageError` naming the argument, not a traceback from deep inside numpy or a graph.

bool is a subclass of int in Python; an integer argument refuses it (`steps=True` is a mistake,
never a count), and a flag takes only a bool.
"""

from __future__ import annotations

import math
import os
from numbers import Integral, Real
from typing import Any

from ..errors import NonFiniteError, UsageError

SEED_LIMIT = 2**32  # the noise generator is seeded with 32 bits, as torch's CPU generator
GUIDANCE_MAX = 50.0  # x 1000 inside the graphs: 50000 stays below float16's largest value, 65504
SCHEDULE_STYLES = ("taylorseer", "diffusers")


def _integer(name: str, value: Any, optional: bool = True) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise UsageError(f"{name} must be an int{' or None' if optional else ''}, not {type(value).__name__} "
                         f"({value!r})")


def _flag(name: str, value: Any) -> None:
    if not isinstance(value, bool) and type(value).__name__ != "bool_":  # numpy's bool too
        raise UsageError(f"{name} must be True or False, not {type(value).__name__} ({value!r})")


def check_load(engine_dir, backend, device, verify, cuda_graphs, expect_digest, trust_torch_programs) -> None:
    """Pipeline.load's arguments, by type (the values are checked where they are used)."""
    if not isinstance(engine_dir, (str, os.PathLike)):
        raise UsageError(f"engine_dir must be a path (str or os.PathLike), not {type(engine_dir).__name__}")
    for name, value in (("backend", backend), ("device", device)):
        if not isinstance(value, str):
            raise UsageError(f"{name} must be a string, not {type(value).__name__} ({value!r})")
    if expect_digest is not None and not isinstance(expect_digest, str):
        raise UsageError(f"expect_digest must be a 'sha256:...' string or None, not {type(expect_digest).__name__}")
    for name, value in (("verify", verify), ("cuda_graphs", cuda_graphs), ("trust_torch_programs", trust_torch_programs)):
        _flag(name, value)


def check_threads(threads) -> None:
    _integer("threads", threads)
    if threads is not None and not 1 <= threads <= 1024:
        raise UsageError(f"threads must be between 1 and 1024 (got {threads}); give the cores this pipeline may use")


MAX_PROMPT_CHARS = 100_000  # T5 reads 512 tokens (a few thousand characters)


MAX_IMAGES = 1024  # images in one request: the class labels or prompts of a batch


def check_types(prompt, seed, steps, height, width, guidance_scale, interval, order, warmup, final_full,
                schedule_style, no_cache, return_latents, on_step, class_labels=None) -> None:
    """Types first: every range check after this one may compare and do arithmetic safely."""
    if class_labels is not None:
        labels = class_labels if isinstance(class_labels, (list, tuple)) else [class_labels]
        for c in labels:
            if isinstance(c, bool) or not isinstance(c, (Integral, str)) or (isinstance(c, str) and len(c) > 1000):
                raise UsageError(f"class_labels must be class ids (int) or names (str), or a list of them; got "
                                 f"{type(c).__name__} ({str(c)[:60]!r})")
        if len(labels) > MAX_IMAGES:
            raise UsageError(f"{len(labels)} classes in one request; give at most {MAX_IMAGES}")
    if prompt is None:
        pass
    elif isinstance(prompt, (list, tuple)):
        bad = [i for i, p in enumerate(prompt) if not isinstance(p, str)]
        if bad:
            raise UsageError(f"prompt must be a string or a list of strings; item {bad[0]} is "
                             f"{type(prompt[bad[0]]).__name__} ({prompt[bad[0]]!r})")
    elif not isinstance(prompt, str):
        raise UsageError(f"prompt must be a string or a list of strings, not {type(prompt).__name__} ({prompt!r})")
    for p in [prompt] if isinstance(prompt, str) else prompt or []:
        if len(p) > MAX_PROMPT_CHARS:  # tokenized whole (to count what is cut), inside the request lock
            raise UsageError(f"a prompt of {len(p)} characters is far beyond what the text encoders read; "
                             f"give at most {MAX_PROMPT_CHARS}")
        try:
            p.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError("the prompt is not valid Unicode text (it holds a lone surrogate, e.g. from bytes "
                             "decoded with surrogateescape); pass it as UTF-8 text") from None
    for s in seed if isinstance(seed, (list, tuple)) else [seed]:
        _integer("seed", s, optional=False)
    for name, value in (("steps", steps), ("height", height), ("width", width), ("interval", interval),
                        ("order", order), ("warmup", warmup)):
        _integer(name, value)
    _integer("final_full", final_full, optional=False)
    if guidance_scale is not None and (isinstance(guidance_scale, bool) or not isinstance(guidance_scale, Real)):
        raise UsageError(f"guidance_scale must be a number or None, not {type(guidance_scale).__name__} "
                         f"({guidance_scale!r})")
    if not isinstance(schedule_style, str) or schedule_style not in SCHEDULE_STYLES:
        raise UsageError(f"schedule_style must be one of {', '.join(SCHEDULE_STYLES)}, not {schedule_style!r}")
    _flag("no_cache", no_cache)
    _flag("return_latents", return_latents)
    if on_step is not None and not callable(on_step):
        raise UsageError(f"on_step must be a function (step, full, latents) or None, not {type(on_step).__name__}")


def check_seed(seed: int | list[int], images: int) -> list[int] | None:
    """The per-image seeds of a list (None for one seed of the whole batch), each checked."""
    seeds = list(seed) if isinstance(seed, (list, tuple)) else None
    if seeds is not None and len(seeds) != images:
        raise UsageError(f"{len(seeds)} seeds for {images} images; give one seed, or one per image")
    for s in seeds or [seed]:
        if not 0 <= s < SEED_LIMIT:
            raise UsageError(f"seed {s} is outside [0, 2**32) = [0, {SEED_LIMIT - 1}]: the noise generator takes "
                             "32 bits, so larger seeds would repeat images; use a seed in that range")
    return seeds


def check_steps(steps: int, limit: int) -> None:
    if steps > limit:
        raise UsageError(f"steps must be at most {limit}, the sampler's training timesteps (got {steps}); "
                         "more steps than that only repeat timesteps")


def check_guidance(scale: float) -> None:
    """The graphs multiply guidance by 1000 in their own dtype: a NaN or Inf, or a value whose product
    overflows float16, would turn every output into NaN and the image black."""
    if not math.isfinite(scale) or scale > GUIDANCE_MAX:
        raise NonFiniteError(f"guidance scale {scale} would make the transformer's outputs non-finite (it is "
                             f"scaled by 1000 inside the graphs): use a finite scale from 0 to {GUIDANCE_MAX:g}, "
                             "e.g. --guidance 3.5")
    if scale < 0:
        raise UsageError(f"guidance scale {scale} is negative; use a scale from 0 to {GUIDANCE_MAX:g}, "
                         "e.g. --guidance 3.5")
