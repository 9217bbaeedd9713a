"""seer-bench: speed and quality of TaylorSeer schedules against the unaccelerated model, the
schedule's ideal speed-up, and what users would run instead, measured side by side in one run.

Our rows come from the quality harness (the same images give the quality and the times). On top:

- per-step cost: the median wall time of a full step and of a forecast step, taken from the
  pipeline's step callback in a cached run (the backend is synchronous on the CPU; on a GPU it is
  synchronized at each step for this measurement only);
- the ideal speed-up of a schedule, `steps / full`, and corrected for the measured forecast cost,
  `steps / (full + (steps - full) * forecast / full_cost)`; the speed-up reached as a fraction of it;
- peers on the same weights, prompts and seeds: diffusers' FluxPipeline without a cache, with its
  TaylorSeer hook at the same schedule (attention and MLP modules hooked, as ours caches), and with
  its FirstBlockCache at a few thresholds.
"""

from __future__ import annotations

import json
import resource
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np

from . import harness

FBC_THRESHOLDS = (0.05, 0.1, 0.2)


def step_costs(engine_dir: str | Path, spec: harness.ScheduleSpec, prompt: str, steps: int, backend: str,
               device: str, repeats: int = 3) -> dict[str, float]:
    """Median seconds of one full step and one forecast step of `spec` (its forecast steps exist)."""
    from ..runtime.pipeline import Pipeline

    pipe = Pipeline.load(engine_dir, backend=backend, device=device)
    costs: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(repeats + 1):  # the first run warms the graphs up
        marks: list[tuple[bool, float]] = []
        started = [time.perf_counter()]

        def on_step(i, full, latents):
            pipe.backend.synchronize()
            now = time.perf_counter()
            marks.append((full, now - started[0]))
            started[0] = now

        pipe(prompt, seed=0, steps=steps, on_step=on_step, **spec.kwargs())
        if _ > 0:
            for full, dt in marks:
                costs[full].append(dt)
    return {"full_s": statistics.median(costs[True]), "forecast_s": statistics.median(costs[False])}


def ideal(steps: int, full: float, forecast_ratio: float) -> tuple[float, float]:
    """(steps / full, the same corrected for forecast steps costing `forecast_ratio` of a full step)."""
    return steps / full, steps / (full + (steps - full) * forecast_ratio)


def peers(model_dir: Path, prompts: list[str], seeds: list[int], steps: int, spec: harness.ScheduleSpec,
          reference: dict, progress: Callable[[str], None]) -> list[dict]:
    """diffusers' FluxPipeline on the same weights: no cache, its TaylorSeer hook, its FirstBlockCache."""
    import torch
    from diffusers import FirstBlockCacheConfig, FluxPipeline, TaylorSeerCacheConfig

    pipe = FluxPipeline.from_pretrained(model_dir, dtype=torch.float32)
    size = pipe.vae.config.sample_size
    text_len = int(pipe.tokenizer_2.model_max_length)
    configs = [("diffusers", "none", None),
               ("diffusers-taylorseer", spec.label, TaylorSeerCacheConfig(
                   cache_interval=spec.interval, disable_cache_before_step=spec.warmup, max_order=spec.order,
                   taylor_factors_dtype=torch.float32,
                   cache_identifiers=[r"^transformer_blocks\.\d+\.(attn|ff)$", r"^single_transformer_blocks\.\d+\.(attn|proj_mlp)$"]))]
    configs += [("diffusers-fbcache", f"threshold {t}", FirstBlockCacheConfig(threshold=t)) for t in FBC_THRESHOLDS]
    def generate(prompt, seed):
        with torch.no_grad():
            return pipe(prompt, height=size, width=size, num_inference_steps=steps, guidance_scale=3.5,
                        max_sequence_length=text_len, generator=torch.Generator().manual_seed(seed),
                        output_type="np").images[0]

    generate(prompts[0], seeds[0])  # warm-up, not timed
    rows = []
    for method, label, config in configs:
        progress(f"{method} {label}")
        if config is not None:
            pipe.transformer.enable_cache(config)
        images, seconds = [], []
        for prompt, seed in ((p, s) for p in prompts for s in seeds):
            t0 = time.perf_counter()
            out = generate(prompt, seed)
            seconds.append(time.perf_counter() - t0)
            images.append((np.clip(out, 0, 1) * 255).round().astype(np.uint8))
        if config is not None:
            pipe.transformer.disable_cache()
        rows.append(_quality_row(method, label, prompts, seeds, images, reference, seconds))
    return rows


def _quality_row(method, label, prompts, seeds, images, reference, seconds) -> dict:
    cases = [(p, s) for p in prompts for s in seeds]
    psnr, ssim = zip(*(harness._metrics(r, im) for r, im in zip(reference["images"], images)))
    verdicts = [harness._judge(im, p) for im, (p, _) in zip(images, cases)]
    judged = [v for v in verdicts if v is not None]
    return {"method": method, "schedule": label, "full_steps": None,
            "prompt_following": sum(v.correct for v in judged) / len(judged) if judged else None,
            "psnr_db": statistics.mean(psnr), "ssim": statistics.mean(ssim),
            "generation_s": statistics.median(seconds)}


def run(engine_dirs: list[str], schedules: list[harness.ScheduleSpec], prompts: list[str], seeds: list[int],
        steps: int | None, backend: str = "onnxruntime", device: str = "cpu", with_peers: bool = True,
        progress: Callable[[str], None] = lambda m: None) -> dict:
    from ..engines.manifest import read_manifest
    from ..export.source import resolve

    schedules = [harness.ScheduleSpec(no_cache=True), *[s for s in schedules if not s.no_cache]]
    report = harness.evaluate(engine_dirs, schedules, prompts, seeds, steps=steps, backend=backend, device=device,
                              progress=progress, keep_images=True)
    steps = report["steps"]
    rows = []
    for d in engine_dirs:
        ours = [r for r in report["rows"] if r["engine_dir"] == str(d)]
        base = next(r for r in ours if r["schedule"] == "none")
        for r in ours:
            row = {"method": f"seer-{r['cache']}", "engine_dir": str(d), "schedule": r["schedule"],
                   "full_steps": r["full_steps"], "prompt_following": r["prompt_following"],
                   "psnr_db": r["psnr_db"]["mean"], "ssim": r["ssim"]["mean"],
                   "generation_s": r["seconds"]["generation_median"], "loop_s": r["seconds"]["denoise_median"]}
            row["loop_speedup"] = base["seconds"]["denoise_median"] / row["loop_s"]
            if r["schedule"] != "none":
                spec = harness.ScheduleSpec.parse(r["schedule"])
                progress(f"step costs of {r['cache']} {r['schedule']}")
                costs = step_costs(d, spec, prompts[0], steps, backend, device)
                plain, corrected = ideal(steps, r["full_steps"], costs["forecast_s"] / costs["full_s"])
                row.update(costs, ideal_speedup=plain, ideal_speedup_corrected=corrected,
                           fraction_of_ideal=row["loop_speedup"] / corrected)
            rows.append(row)
    peer_rows = []
    if with_peers:
        model = read_manifest(engine_dirs[0], verify=False)["model"]["source"]
        reference = {"images": report.pop("_reference_images")}
        spec = next((s for s in schedules if not s.no_cache), harness.ScheduleSpec.parse("6/1/3"))
        peer_rows = peers(resolve(model), prompts, seeds, steps, spec, reference, progress)
        base = peer_rows[0]["generation_s"]
        for r in peer_rows:
            r["generation_speedup"] = base / r["generation_s"]
    report.pop("_reference_images", None)
    for r in rows:
        none = next(x for x in rows if x["engine_dir"] == r["engine_dir"] and x["schedule"] == "none")
        r["generation_speedup"] = none["generation_s"] / r["generation_s"]
    return {"steps": steps, "prompts": len(prompts), "seeds": seeds, "backend": backend, "device": device,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rows": rows,
            "peers": peer_rows}


def markdown(bench: dict) -> str:
    lines = ["| method | schedule | full steps | follow % | PSNR dB | SSIM | gen ms | gen x | loop x | ideal x "
             "(corrected) | of ideal |", "|---|---|---|---|---|---|---|---|---|---|---|"]

    def fmt(v, f):
        return "" if v is None else format(v, f)

    for r in bench["rows"] + bench["peers"]:
        follow = None if r["prompt_following"] is None else 100 * r["prompt_following"]
        ideal_text = f"{r['ideal_speedup']:.2f} ({r['ideal_speedup_corrected']:.2f})" if "ideal_speedup" in r else ""
        lines.append(f"| {r['method']} | {r['schedule']} | {fmt(r['full_steps'], '.0f')} | {fmt(follow, '.1f')} | "
                     f"{fmt(min(r['psnr_db'], 99.99), '.2f')} | {r['ssim']:.4f} | {1000 * r['generation_s']:.1f} | "
                     f"{r['generation_speedup']:.2f} | {fmt(r.get('loop_speedup'), '.2f')} | {ideal_text} | "
                     f"{fmt(r.get('fraction_of_ideal') and 100 * r['fraction_of_ideal'], '.0f')}{'%' if 'fraction_of_ideal' in r else ''} |")
    lines.append(f"\n{bench['prompts']} prompts x seeds {bench['seeds']}, {bench['steps']} steps, {bench['backend']} on "
                 f"{bench['device']}; PSNR/SSIM against seer's --no-cache image; gen x: whole-pipeline speed-up "
                 f"against the same method without a cache; peak RSS {bench['peak_rss_mib']:.0f} MiB.")
    return "\n".join(lines)


def plot(bench: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    methods = {}
    for r in bench["rows"] + bench["peers"]:
        if r["psnr_db"] < harness.PSNR_CAP:
            methods.setdefault(r["method"], []).append((r["generation_speedup"], r["psnr_db"], r["schedule"]))
    for method, points in methods.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
        for x, y, label in points:
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("speed-up of the whole pipeline (x)")
    ax.set_ylabel("PSNR against --no-cache (dB)")
    ax.set_title(f"quality vs speed-up, {bench['steps']} steps, {bench['backend']} {bench['device']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write(bench: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps(bench, indent=1) + "\n")
    (out_dir / "bench.md").write_text(markdown(bench) + "\n")
    plot(bench, out_dir / "bench.png")
