"""seer-bench: speed and quality of TaylorSeer schedules against the unaccelerated model, the
schedule's ideal speed-up, and what users would run instead, measured side by side in one run.

Three phases, all on the same weights, conditions (prompts for FLUX, classes for DiT) and seeds:

1. quality: the harness generates every condition and seed once per row (ours: `--no-cache` and each
   schedule for every engine directory; peers: diffusers' own pipeline on the same weights, see
   `Peers`) and scores it against seer's `--no-cache` images;
2. time: every pipeline is loaded and warmed up, then `repeats` rounds each run every row once on
   the first condition, in the same order, so that slow drifts of the machine reach every row alike;
   a row's time is its median over the rounds. Our rows also time each step (the backend is
   synchronous on the CPU; on a GPU one more round synchronizes at each step for this only): the
   median full step and forecast step give the ideal speed-up of a schedule, `steps / full`, and
   the same corrected for what forecast steps cost, `steps / (full + (steps - full) * forecast /
   full_step)`; the loop speed-up reached is reported as a fraction of the corrected ideal;
3. memory: each row runs once more in a fresh process (load, one image), which reports its peak
   resident memory and, on a GPU, the device memory it held.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import UsageError
from . import harness
from .peak import peak_rss_mib

FBC_THRESHOLDS = (0.05, 0.1, 0.2, 0.4)
DEFAULT_COUNT = 8  # prompts or classes for the quality numbers (classes: all when the model has fewer)
Progress = Callable[[str], None]
# Our schedules when none are given, per model family: TaylorSeer's FLUX settings; for DiT,
# TaylorSeer-DiT's own (interval 4, order 2, 2 warm-up steps) and two around it.
DEFAULT_SCHEDULES = {"flux": ("6/1/3", "4/2/3", "3/1/3"), "dit": ("4/2/2", "6/1/3", "4/2/3")}
# diffusers' pipeline per model family, and whether its cache hooks (TaylorSeer, FirstBlockCache) run on
# it. Not on DiT, in diffusers 0.42.1: DiTTransformer2DModel has no CacheMixin (no enable_cache), and
# hooks applied by hand (apply_taylorseer_cache, apply_first_block_cache) fail at the first step, "No cache
# context is set", because DiTPipeline calls the transformer outside any cache_context. DiT gets the
# no-cache peer only.
PEER_PIPELINES = {"flux": ("FluxPipeline", True), "dit": ("DiTPipeline", False)}
NO_HOOKS_NOTE = ("diffusers' TaylorSeer and FirstBlockCache hooks do not run on {pipeline} (its transformer has no "
                 "enable_cache and the pipeline sets no cache context), so diffusers is measured without a cache only")


def ideal(steps: int, full: float, forecast_ratio: float) -> tuple[float, float]:
    """(steps / full, the same corrected for forecast steps costing `forecast_ratio` of a full step)."""
    return steps / full, steps / (full + (steps - full) * forecast_ratio)


def peer_pipeline(family: str | None) -> tuple[str, bool]:
    """(diffusers' pipeline class for this model family, whether its cache hooks run on it)."""
    if family not in PEER_PIPELINES:
        raise UsageError(f"seer-bench has no diffusers peer for the {family!r} model family; pass --no-peers")
    return PEER_PIPELINES[family]


class Peers:
    """diffusers' own pipeline on the same weights: FluxPipeline without a cache, with its TaylorSeer hook
    (attention and MLP modules hooked as ours caches) and with its FirstBlockCache at a few thresholds;
    DiTPipeline without a cache (its hooks do not run on DiT: PEER_PIPELINES)."""

    def __init__(self, model_dir: Path, steps: int, spec: harness.ScheduleSpec, device: str = "cpu",
                 dtype: str = "float32", family: str = "flux", guidance: float | None = None):
        """`dtype`: the engine directory's precision, so that both sides compute in the same one;
        `guidance`: the scale ours runs at (FLUX.1-dev's embedded guidance, DiT's classifier-free;
        None: the pipeline's own default)."""
        import diffusers
        import torch

        pipeline, hooks = peer_pipeline(family)
        self.torch, self.steps, self.device, self.dtype = torch, steps, device, getattr(torch, dtype)
        self.family, self.guidance = family, guidance
        self.pipe = getattr(diffusers, pipeline).from_pretrained(model_dir, dtype=self.dtype).to(device)
        self.pipe.set_progress_bar_config(disable=True)
        if family == "flux":
            self.size = self.pipe.vae.config.sample_size
            self.text_len = int(self.pipe.tokenizer_2.model_max_length)
        self.rows = [("diffusers", "none", None)]
        if hooks:
            self.rows += [("diffusers-taylorseer", spec.label, spec)]
            self.rows += [("diffusers-fbcache", f"threshold {t}", t) for t in FBC_THRESHOLDS]

    def full_steps(self, row: int) -> int | None:
        """Transformer runs per image where the peer's schedule fixes them (None for FirstBlockCache,
        which decides at run time)."""
        from ..runtime.schedule import Schedule

        setting = self.rows[row][2]
        if setting is None:
            return self.steps
        if isinstance(setting, harness.ScheduleSpec):
            return len(Schedule.diffusers(self.steps, setting.interval, setting.warmup).full_steps)
        return None

    def _config(self, setting):
        from diffusers import FirstBlockCacheConfig, TaylorSeerCacheConfig

        if setting is None:
            return None
        if isinstance(setting, float):
            return FirstBlockCacheConfig(threshold=setting)
        return TaylorSeerCacheConfig(
            cache_interval=setting.interval, disable_cache_before_step=setting.warmup, max_order=setting.order,
            taylor_factors_dtype=self.dtype,
            cache_identifiers=[r"^transformer_blocks\.\d+\.(attn|ff)$",
                               r"^single_transformer_blocks\.\d+\.(attn|proj_mlp)$"])

    def _inputs(self, condition) -> dict:
        """The pipeline's conditioning arguments: a prompt at the model's size, or one class id."""
        if self.family == "flux":
            return {"prompt": condition, "height": self.size, "width": self.size,
                    "max_sequence_length": self.text_len}
        return {"class_labels": [condition]}

    def generate(self, row: int, condition, seed: int) -> tuple[np.ndarray, float]:
        """(the uint8 image, seconds) of peer `row` for one condition (prompt or class id) and seed."""
        config = self._config(self.rows[row][2])
        if config is not None:
            self.pipe.transformer.enable_cache(config)
        try:
            self._sync()
            t0 = time.perf_counter()
            with self.torch.no_grad():
                scale = {} if self.guidance is None else {"guidance_scale": self.guidance}
                out = self.pipe(**self._inputs(condition), **scale, num_inference_steps=self.steps, output_type="np",
                                generator=self.torch.Generator().manual_seed(seed)).images[0]
            self._sync()
            seconds = time.perf_counter() - t0
        finally:
            if config is not None:
                self.pipe.transformer.disable_cache()
        return (np.clip(out, 0, 1) * 255).round().astype(np.uint8), seconds

    def _sync(self):
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize()


def timed_seer(pipe, spec: harness.ScheduleSpec, condition, seed: int, steps: int, per_step: bool,
               guidance: float | None = None) -> dict:
    """One generation's times for a prompt or class id; with `per_step`, each step's too (synchronized at
    every step)."""
    marks: list[tuple[bool, float]] = []
    last = [0.0]

    def on_step(i, full, latents):
        pipe.backend.synchronize()
        now = time.perf_counter()
        marks.append((full, now - last[0]))
        last[0] = now

    last[0] = time.perf_counter()
    extra = {} if guidance is None else {"guidance_scale": guidance}
    g = pipe(**harness.condition_kwargs(pipe.family.conditioning, condition), seed=seed, steps=steps,
             on_step=on_step if per_step else None, **extra, **spec.kwargs())
    if per_step:  # the first mark also holds the conditioning (text encoders): time steps from the first step's end
        marks = marks[1:]
    return {"generation_s": g.timings["total"], "loop_s": g.timings["denoise"],
            "full_step_s": [dt for full, dt in marks if full], "forecast_step_s": [dt for full, dt in marks if not full]}


def measure_times(runners: dict[Any, Callable[[bool], dict]], repeats: int, per_step_in_rounds: bool,
                  progress: Progress) -> dict[Any, dict]:
    """`repeats` interleaved rounds over every row; medians per row."""
    samples: dict[Any, list[dict]] = {k: [] for k in runners}
    for r in range(repeats):
        progress(f"timing round {r + 1}/{repeats}")
        for key, run in runners.items():
            samples[key].append(run(per_step_in_rounds))
    if not per_step_in_rounds:  # one more round for the step costs only
        progress("timing the steps")
        for key, run in runners.items():
            steps = run(True)
            samples[key][0].update(full_step_s=steps.get("full_step_s", []), forecast_step_s=steps.get("forecast_step_s", []))
    out = {}
    for key, runs in samples.items():
        row = {"generation_s": statistics.median(s["generation_s"] for s in runs), "repeats": len(runs)}
        if runs[0].get("loop_s") is not None:
            row["loop_s"] = statistics.median(s["loop_s"] for s in runs)
        for part in ("full_step_s", "forecast_step_s"):
            values = [v for s in runs for v in s.get(part, [])]
            if values:
                row[part] = statistics.median(values)
        out[key] = row
    return out


def peak_memory(job: dict) -> dict:
    """Peak memory of a fresh process that loads one row's pipeline and makes one image."""
    proc = subprocess.run([sys.executable, "-m", "seer.evaluate.probe", json.dumps(job)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"memory_error": tail[:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(engine_dirs: list[str], schedules: list[harness.ScheduleSpec], conditions: list | None, seeds: list[int],
        steps: int | None, backend: str = "onnxruntime", device: str = "cpu", with_peers: bool = True,
        repeats: int = 3, memory: bool = True, judge: bool = True, size: str | None = None,
        progress: Progress = lambda m: None, cuda_graphs: bool = False, trust_torch_programs: bool = False,
        count: int | None = None, guidance: float | None = None) -> dict:
    """`conditions`: prompts (FLUX) or class ids and names (DiT), or None for `count` (DEFAULT_COUNT when
    None) of the default set (harness.conditions_for). `schedules`: ours [default: DEFAULT_SCHEDULES of the directories' family].
    `cuda_graphs`: time our rows with the transformer paths replayed as CUDA graphs.
    `trust_torch_programs`: let --backend torch load the directories' .pt2 programs (they run code).
    `guidance`: the guidance scale of every row, ours and diffusers' [default: the directory's]."""
    from ..engines.manifest import read_manifest
    from ..export.source import resolve
    from ..runtime.pipeline import Pipeline

    if repeats < 1:
        raise UsageError(f"--repeats must be 1 or more (got {repeats})")
    _, family = harness.conditioning_of(engine_dirs)
    if not schedules:
        schedules = [harness.ScheduleSpec.parse(s) for s in DEFAULT_SCHEDULES.get(family, DEFAULT_SCHEDULES["flux"])]
    schedules = [harness.ScheduleSpec(no_cache=True), *[s for s in schedules if not s.no_cache]]
    cached = [s for s in schedules if not s.no_cache]
    rules = [s for s in cached if s.plan is None]  # diffusers' hook runs an interval, not a plan
    peer_spec = rules[0] if rules else harness.ScheduleSpec.parse("6/1/3")
    peer_class, hooks = peer_pipeline(family) if with_peers else (None, False)
    if hooks:  # ours at exactly the full steps diffusers' hook runs, for the like-for-like comparison
        twin = dataclasses.replace(peer_spec, style="diffusers")
        if twin not in schedules:
            schedules.append(twin)

    # 1. quality
    report = harness.evaluate(engine_dirs, schedules, conditions, seeds, steps=steps, backend=backend, device=device,
                              progress=progress, keep_images=True, judge=judge,
                              trust_torch_programs=trust_torch_programs, count=count, guidance=guidance,
                              default_count=DEFAULT_COUNT)
    steps, scale = report["steps"], report["guidance_scale"]  # diffusers' scale: what ours ran at
    reference, items = report.pop("_reference_images"), report.pop("_conditions")
    cases = [(k, s) for k in range(len(items.values)) for s in seeds]
    peers = peer_rows = None
    if with_peers:
        manifest = read_manifest(engine_dirs[0], verify=False)
        model, dtype = resolve(manifest["model"]["source"]), manifest.get("precision", "float32")
        progress(f"loading diffusers' {peer_class} on the same weights, in {dtype}")
        peers = Peers(model, steps, peer_spec, device, dtype, family, scale)
        peers.generate(0, items.values[0], seeds[0])  # warm-up, not kept
        peer_rows = []
        for k, (method, label, _) in enumerate(peers.rows):
            progress(f"{method} {label}")
            images = [peers.generate(k, items.values[i], s)[0] for i, s in cases]
            q = harness.quality(items, cases, reference, images, judge)
            peer_rows.append({"method": method, "schedule": label, "full_steps": peers.full_steps(k),
                              items.following: q[items.following], "psnr_db": q["psnr_db"]["mean"],
                              "ssim": q["ssim"]["mean"]})

    # 2. time, interleaved
    condition, seed = items.values[cases[0][0]], cases[0][1]
    per_step = not device.startswith("cuda")
    pipes = {d: Pipeline.load(d, backend=backend, device=device, cuda_graphs=cuda_graphs,
                             trust_torch_programs=trust_torch_programs) for d in engine_dirs}
    for pipe in pipes.values():
        items.warm(pipe)
    runners: dict[Any, Callable[[bool], dict]] = {}
    for d, pipe in pipes.items():
        for spec in schedules:
            runners[("seer", d, spec.label)] = (
                lambda ps, pipe=pipe, spec=spec: timed_seer(pipe, spec, condition, seed, steps, ps, guidance))
    if peers is not None:
        for k in range(len(peers.rows)):
            runners[("peer", k)] = lambda ps, k=k: {"generation_s": peers.generate(k, condition, seed)[1]}
    times = measure_times(runners, repeats, per_step, progress)
    del pipes, peers

    rows = []
    for r in report["rows"]:
        t = times[("seer", r["engine_dir"], r["schedule"])]
        base = times[("seer", r["engine_dir"], "none")]
        row = {"method": f"seer-{r['cache']}", "engine_dir": r["engine_dir"], "schedule": r["schedule"],
               "full_steps": r["full_steps"], items.following: r[items.following],
               "psnr_db": r["psnr_db"]["mean"], "ssim": r["ssim"]["mean"], **t,
               "generation_speedup": base["generation_s"] / t["generation_s"], "loop_speedup": base["loop_s"] / t["loop_s"]}
        if r["schedule"] != "none" and "forecast_step_s" in t:
            ratio = t["forecast_step_s"] / t["full_step_s"]
            plain, corrected = ideal(steps, r["full_steps"], ratio)
            row.update(forecast_ratio=ratio, ideal_speedup=plain, ideal_speedup_corrected=corrected,
                       fraction_of_ideal=row["loop_speedup"] / corrected)
        rows.append(row)
    for k, row in enumerate(peer_rows or []):
        row.update(times[("peer", k)], generation_speedup=times[("peer", 0)]["generation_s"] / times[("peer", k)]["generation_s"])

    # 3. memory, each row in a fresh process
    if memory:
        common = {"condition": condition, "seed": seed, "steps": steps, "guidance": guidance, "backend": backend,
                  "device": device, "cuda_graphs": cuda_graphs, "trust_torch_programs": trust_torch_programs}
        for row in rows:
            progress(f"peak memory of {row['method']} {row['schedule']}")
            row.update(peak_memory({**common, "kind": "seer", "engine_dir": row["engine_dir"], "schedule": row["schedule"]}))
        for k, row in enumerate(peer_rows or []):
            progress(f"peak memory of {row['method']} {row['schedule']}")
            row.update(peak_memory({**common, "kind": "diffusers", "model": str(model), "dtype": dtype, "row": k,
                                    "schedule": peer_spec.label, "family": family, "guidance": scale}))
    note = NO_HOOKS_NOTE.format(pipeline=peer_class) if with_peers and not hooks else None
    return {"size": size, "family": family, "conditioning": items.kind, "steps": steps, "guidance_scale": scale,
            items.plural: len(items.values), "seeds": seeds, "backend": backend, "device": device,
            "repeats": repeats, f"timed_{items.kind}": condition, "peer_note": note,
            "peak_rss_mib": peak_rss_mib(), "rows": rows,
            "peers": peer_rows or []}


def markdown(bench: dict) -> str:
    kind = bench.get("conditioning", "prompt")
    lines = [f"| method | schedule | full steps | {harness.FOLLOW_HEADER[kind]} | PSNR dB | SSIM | gen ms | gen x "
             "| loop x | forecast/full | ideal x (corrected) | of ideal | peak MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def fmt(v, f, scale=1.0, suffix=""):
        return "" if v is None else format(scale * v, f) + suffix

    for r in bench["rows"] + bench["peers"]:
        ideal_text = f"{r['ideal_speedup']:.2f} ({r['ideal_speedup_corrected']:.2f})" if "ideal_speedup" in r else ""
        peak = r.get("peak_gpu_mib", r.get("peak_rss_mib"))
        lines.append(
            f"| {r['method']} | {r['schedule']} | {fmt(r['full_steps'], '.0f')} | "
            f"{fmt(r[f'{kind}_following'], '.1f', 100)} | {min(r['psnr_db'], 99.99):.2f} | {r['ssim']:.4f} | "
            f"{1000 * r['generation_s']:.1f} | {r['generation_speedup']:.2f} | {fmt(r.get('loop_speedup'), '.2f')} | "
            f"{fmt(r.get('forecast_ratio'), '.1f', 100, '%')} | {ideal_text} | "
            f"{fmt(r.get('fraction_of_ideal'), '.0f', 100, '%')} | {fmt(peak, '.0f')} |")
    size = f"size {bench['size']}, " if bench.get("size") else ""
    memory = "GPU memory held" if bench["device"].startswith("cuda") else "peak RSS"
    plural = harness.NOUNS[kind]
    lines.append(f"\n{size}{bench[plural]} {plural} x seeds {bench['seeds']} for quality, {bench['steps']} steps, "
                 f"{bench['backend']} on {bench['device']}; times: median of {bench['repeats']} interleaved rounds on "
                 f"one {kind}; PSNR/SSIM against seer's --no-cache image; gen x: whole-pipeline speed-up against "
                 f"the same method without a cache; forecast/full: a forecast step's cost in full steps; "
                 f"peak MiB: {memory} of a fresh process making one image.")
    if bench.get("peer_note"):
        lines.append(f"\n{bench['peer_note'][0].upper()}{bench['peer_note'][1:]}.")
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
    size = f"{bench['size']}, " if bench.get("size") else ""
    ax.set_title(f"quality vs speed-up, {size}{bench['steps']} steps, {bench['backend']} {bench['device']}")
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
