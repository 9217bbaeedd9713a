"""The quality harness: how closely an accelerated schedule keeps to the unaccelerated model.

For a fixed prompt set and seeds, every (engine directory, schedule) row generates each image once
(batch 1, so an image depends only on its prompt and seed) and reports:

- prompt following: the shapes-world judge's accuracy (all four attributes right) and per attribute,
  for prompts of that world (None for other prompts);
- fidelity: PSNR and SSIM (scikit-image) of each image against the `--no-cache` image of the same
  prompt and seed from the first engine directory; identical images count as PSNR_CAP dB;
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
    """`none` (every step full) or [diffusers:]interval/order/warm-up[/final full steps]; the
    `diffusers:` prefix places the full steps as diffusers' TaylorSeerCacheConfig does."""

    no_cache: bool = False
    interval: int | None = None
    order: int | None = None
    warmup: int | None = None
    final_full: int = 0
    style: str = "taylorseer"

    @classmethod
    def parse(cls, text: str) -> "ScheduleSpec":
        text = text.strip().lower()
        if text in ("none", "no-cache", "full"):
            return cls(no_cache=True)
        style, _, body = text.rpartition(":")
        parts = body.split("/")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            values = []
        if not 3 <= len(values) <= 4 or style not in ("", "taylorseer", "diffusers"):
            raise UsageError(f"cannot read schedule {text!r}: write 'none' or [diffusers:]INTERVAL/ORDER/WARMUP"
                             "[/FINAL_FULL], e.g. 6/1/3")
        return cls(False, *values, style=style or "taylorseer")

    @property
    def label(self) -> str:
        if self.no_cache:
            return "none"
        tail = f"/{self.final_full}" if self.final_full else ""
        head = "diffusers:" if self.style == "diffusers" else ""
        return f"{head}{self.interval}/{self.order}/{self.warmup}{tail}"

    def kwargs(self) -> dict:
        if self.no_cache:
            return {"no_cache": True}
        return {"interval": self.interval, "order": self.order, "warmup": self.warmup, "final_full": self.final_full,
                "schedule_style": self.style}


def load_prompts(count: int | None = None, prompt_file: str | Path | None = None) -> list[str]:
    """The shapes world's balanced evaluation prompts, or the non-empty lines of a file."""
    if prompt_file is None:
        if count is not None and not 1 <= count <= len(shapes.ALL_SPECS):
            raise UsageError(f"--prompts must be between 1 and {len(shapes.ALL_SPECS)} (got {count})")
        return [s.prompt for s in shapes.eval_specs(count or 36)]
    prompts = read_prompt_file(prompt_file)
    return prompts[:count] if count else prompts


def _metrics(reference: np.ndarray, image: np.ndarray) -> tuple[float, float]:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    if np.array_equal(reference, image):
        return PSNR_CAP, 1.0
    psnr = min(PSNR_CAP, float(peak_signal_noise_ratio(reference, image, data_range=255)))
    ssim = float(structural_similarity(reference, image, channel_axis=-1, data_range=255))
    return psnr, ssim


def _judge(image: np.ndarray, prompt: str):
    try:
        spec = shapes.parse(prompt)
    except ValueError:
        return None
    return shapes.judge(image, spec)


def evaluate(
    engine_dirs: list[str | Path],
    schedules: list[ScheduleSpec],
    prompts: list[str],
    seeds: list[int],
    steps: int | None = None,
    backend: str = "onnxruntime",
    device: str = "cpu",
    image_dir: str | Path | None = None,
    progress: Callable[[str], None] = lambda message: None,
    keep_images: bool = False,
    judge: bool = True,
    trust_torch_programs: bool = False,
) -> dict:
    """Runs every (engine directory, schedule) row and returns the report (JSON-ready; with
    `keep_images`, also `_reference_images`: the --no-cache images, for callers that compare more).
    `judge=False` skips prompt following (for random-weight models, whose images follow nothing)."""
    from ..runtime.pipeline import Pipeline

    if not engine_dirs:
        raise UsageError("give at least one engine directory")
    if not schedules:
        raise UsageError("give at least one schedule (--schedule none, --schedule 6/1/3, ...)")
    if not seeds:
        raise UsageError("give at least one seed")
    pipes = [Pipeline.load(d, backend=backend, device=device, trust_torch_programs=trust_torch_programs)
             for d in engine_dirs]
    cases = [(p, s) for p in prompts for s in seeds]
    out_dir = Path(image_dir) if image_dir else None

    def generate(pipe: Pipeline, spec: ScheduleSpec, tag: str):
        images, full, totals, loops = [], [], [], []
        for k, (prompt, seed) in enumerate(cases):
            g = pipe(prompt, seed=seed, steps=steps, **spec.kwargs())
            image = np.asarray(g.image)
            images.append(image)
            full.append(len(g.schedule.full_steps))
            totals.append(g.timings["total"])
            loops.append(g.timings["denoise"])
            if out_dir is not None:
                (out_dir / tag).mkdir(parents=True, exist_ok=True)
                g.image.save(out_dir / tag / f"{k:03d}-seed{seed}.png")
        return images, full, totals, loops

    # Warm up every graph (the forecast one too) so that no row pays for first-run allocation.
    for pipe in pipes:
        pipe.warmup(cases[0][0])

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
            rows.append(_row(d, granularity, spec, cases, reference[0], *result, judge))
    extra = {"_reference_images": reference[0]} if keep_images else {}
    return {
        **extra,
        "prompts": len(prompts), "seeds": list(seeds), "images_per_row": len(cases),
        "steps": steps or pipes[0].manifest["defaults"]["steps"], "backend": backend, "device": device,
        "reference": {"engine_dir": str(engine_dirs[0]), "schedule": "none"},
        "psnr_cap_db": PSNR_CAP, "rows": rows,
    }


def quality(cases: list[tuple[str, int]], ref_images: list[np.ndarray], images: list[np.ndarray],
            judge: bool = True) -> dict:
    """Prompt following (when `judge`) and PSNR/SSIM against the reference, over a row's images."""
    psnr, ssim = zip(*(_metrics(r, im) for r, im in zip(ref_images, images)))
    verdicts = [_judge(im, p) if judge else None for im, (p, _) in zip(images, cases)]
    judged = [v for v in verdicts if v is not None]
    accuracy = attributes = None
    if judged:
        accuracy = sum(v.correct for v in judged) / len(judged)
        attributes = {k: sum(v.attributes[k] for v in judged) / len(judged) for k in ("size", "colour", "shape", "place")}
    return {
        "prompt_following": accuracy, "attributes": attributes, "judged": len(judged),
        "psnr_db": {"mean": statistics.mean(psnr), "min": min(psnr)},
        "ssim": {"mean": statistics.mean(ssim), "min": min(ssim)},
        "images": [{"prompt": p, "seed": s, "psnr_db": a, "ssim": b, "judge": v.as_dict() if v else None}
                   for (p, s), a, b, v in zip(cases, psnr, ssim, verdicts)],
    }


def _row(engine_dir, granularity, spec, cases, ref_images, images, full, totals, loops, judge) -> dict:
    q = quality(cases, ref_images, images, judge)
    return {
        "engine_dir": str(engine_dir), "cache": granularity, "schedule": spec.label,
        "full_steps": statistics.mean(full), **{k: v for k, v in q.items() if k != "images"},
        "seconds": {"generation_median": statistics.median(totals), "denoise_median": statistics.median(loops)},
        "images": q["images"],
    }


def table(report: dict) -> str:
    """The report's rows as a fixed-width text table."""
    width = max(len("engine"), *(len(Path(r["engine_dir"]).name) for r in report["rows"])) + 2
    head = f"{'engine':<{width}}{'cache':<8}{'schedule':<11}{'full':>6}{'follow %':>10}{'PSNR dB':>9}{'min':>7}{'SSIM':>8}{'min':>7}" \
           f"{'gen ms':>9}{'loop ms':>9}"
    lines = [head, "-" * len(head)]
    for r in report["rows"]:
        follow = "n/a" if r["prompt_following"] is None else f"{100 * r['prompt_following']:.1f}"
        lines.append(
            f"{Path(r['engine_dir']).name:<{width}}{r['cache']:<8}{r['schedule']:<11}{r['full_steps']:>6.1f}{follow:>10}{r['psnr_db']['mean']:>9.2f}"
            f"{r['psnr_db']['min']:>7.2f}{r['ssim']['mean']:>8.4f}{r['ssim']['min']:>7.3f}"
            f"{1000 * r['seconds']['generation_median']:>9.1f}{1000 * r['seconds']['denoise_median']:>9.1f}")
    lines.append(f"{report['images_per_row']} images per row ({report['prompts']} prompts x seeds "
                 f"{report['seeds']}), {report['steps']} steps; PSNR/SSIM against --no-cache "
                 f"(identical = {report['psnr_cap_db']:.0f} dB)")
    return "\n".join(lines)
