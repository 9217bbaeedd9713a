"""One pipeline for every model family: condition, denoise with TaylorSeer forecasting, decode.

The loop below is the same for FLUX and DiT: what differs is a family (runtime/families: conditioning,
latent layout, decoding), a sampler (runtime/samplers, by `sampler.type`) and a guidance kind
(runtime/guidance.py), all chosen by the manifest. Graph inputs are bound by the names each graph
declares, and buffers sized from the shapes the manifest states (engines/shapes.py). Imports neither
diffusers nor transformers: the directory is all it reads.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..engines.manifest import open_engine_dir, read_regular
from ..engines.shapes import dim_values, shape_of, tensor_names
from ..errors import EngineDirError, NonFiniteError, UsageError
from . import arguments, memory
from .backends import Backend
from .choose_backend import create_backend
from .families import family_for
from .finite import StepWatch, coefficient_error, conditioning_error, step_error
from .guidance import guidance_for
from .noise import randn
from .plan import MAX_PLAN_BYTES, Plan, check_name, plan_from_json, read_plan_bytes
from .precision import DTYPES
from .samplers import sampler_for
from .schedule import Schedule
from .taylor import TaylorState


@dataclass
class Generation:
    images: list  # PIL images
    schedule: Schedule
    timings: dict[str, float]
    plan: str | None = None  # the directory's plan the request ran, by name (None: a rule-based schedule)
    latents: np.ndarray | None = None  # final latents in the transformer's layout, like diffusers' output_type="latent"
    truncated: dict[str, list[int]] = field(default_factory=dict)  # tokens cut per encoder and prompt
    warnings: list[str] = field(default_factory=list)  # what the request ignored; seer-run prints each

    @property
    def image(self):
        return self.images[0]


class Pipeline:
    def __init__(self, directory: Path, manifest: dict, backend: Backend):
        self.directory, self.manifest, self.backend = directory, manifest, backend
        self.digest: str | None = None  # the manifest digest, when loaded through `load`
        self.config = manifest["model"]["config"]
        self.family = family_for(directory, manifest, backend)
        self.sampler = sampler_for(manifest["sampler"])
        self.guidance = guidance_for(manifest["guidance"])
        self.cache = manifest["cache"]
        self._graph_inputs = {g: tensor_names(manifest, g) for g in ("full", "forecast")}
        self.dtypes = graph_dtypes(manifest)
        self._buffers: dict[tuple, dict[str, Any]] = {}
        # One request at a time: requests of a shape share the Taylor, prediction and scratch buffers,
        # and the GPU backends one stream, CUDA graphs and TensorRT contexts bound to fixed addresses.
        self._lock, self._owner = threading.Lock(), None
        self.check_finite = True  # off only to measure what the check costs (scripts/bench_checks.py)
        self.memory_budget: int | None = None  # bytes a request may take (Pipeline.load's memory_budget)
        self._held = {"buffers": 0, "arenas": 0}  # what earlier requests left allocated, reusable by the next
        self._plans: dict[str, Plan] = {}  # the directory's plans, read on first use
        # seer-calibrate's recorder: called with (step, features) after every full step (lite: the prediction)
        self.feature_tap: Callable[[int, Any], None] | None = None

    @classmethod
    def load(cls, engine_dir: str | Path, backend: str = "onnxruntime", device: str = "cpu",
             verify: bool = True, cuda_graphs: bool = False, expect_digest: str | None = None,
             trust_torch_programs: bool = False, memory_budget: int | str | None = None,
             threads: int | None = None) -> Pipeline:
        """Check the directory (docs/production.md) and load its graphs on `backend`.

        `expect_digest`: refuse the directory unless its manifest digest (printed by seer-export,
        `Pipeline.digest`) is this one. `trust_torch_programs`: the torch backend loads `.pt2`
        programs, which run code when loaded; it refuses to unless the caller trusts the directory.
        `cuda_graphs`: capture the two transformer paths as CUDA graphs (torch or tensorrt on cuda).
        `memory_budget`: bytes (or "8GB", "8GiB") a request may take; larger requests are refused
        up front, as are requests that do not fit the memory available (docs/production.md).
        `threads`: CPU threads a graph runs on [default: every core], for several pipelines sharing one
        machine (seer-serve's replicas)."""
        arguments.check_load(engine_dir, backend, device, verify, cuda_graphs, expect_digest, trust_torch_programs)
        arguments.check_threads(threads)
        budget = memory.parse_bytes(memory_budget)
        directory = Path(engine_dir)
        manifest, digest = open_engine_dir(directory, verify=verify, expect_digest=expect_digest)
        pipe = cls(directory, manifest, create_backend(backend, directory, manifest, device, cuda_graphs,
                                                       trust_torch_programs, threads))
        pipe.digest = digest
        pipe.memory_budget = budget
        return pipe

    def warmup(self, prompt: str = "warm-up", height: int | None = None, width: int | None = None) -> None:
        """Run every graph once at this resolution, so that no request pays for first-run work
        (allocator growth, kernel selection, lazy initialisation): a short cached generation that has
        full steps, a Taylor update and forecast steps. Serving code calls it once after `load`."""
        condition = {"prompt": prompt} if self.family.conditioning == "prompt" else {"class_labels": [self.family.first_class]}
        self(**condition, steps=4, height=height, width=width, interval=2, warmup=2,
             order=min(1, self.cache["max_order"]))

    def schedule(self, steps: int, no_cache: bool = False, interval: int | None = None, warmup: int | None = None,
                 final_full: int = 0, style: str = "taylorseer") -> Schedule:
        d = self.manifest["defaults"]["schedule"]
        if no_cache:
            return Schedule.no_cache(steps)
        interval = d["interval"] if interval is None else interval
        warmup = min(d["warmup"], steps) if warmup is None else warmup  # a default never makes a short run fail
        if style == "taylorseer":
            return Schedule.taylorseer(steps, interval, warmup, final_full)
        if style == "diffusers":
            if not 0 <= final_full <= steps:  # it becomes the step the cache stops at, which takes any value
                raise UsageError(f"final full steps must be between 0 and {steps} (got {final_full}); "
                                 "pass --final-full in that range")
            return Schedule.diffusers(steps, interval, warmup, steps - final_full if final_full else None)
        raise UsageError(f"unknown schedule style {style!r}; choose taylorseer or diffusers")

    @property
    def plan_names(self) -> list[str]:
        """The calibrated plans this directory holds (seer-calibrate), by name."""
        return sorted(self.manifest.get("schedules", {}))

    def load_plan(self, name: str) -> Plan:
        """One of the directory's plans, read and checked against the directory (its sha256, the graphs it
        was calibrated on, the orders the forecast graph takes)."""
        if isinstance(name, str) and name in self._plans:
            return self._plans[name]
        check_name(name)
        entry = self.manifest.get("schedules", {}).get(name)
        if entry is None:
            known = ", ".join(self.plan_names) or "none"
            raise UsageError(f"{self.directory} has no plan named {name!r} (it holds: {known}); pick one of those, "
                             f"or make it with seer-calibrate {self.directory} --name {name}")
        rel = entry["file"]
        plan = read_plan_bytes(read_regular(self.directory, rel, MAX_PLAN_BYTES), self.manifest, rel,
                               f"plan {name} ({self.directory / rel})")
        self._plans[name] = plan
        return plan

    def plan(self, steps: int | None = None, no_cache: bool = False, interval: int | None = None,
             warmup: int | None = None, final_full: int = 0, style: str = "taylorseer", order: int | None = None,
             plan: str | Plan | None = None) -> Plan:
        """The plan a request runs: a directory's plan by name (or a Plan, as seer-calibrate tries them),
        or the rule-based schedule of these settings with Taylor's coefficients."""
        if plan is None:
            steps = self.manifest["defaults"]["steps"] if steps is None else steps
            order = self.manifest["defaults"]["schedule"]["order"] if order is None else order
            self._check_order(order)
            arguments.check_steps(steps, self.max_steps)  # before a schedule of that many steps is built
            schedule = self.schedule(steps, no_cache, interval, warmup, final_full, style)
            return Plan.from_schedule(schedule, order, self.cache["max_order"] + 1)
        given = [k for k, v in (("interval", interval), ("warmup", warmup), ("order", order)) if v is not None]
        given += ["final_full"] * bool(final_full) + ["schedule_style"] * (style != "taylorseer")
        given += ["no_cache"] * bool(no_cache)
        if given:
            raise UsageError(f"a plan fixes the whole schedule, so {given[0]} cannot be given with it; drop one of them")
        if isinstance(plan, Plan):  # made in this process (seer-calibrate): the checks a plan file gets
            try:
                chosen = plan_from_json(plan.to_json(), self.manifest, "the plan", check_graphs=False)
            except EngineDirError as e:
                raise UsageError(str(e).split("; calibrate it again")[0] + "; fix the Plan passed in") from None
        else:
            chosen = self.load_plan(plan)
        if steps is not None and steps != chosen.steps:
            raise UsageError(f"plan {chosen.name or ''} was calibrated for {chosen.steps} steps, not {steps}: run it "
                             f"with {chosen.steps} steps, or calibrate one for {steps} (seer-calibrate --steps {steps})")
        self._check_order(chosen.order)
        widths = {len(c) for c in chosen.coefficients if c is not None} - {self.cache["max_order"] + 1}
        if widths:
            raise UsageError(f"the plan has {widths.pop()} coefficients a step; this directory's forecast graph takes "
                             f"{self.cache['max_order'] + 1}")
        return chosen

    def __call__(
        self,
        prompt: str | list[str] | None = None,
        seed: int | list[int] = 0,
        steps: int | None = None,
        height: int | None = None,
        width: int | None = None,
        guidance_scale: float | None = None,
        interval: int | None = None,
        order: int | None = None,
        warmup: int | None = None,
        final_full: int = 0,
        schedule_style: str = "taylorseer",
        no_cache: bool = False,
        return_latents: bool = False,
        on_step: Callable[[int, bool, Any], None] | None = None,
        class_labels: int | str | list[int | str] | None = None,
        plan: str | Plan | None = None,
    ) -> Generation:
        """`prompt` for a text-to-image model (FLUX), `class_labels` (ids or names) for a class-conditional
        one (DiT); one image per prompt or class. `guidance_scale`: embedded guidance (FLUX.1-dev) or the
        classifier-free guidance scale (DiT: above 1 doubles the batch). `plan`: one of the directory's
        calibrated plans by name (`plan_names`), in place of the interval/order/warm-up schedule.
        `seed`: one seed draws the noise of the whole batch at once (as diffusers' generator does); a list
        gives each image its own, so image k equals the request of its prompt alone with `seed=seeds[k]`
        (how seer-serve batches requests)."""
        arguments.check_types(prompt, seed, steps, height, width, guidance_scale, interval, order, warmup,
                              final_full, schedule_style, no_cache, return_latents, on_step, class_labels)
        if plan is not None and not isinstance(plan, (str, Plan)):
            raise UsageError(f"plan must be a plan's name (a string), not {type(plan).__name__}")
        if self._owner == threading.get_ident():  # waiting for our own lock would hang for ever
            raise UsageError("a Pipeline runs one request at a time and on_step tried to start another on the same "
                             "Pipeline; start it after this one returns, or on a second Pipeline")
        with self._lock:
            self._owner = threading.get_ident()
            try:
                # numpy's overflow warnings would come before, and say less than, the NonFiniteError
                with self.backend.stream(), np.errstate(over="ignore", invalid="ignore"):
                    return self._generate(prompt, class_labels, seed, steps, height, width, guidance_scale, interval,
                                          order, warmup, final_full, schedule_style, no_cache, return_latents, on_step,
                                          plan)
            finally:
                self._owner = None

    def _generate(self, prompt, class_labels, seed, steps, height, width, guidance_scale, interval, order, warmup,
                  final_full, schedule_style, no_cache, return_latents, on_step, plan_name) -> Generation:
        d, family, guidance, backend = self.manifest["defaults"], self.family, self.guidance, self.backend
        conditions = family.conditions(prompt, class_labels)
        b = len(conditions)
        height, width = d["height"] if height is None else height, d["width"] if width is None else width
        warnings = []
        if guidance_scale is not None and guidance.kind == "none":
            family.check_unguided(guidance_scale)  # a scale that asks for guidance the model cannot give: refused
            warnings.append(f"guidance scale {guidance_scale} ignored: this directory's model takes no guidance")
        guidance_scale = d["guidance_scale"] if guidance_scale is None or guidance.kind == "none" else guidance_scale
        plan = self.plan(steps, no_cache, interval, warmup, final_full, schedule_style, order, plan_name)
        steps, schedule = plan.steps, plan.schedule
        if guidance.kind != "none":
            arguments.check_guidance(guidance_scale)
        family.check(height, width)
        seeds = arguments.check_seed(seed, b)
        arguments.check_steps(steps, self.max_steps)
        g = guidance.batch(guidance_scale)
        values = dim_values(self.manifest, b, height, width, g)
        need = self.estimate(b, height, width, guidance_scale)
        tokens = family.sequence(height, width)[0]
        memory.check(need, self._held["buffers"] + self._held["arenas"], backend.device, self.memory_budget,
                     f"{height}x{width} at batch {b}" + (" (doubled for classifier-free guidance)" if g > 1 else ""))
        timings: dict[str, float] = {}
        t0 = time.perf_counter()

        fixed, info = family.condition(conditions, height, width, guided=g > 1)
        fixed.update(guidance.inputs(backend, b, guidance_scale))
        timings["conditioning"] = time.perf_counter() - t0

        dt = self.dtypes
        if seeds is None:
            noise = randn(family.noise_shape(b, height, width), seed)
        else:  # each image's noise drawn alone: the same as that image requested by itself
            noise = np.concatenate([randn(family.noise_shape(1, height, width), s) for s in seeds])
        latents = backend.asarray(family.latents_from_noise(noise), dt["latents"])
        buf = self._request_buffers(values, plan.order, tuple(latents.shape), g)
        self._held["buffers"] = need.buffers
        sampling = self.sampler.plan(steps, tokens, dt["latents"])
        # every step's timestep on the device once: the loop then only takes views
        timesteps = backend.asarray(np.repeat(sampling.model_timesteps[:, None], g * b, axis=1))
        state: TaylorState = buf["state"]
        state.reset()
        watch: StepWatch = buf["watch"]
        watch.enabled = self.check_finite
        watch.reset()
        watch.conditioning(*(v for v in fixed.values() if "int" not in str(v.dtype)))
        lite = self.cache["granularity"] == "lite"
        # Features go straight into the spare factor when the dtypes agree, else through a buffer of
        # the graph's dtype that the Taylor update widens or narrows (lite: the prediction is the feature).
        direct = dt["features"] == dt["factors"]
        full_names, forecast_names = self._graph_inputs["full"], self._graph_inputs["forecast"]

        t1 = time.perf_counter()
        for i in range(steps):
            step = {**fixed, "hidden_states": guidance.expand(latents, buf["model_in"]), "timestep": timesteps[i]}
            if schedule.full[i]:
                features = state.spare if direct else buf["features"]
                out = features[0] if lite else buf["out"]
                outputs = {"sample": out}
                if not lite:
                    outputs["features"] = features
                backend.run("full", {n: step[n] for n in full_names}, outputs)
                if self.feature_tap is not None:
                    self.feature_tap(i, features)
            else:
                coefficients = plan.coefficients[i]
                if not np.isfinite(coefficients).all():  # host values: a check costs no device sync
                    raise coefficient_error(i, steps, coefficients)
                backend.write(buf["coefficients"], coefficients)
                step.update({f"factor_{j}": f for j, f in enumerate(state.factors)})
                step["coefficients"] = buf["coefficients"]
                out = buf["out"]
                backend.run("forecast", {n: step[n] for n in forecast_names}, {"sample": out})
            prediction = guidance.combine(family.prediction(out), buf["guided"], guidance_scale)
            self.sampler.step(sampling, i, latents, prediction, buf["wide"], buf["narrow"])
            self._watch(watch, i, schedule, prediction, latents, buf["wide"])  # before the update swaps out away
            if schedule.full[i] and not no_cache:  # nothing will be forecast: the factors would be work thrown away
                if not direct:
                    state.spare[...] = features
                state.update(i, derive=i >= plan.derive_from)
            if on_step:
                on_step(i, schedule.full[i], latents)
        backend.synchronize()
        bad = watch.first_bad(backend, steps)  # torch: the one read of the per-step verdicts
        if bad is not None:
            self._raise_non_finite(bad[0], schedule, bad[1])
        timings["denoise"] = time.perf_counter() - t1

        t2 = time.perf_counter()
        final = backend.numpy(latents).astype(np.float32)
        images = self._decode(family.decoder_latents(final, height, width), (height, width))
        timings["decode"] = time.perf_counter() - t2
        if backend.name == "onnxruntime":  # its arenas keep what this request grew them to
            self._held["arenas"] = max(self._held["arenas"], need.transformer + need.decoder)
        timings["total"] = time.perf_counter() - t0
        return Generation(images, schedule, timings, plan_name if isinstance(plan_name, str) else plan.name,
                          final if return_latents else None, info.get("truncated", {}), warnings)

    def estimate(self, batch: int, height: int, width: int, guidance_scale: float | None = None) -> memory.Estimate:
        """The memory a request of `batch` images at this size takes (runtime/memory.py)."""
        if guidance_scale is None:
            guidance_scale = self.manifest["defaults"]["guidance_scale"]
        values = dim_values(self.manifest, batch, height, width, self.guidance.batch(guidance_scale))
        return memory.estimate(self.manifest, self.dtypes, values, *self.family.sequence(height, width))

    @property
    def max_steps(self) -> int:
        return self.sampler.max_steps

    def _watch(self, watch: StepWatch, i: int, schedule: Schedule, pred, latents, scratch) -> None:
        what = watch.step(i, pred, latents, scratch)
        if what is not None:
            self._raise_non_finite(i, schedule, what)

    def _raise_non_finite(self, step: int, schedule: Schedule, what: int):
        if step < 0:  # the row before step 0: the text encoders
            raise conditioning_error()
        raise step_error(step, schedule.steps, schedule.full[step], what, self.dtypes)

    def _check_order(self, order: int) -> None:
        max_order = self.cache["max_order"]
        if order < 0:
            raise UsageError(f"order must be 0 or more (got {order}); 0 reuses the last full step's features")
        if order > max_order:
            raise UsageError(f"order {order} is above the {max_order} this engine directory was exported for; "
                             f"use --order {max_order} or re-export with --max-order {order}")

    def _request_buffers(self, values: dict[str, int], order: int, latents: tuple[int, ...], g: int) -> dict[str, Any]:
        """Device buffers for a request's shapes (as the manifest declares them), reused by every
        request of those shapes."""
        key = (tuple(sorted(values.items())), order, latents)
        if key not in self._buffers:
            self._buffers.clear()  # one shape's buffers at a time: the factors can be large
            m, dt, zeros = self.manifest, self.dtypes, self.backend.zeros
            factor = shape_of(m, "forecast", "inputs", "factor_0", values)
            sample = shape_of(m, "full", "outputs", "sample", values)
            lite = self.cache["granularity"] == "lite"
            state = TaylorState(order, lambda: zeros(factor, dt["factors"]), slots=self.cache["max_order"] + 1)
            model_in = (latents[0] * g, *latents[1:])
            self._buffers[key] = {
                "out": zeros(sample, dt["sample"]), "state": state,
                "watch": StepWatch(self.backend, self.max_steps),
                "coefficients": zeros((self.cache["max_order"] + 1,), dt["coefficients"]),
                # the model's batch when guidance doubles it, and the guided prediction
                "model_in": zeros(model_in, dt["latents"]) if g > 1 else None,
                "guided": zeros(latents, dt["sample"]) if g > 1 else None,
                # the sampler step's float32 arithmetic, and dt * prediction in the prediction's dtype
                "wide": zeros(latents),
                "narrow": None if dt["sample"] == "float32" else zeros(latents, dt["sample"]),
                # lite: the prediction is the feature, so it goes through this buffer too (a [1, ...] view of it)
                "features": None if dt["features"] == dt["factors"] else zeros(factor, dt["features"]),
            }
        return self._buffers[key]

    def _decode(self, latents: np.ndarray, expected: tuple[int, int]) -> list:
        from PIL import Image

        image = self.backend.run("vae_decoder", {"latents": self.backend.asarray(latents, self.dtypes["vae"])})["image"]
        image = self.backend.numpy(image).astype(np.float32)
        if image.shape[0] != latents.shape[0] or image.shape[2:] != expected:
            raise EngineDirError(f"the VAE decoder made {'x'.join(map(str, image.shape[2:]))} images for a "
                                 f"{'x'.join(map(str, expected))} request: the manifest's latent.vae_scale_factor does "
                                 "not describe its decoder; re-export the engine directory")
        if self.check_finite and not np.isfinite(image).all():
            raise NonFiniteError("the VAE decoder's output is not finite (NaN or Inf) although the latents were: "
                                 "its graph is damaged or overflows; re-export the directory")
        image = np.clip(image / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)
        return [Image.fromarray((im * 255).round().astype(np.uint8)) for im in image]


def graph_dtypes(manifest: dict) -> dict[str, str]:
    """The dtype of every buffer the loop binds, as the manifest's graph interfaces declare them."""
    graphs = manifest["graphs"]

    def io(graph: str, kind: str, name: str) -> str:
        dtype = next((t.get("dtype") for t in graphs.get(graph, {}).get(kind, []) if t.get("name") == name), None)
        if dtype not in DTYPES:
            raise EngineDirError(f"the manifest's {graph} graph declares {kind[:-1]} {name!r} as {dtype!r}, not one "
                                 f"of {', '.join(DTYPES)}; the directory is damaged or not seer's, re-export it")
        return dtype

    lite = manifest["cache"]["granularity"] == "lite"
    return {
        "latents": io("full", "inputs", "hidden_states"),
        "sample": io("full", "outputs", "sample"),
        "features": io("full", "outputs", "sample" if lite else "features"),
        "factors": io("forecast", "inputs", "factor_0"),
        "coefficients": io("forecast", "inputs", "coefficients"),
        "vae": io("vae_decoder", "inputs", "latents"),
    }
