"""The quality harness: how closely an accelerated schedule keeps to the unaccelerated model.

A run generates from *conditions* of one kind, the kind its engine directories take: prompts for
text-to-image models (FLUX), class ids for class-conditional ones (DiT). For a fixed condition set and
seeds, every (engine directory, schedule) row generates each image once (batch 1, so an image depends
only on its condition and seed) and reports:

- prompt or class following: the shapes-world judge's accuracy (all four attributes right) and per
  attribute, for prompts of that world and for classes whose label names a shapes-world class (size
  left open); None for any other condition;
- fidelity: PSNR and SSIM (scikit-image) of each image against the `--no-cache` image of the same
  condition and seed from the first engine directory; identical images count as PSNR_CAP dB;
- cost: full steps per image, and the median wall time of a generation and of its denoising loop.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import UsageError
from ..prompts import read_prompt_file
from . import shapes

PSNR_CAP = 100.0  # dB for identical images, so that means and JSON stay finite


@dataclass(frozen=True)
class ScheduleSpec:
    """`none` (every step full), [diffusers:]interval/order/warm-up[/final full steps] (the `diffusers:`
    prefix places the full steps as diffusers' TaylorSeerCacheConfig does), or `plan:NAME`, a plan
    the engine directory holds (seer-calibrate)."""

    no_cache: bool = False
    interval: int | None = None
    order: int | None = None
    warmup: int | None = None
    final_full: int = 0
    style: str = "taylorseer"
    plan: str | None = None

    @classmethod
    def parse(cls, text: str) -> "ScheduleSpec":
        text = text.strip()
        if text.lower().startswith("plan:"):
            from ..runtime.plan import check_name

            return cls(plan=check_name(text[5:].strip()))
        text = text.lower()
        if text in ("none", "no-cache", "full"):
            return cls(no_cache=True)
        style, _, body = text.rpartition(":")
        parts = body.split("/")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            values = []
        if not 3 <= len(values) <= 4 or style not in ("", "taylorseer", "diffusers"):
            raise UsageError(f"cannot read schedule {text!r}: write 'none', [diffusers:]INTERVAL/ORDER/WARMUP"
                             "[/FINAL_FULL] (e.g. 6/1/3) or plan:NAME")
        return cls(False, *values, style=style or "taylorseer")

    @property
    def label(self) -> str:
        if self.no_cache:
            return "none"
        if self.plan is not None:
            return f"plan:{self.plan}"
        tail = f"/{self.final_full}" if self.final_full else ""
        head = "diffusers:" if self.style == "diffusers" else ""
        return f"{head}{self.interval}/{self.order}/{self.warmup}{tail}"

    def kwargs(self) -> dict:
        if self.no_cache:
            return {"no_cache": True}
        if self.plan is not None:
            return {"plan": self.plan}
        return {"interval": self.interval, "order": self.order, "warmup": self.warmup, "final_full": self.final_full,
                "schedule_style": self.style}


# conditioning kind (a family's `conditioning`) -> its plural, as reports and options say it
NOUNS = {"prompt": "prompts", "class": "classes"}
DEFAULT_COUNT = 36


def condition_kwargs(kind: str, condition) -> dict:
    """The Pipeline arguments for one image of `condition`: a prompt, or a class id or name."""
    return {"prompt": condition} if kind == "prompt" else {"class_labels": [condition]}


@dataclass(frozen=True)
class Conditions:
    """What a run generates from, one image per condition and seed: prompts for a text-to-image model
    (FLUX), class ids for a class-conditional one (DiT); each with its text (the prompt, or the class's
    label) and the shapes-world Spec the judge holds its images to (None: fidelity only)."""

    kind: str  # "prompt" | "class"
    values: tuple  # prompts (str) or class ids (int)
    texts: tuple[str, ...]
    targets: tuple  # shapes.Spec | None for each

    @property
    def plural(self) -> str:
        return NOUNS[self.kind]

    @property
    def following(self) -> str:
        """The report's key for the judge's accuracy: prompt_following or class_following."""
        return f"{self.kind}_following"

    def kwargs(self, k: int) -> dict:
        return condition_kwargs(self.kind, self.values[k])

    def describe(self, k: int) -> dict:
        if self.kind == "prompt":
            return {"prompt": self.values[k]}
        return {"class": self.values[k], "label": self.texts[k]}

    def warm(self, pipe) -> None:
        """Every graph once, on the first prompt (a class-conditional Pipeline picks its own class)."""
        pipe.warmup(*([self.values[0]] if self.kind == "prompt" else []))


def load_prompts(count: int | None = None, prompt_file: str | Path | None = None) -> list[str]:
    """The shapes world's balanced evaluation prompts, or the non-empty lines of a file."""
    if prompt_file is None:
        if count is not None and not 1 <= count <= len(shapes.ALL_SPECS):
            raise UsageError(f"--prompts must be between 1 and {len(shapes.ALL_SPECS)} (got {count})")
        return [s.prompt for s in shapes.eval_specs(count or DEFAULT_COUNT)]
    prompts = read_prompt_file(prompt_file)
    return prompts[:count] if count else prompts


def load_class_file(path: str | Path, count: int | None = None) -> list[str]:
    """The classes of a file, one id or name a line (resolved against the model's labels when it loads)."""
    classes = read_prompt_file(path, "class file", "class id or name", "classes")
    return classes[:count] if count else classes


def class_labels(manifest: dict) -> dict[int, str]:
    """A class-conditional directory's labels, id -> label (empty when the model has none)."""
    return {int(k): str(v) for k, v in manifest.get("classes", {}).get("labels", {}).items()}


def default_class_ids(manifest: dict, count: int | None = None, default: int = DEFAULT_COUNT) -> list[int]:
    """`count` classes (`default` when None, or all of them when the model has fewer): the shapes world's
    balanced class set when the labels are the shapes world's (dit-tiny), else the first labelled ids
    (the first ids when the model has no labels)."""
    labels = class_labels(manifest)
    if labels == shapes.CLASS_LABELS:
        pool = len(shapes.CLASSES)
    else:
        pool = len(labels) if labels else int(manifest["classes"]["count"])
    if count is not None and not 1 <= count <= pool:
        raise UsageError(f"--classes must be between 1 and {pool}, the classes this model has"
                         f"{' labels for' if labels else ''} (got {count})")
    n = min(count or default, pool)
    if labels == shapes.CLASS_LABELS:
        return shapes.class_eval_ids(n)
    return sorted(labels)[:n] if labels else list(range(n))


_SHAPES_CLASSES = {label: shapes.CLASSES[i] for i, label in shapes.CLASS_LABELS.items()}


def class_spec(label: str) -> shapes.Spec | None:
    """The shapes-world class a label names (any of its comma-separated synonyms), size left open."""
    for name in label.split(","):
        spec = _SHAPES_CLASSES.get(" ".join(name.lower().split()))
        if spec is not None:
            return spec
    return None


def _prompt_spec(prompt: str) -> shapes.Spec | None:
    try:
        return shapes.parse(prompt)
    except ValueError:
        return None


def conditions_for(pipe, given: list | None = None, count: int | None = None,
                   default_count: int = DEFAULT_COUNT) -> Conditions:
    """The conditions a run on `pipe`'s kind of model generates from: the first `count` of `given`
    (prompts, or class ids and names, which the model's labels resolve), or `count` of the default set
    (`default_count` when None, classes: all of them when the model has fewer)."""
    kind = pipe.family.conditioning
    if kind == "prompt":
        if given is None:
            prompts = load_prompts(count or min(default_count, len(shapes.ALL_SPECS)))
        else:
            prompts = [str(p) for p in given][:count or None]
        return Conditions(kind, tuple(prompts), tuple(prompts), tuple(_prompt_spec(p) for p in prompts))
    if given is not None:
        ids = [pipe.family.class_id(c) for c in list(given)[:count or None]]
    else:
        ids = default_class_ids(pipe.manifest, count, default_count)
    labels = class_labels(pipe.manifest)
    texts = tuple(labels.get(i, "") for i in ids)
    return Conditions(kind, tuple(ids), texts, tuple(class_spec(t) for t in texts))


def conditioning_of(engine_dirs: list[str | Path]) -> tuple[str, str | None]:
    """(the conditioning kind, the first directory's model family) of engine directories, which must all
    take the same kind: quality compares images of the same prompts or classes. Unknown families are
    left to Pipeline.load to name."""
    from ..engines.manifest import read_manifest
    from ..runtime.families import FAMILIES

    kinds: dict[str, list[str]] = {}
    first = None
    for d in engine_dirs:
        family = read_manifest(d, verify=False)["model"].get("family")
        first = first or family
        if family in FAMILIES:
            kinds.setdefault(FAMILIES[family].conditioning, []).append(f"{Path(d).name} ({family})")
    if len(kinds) > 1:
        takes = "; ".join(f"{', '.join(dirs)} {'takes' if len(dirs) == 1 else 'take'} "
                          f"{'prompts' if k == 'prompt' else 'class labels'}" for k, dirs in kinds.items())
        raise UsageError(f"these engine directories take different conditions ({takes}), and images are compared on "
                         "the same prompts or classes: pass directories of one kind, one run per kind")
    return next(iter(kinds), "prompt"), first


def _metrics(reference: np.ndarray, image: np.ndarray) -> tuple[float, float]:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    if np.array_equal(reference, image):
        return PSNR_CAP, 1.0
    psnr = min(PSNR_CAP, float(peak_signal_noise_ratio(reference, image, data_range=255)))
    ssim = float(structural_similarity(reference, image, channel_axis=-1, data_range=255))
    return psnr, ssim


def evaluate(
    engine_dirs: list[str | Path],
    schedules: list[ScheduleSpec],
    conditions: Conditions | list | None,
    seeds: list[int],
    steps: int | None = None,
    backend: str = "onnxruntime",
    device: str = "cpu",
    image_dir: str | Path | None = None,
    progress: Callable[[str], None] = lambda message: None,
    keep_images: bool = False,
    judge: bool = True,
    trust_torch_programs: bool = False,
    count: int | None = None,
    guidance: float | None = None,
    default_count: int = DEFAULT_COUNT,
) -> dict:
    """Runs every (engine directory, schedule) row and returns the report (JSON-ready; with
    `keep_images`, also `_reference_images`, the --no-cache images, and `_conditions`, for callers
    that compare more). `conditions`: prompts for text-to-image directories, class ids or names for
    class-conditional ones, or None for the default set of `count` or `default_count` (`conditions_for`).
    `judge=False` skips prompt and class following (for random-weight models, whose images follow
    nothing). `guidance`: the guidance scale [default: the first directory's]."""
    from ..runtime.pipeline import Pipeline

    if not engine_dirs:
        raise UsageError("give at least one engine directory")
    if not schedules:
        raise UsageError("give at least one schedule (--schedule none, --schedule 6/1/3, ...)")
    if not seeds:
        raise UsageError("give at least one seed")
    conditioning_of(engine_dirs)  # one kind, refused before anything loads
    pipes = [Pipeline.load(d, backend=backend, device=device, trust_torch_programs=trust_torch_programs)
             for d in engine_dirs]
    for pipe in pipes:  # a plan a directory lacks, or made for other steps, is refused before any image
        for spec in schedules:
            if spec.plan is not None:
                pipe.plan(steps or pipe.manifest["defaults"]["steps"], plan=spec.plan)
    items = (conditions if isinstance(conditions, Conditions)
             else conditions_for(pipes[0], conditions, count, default_count))
    cases = [(k, s) for k in range(len(items.values)) for s in seeds]
    extra_kwargs = {} if guidance is None else {"guidance_scale": guidance}
    out_dir = Path(image_dir) if image_dir else None

    def generate(pipe: Pipeline, spec: ScheduleSpec, tag: str):
        images, full, totals, loops = [], [], [], []
        for n, (k, seed) in enumerate(cases):
            g = pipe(**items.kwargs(k), seed=seed, steps=steps, **extra_kwargs, **spec.kwargs())
            image = np.asarray(g.image)
            images.append(image)
            full.append(len(g.schedule.full_steps))
            totals.append(g.timings["total"])
            loops.append(g.timings["denoise"])
            if out_dir is not None:
                (out_dir / tag).mkdir(parents=True, exist_ok=True)
                g.image.save(out_dir / tag / f"{n:03d}-seed{seed}.png")
        return images, full, totals, loops

    # Warm up every graph (the forecast one too) so that no row pays for first-run allocation.
    for pipe in pipes:
        items.warm(pipe)

    progress("reference: --no-cache on " + str(engine_dirs[0]))
    reference = generate(pipes[0], ScheduleSpec(no_cache=True), "reference")
    rows = []
    for d, pipe in zip(engine_dirs, pipes):
        granularity = pipe.cache["granularity"]
        for spec in schedules:
            if spec.no_cache and pipe is pipes[0]:
                result = reference
            else:
                progress(f"{granularity} {spec.label} on {d}")
                result = generate(pipe, spec, f"{Path(d).name}-{granularity}-{spec.label.replace('/', '_')}")
            rows.append(_row(d, granularity, spec, items, cases, reference[0], *result, judge))
    extra = {"_reference_images": reference[0], "_conditions": items} if keep_images else {}
    defaults = pipes[0].manifest["defaults"]
    return {
        **extra,
        "conditioning": items.kind, items.plural: len(items.values), "seeds": list(seeds),
        "images_per_row": len(cases), "steps": steps or defaults["steps"],
        "guidance_scale": defaults["guidance_scale"] if guidance is None else guidance,
        "backend": backend, "device": device,
        "reference": {"engine_dir": str(engine_dirs[0]), "schedule": "none"},
        "psnr_cap_db": PSNR_CAP, "rows": rows,
    }


def quality(items: Conditions, cases: list[tuple[int, int]], ref_images: list[np.ndarray], images: list[np.ndarray],
            judge: bool = True) -> dict:
    """Prompt or class following (when `judge`) and PSNR/SSIM against the reference, over a row's
    images; `cases` are (index into `items`, seed) in the images' order."""
    psnr, ssim = zip(*(_metrics(r, im) for r, im in zip(ref_images, images)))
    verdicts = [shapes.judge(im, items.targets[k]) if judge and items.targets[k] is not None else None
                for im, (k, _) in zip(images, cases)]
    judged = [v for v in verdicts if v is not None]
    accuracy = attributes = None
    if judged:
        accuracy = sum(v.correct for v in judged) / len(judged)
        attributes = {k: sum(v.attributes[k] for v in judged) / len(judged) for k in ("size", "colour", "shape", "place")}
    return {
        items.following: accuracy, "attributes": attributes, "judged": len(judged),
        "psnr_db": {"mean": statistics.mean(psnr), "min": min(psnr)},
        "ssim": {"mean": statistics.mean(ssim), "min": min(ssim)},
        "images": [{**items.describe(k), "seed": s, "psnr_db": a, "ssim": b, "judge": v.as_dict() if v else None}
                   for (k, s), a, b, v in zip(cases, psnr, ssim, verdicts)],
    }


def _row(engine_dir, granularity, spec, items, cases, ref_images, images, full, totals, loops, judge) -> dict:
    q = quality(items, cases, ref_images, images, judge)
    return {
        "engine_dir": str(engine_dir), "cache": granularity, "schedule": spec.label,
        "full_steps": statistics.mean(full), **{k: v for k, v in q.items() if k != "images"},
        "seconds": {"generation_median": statistics.median(totals), "denoise_median": statistics.median(loops)},
        "images": q["images"],
    }


# the following column's header per conditioning kind
FOLLOW_HEADER = {"prompt": "follow %", "class": "class follow %"}


def table(report: dict) -> str:
    """The report's rows as a fixed-width text table."""
    kind = report.get("conditioning", "prompt")
    follow_head = FOLLOW_HEADER[kind]
    follow_width = len(follow_head) + 2
    width = max(len("engine"), *(len(Path(r["engine_dir"]).name) for r in report["rows"])) + 2
    head = f"{'engine':<{width}}{'cache':<8}{'schedule':<11}{'full':>6}{follow_head:>{follow_width}}" \
           f"{'PSNR dB':>9}{'min':>7}{'SSIM':>8}{'min':>7}{'gen ms':>9}{'loop ms':>9}"
    lines = [head, "-" * len(head)]
    for r in report["rows"]:
        following = r[f"{kind}_following"]
        follow = "n/a" if following is None else f"{100 * following:.1f}"
        lines.append(
            f"{Path(r['engine_dir']).name:<{width}}{r['cache']:<8}{r['schedule']:<11}{r['full_steps']:>6.1f}"
            f"{follow:>{follow_width}}{r['psnr_db']['mean']:>9.2f}"
            f"{r['psnr_db']['min']:>7.2f}{r['ssim']['mean']:>8.4f}{r['ssim']['min']:>7.3f}"
            f"{1000 * r['seconds']['generation_median']:>9.1f}{1000 * r['seconds']['denoise_median']:>9.1f}")
    plural = NOUNS[kind]
    lines.append(f"{report['images_per_row']} images per row ({report[plural]} {plural} x seeds "
                 f"{report['seeds']}), {report['steps']} steps; PSNR/SSIM against --no-cache "
                 f"(identical = {report['psnr_cap_db']:.0f} dB)")
    return "\n".join(lines)
