"""The text-to-image pipeline over an engine directory: tokenize, encode, denoise with TaylorSeer
forecasting, decode. Imports neither diffusers nor transformers: the directory is all it reads.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..engines.manifest import open_engine_dir
from ..errors import EngineDirError, NonFiniteError, UsageError
from . import arguments, memory
from .backends import Backend
from .choose_backend import create_backend
from .finite import StepWatch, coefficient_error, conditioning_error, sigma_error, step_error
from .noise import randn
from .precision import DTYPES
from .rope import flux_rope
from .sampler import FlowMatchEuler, latent_grid, pack, unpack
from .schedule import Schedule
from .taylor import TaylorState
from .text import PromptTokenizer


@dataclass
class Generation:
    images: list  # PIL images
    schedule: Schedule
    timings: dict[str, float]
    latents: np.ndarray | None = None  # final packed latents [B, N, C], like diffusers' output_type="latent"
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
        self.sampler = FlowMatchEuler.from_manifest(manifest["sampler"])
        text = manifest["text"]
        self.tokenizers = {k: PromptTokenizer(directory / v["tokenizer"], v["max_length"], v["pad_id"], v["pad_token"])
                           for k, v in text.items()}
        self.cache = manifest["cache"]
        self.dtypes = graph_dtypes(manifest)
        self._buffers: dict[tuple, dict[str, Any]] = {}
        # One request at a time: requests of a shape share the Taylor, prediction and scratch buffers,
        # and the GPU backends one stream, CUDA graphs and TensorRT contexts bound to fixed addresses.
        self._lock, self._owner = threading.Lock(), None
        self.check_finite = True  # off only to measure what the check costs (scripts/bench_checks.py)
        self.memory_budget: int | None = None  # bytes a request may take (Pipeline.load's memory_budget)
        self._held = {"buffers": 0, "arenas": 0}  # what earlier requests left allocated, reusable by the next

    @classmethod
    def load(cls, engine_dir: str | Path, backend: str = "onnxruntime", device: str = "cpu",
             verify: bool = True, cuda_graphs: bool = False, expect_digest: str | None = None,
             trust_torch_programs: bool = False, memory_budget: int | str | None = None) -> Pipeline:
        """Check the directory (docs/production.md) and load its graphs on `backend`.

        `expect_digest`: refuse the directory unless its manifest digest (printed by seer-export,
        `Pipeline.digest`) is this one. `trust_torch_programs`: the torch backend loads `.pt2`
        programs, which run code when loaded; it refuses to unless the caller trusts the directory.
        `cuda_graphs`: capture the two transformer paths as CUDA graphs (torch or tensorrt on cuda).
        `memory_budget`: bytes (or "8GB", "8GiB") a request may take; larger requests are refused
        up front, as are requests that do not fit the memory available (docs/production.md)."""
        arguments.check_load(engine_dir, backend, device, verify, cuda_graphs, expect_digest, trust_torch_programs)
        budget = memory.parse_bytes(memory_budget)
        directory = Path(engine_dir)
        manifest, digest = open_engine_dir(directory, verify=verify, expect_digest=expect_digest)
        pipe = cls(directory, manifest, create_backend(backend, directory, manifest, device, cuda_graphs,
                                                       trust_torch_programs))
        pipe.digest = digest
        pipe.memory_budget = budget
        return pipe

    def warmup(self, prompt: str = "warm-up", height: int | None = None, width: int | None = None) -> None:
        """Run every graph once at this resolution, so that no request pays for first-run work
        (allocator growth, kernel selection, lazy initialisation): a short cached generation that has
        full steps, a Taylor update and forecast steps. Serving code calls it once after `load`."""
        self(prompt, steps=4, height=height, width=width, interval=2, warmup=2, order=min(1, self.cache["max_order"]))

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

    def __call__(
        self,
        prompt: str | list[str],
        seed: int = 0,
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
    ) -> Generation:
        arguments.check_types(prompt, seed, steps, height, width, guidance_scale, interval, order, warmup,
                              final_full, schedule_style, no_cache, return_latents, on_step)
        if self._owner == threading.get_ident():  # waiting for our own lock would hang for ever
            raise UsageError("a Pipeline runs one request at a time and on_step tried to start another on the same "
                             "Pipeline; start it after this one returns, or on a second Pipeline")
        with self._lock:
            self._owner = threading.get_ident()
            try:
                # numpy's overflow warnings would come before, and say less than, the NonFiniteError
                with self.backend.stream(), np.errstate(over="ignore", invalid="ignore"):
                    return self._generate(prompt, seed, steps, height, width, guidance_scale, interval, order,
                                          warmup, final_full, schedule_style, no_cache, return_latents, on_step)
            finally:
                self._owner = None

    def _generate(self, prompt, seed, steps, height, width, guidance_scale, interval, order, warmup, final_full,
                  schedule_style, no_cache, return_latents, on_step) -> Generation:
        d = self.manifest["defaults"]
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        steps = d["steps"] if steps is None else steps
        height, width = d["height"] if height is None else height, d["width"] if width is None else width
        warnings = []
        if guidance_scale is not None and not self.config["guidance"]:
            warnings.append(f"guidance scale {guidance_scale} ignored: this directory's model takes no guidance "
                            "input (it is not guidance-distilled)")
        guidance_scale = d["guidance_scale"] if guidance_scale is None else guidance_scale
        order = d["schedule"]["order"] if order is None else order
        self._check(prompts, height, width, order)
        arguments.check_seed(seed)
        arguments.check_steps(steps, self.max_steps)
        if self.config["guidance"]:
            arguments.check_guidance(guidance_scale)
        schedule = self.schedule(steps, no_cache, interval, warmup, final_full, schedule_style)
        need = memory.estimate(self.manifest, self.dtypes, len(prompts), height, width)
        memory.check(need, self._held["buffers"] + self._held["arenas"], self.backend.device, self.memory_budget,
                     f"{height}x{width} at batch {len(prompts)}")
        timings: dict[str, float] = {}
        t0 = time.perf_counter()

        text, pooled, truncated = self._encode(prompts)
        timings["text"] = time.perf_counter() - t0

        b, latent = len(prompts), self.manifest["latent"]
        rows, cols = latent_grid(height, width, latent["vae_scale_factor"])
        n = rows * cols
        buf = self._request_buffers(b, n, order)
        self._held["buffers"] = need.buffers
        dt = self.dtypes
        noise = randn((b, latent["channels"], rows * 2, cols * 2), seed)
        latents = self.backend.asarray(pack(noise), dt["latents"])
        cos, sin = flux_rope(self.tokenizers["t5"].max_length, rows, cols, self.config["axes_dims_rope"],
                             self.config["rope_theta"])
        cos, sin = self.backend.asarray(cos), self.backend.asarray(sin)
        sigmas = self.sampler.sigmas(steps, n)
        if not np.isfinite(sigmas).all():
            raise sigma_error(sigmas)
        # every step's timestep on the device once: the loop then only takes views
        timesteps = self.backend.asarray(np.repeat(self.sampler.timesteps(sigmas, dt["latents"])[:, None], b, axis=1))
        guidance = self.backend.asarray(np.full(b, guidance_scale, np.float32)) if self.config["guidance"] else None
        state: TaylorState = buf["state"]
        state.reset()
        watch: StepWatch = buf["watch"]
        watch.enabled = self.check_finite
        watch.reset()
        watch.conditioning(text, pooled)
        lite = self.cache["granularity"] == "lite"
        # Features go straight into the spare factor when the dtypes agree, else through a buffer of
        # the graph's dtype that the Taylor update widens or narrows (lite: the prediction is the feature).
        direct = dt["features"] == dt["factors"]

        t1 = time.perf_counter()
        for i in range(steps):
            step = {"hidden_states": latents, "pooled_projections": pooled, "timestep": timesteps[i]}
            if guidance is not None:
                step["guidance"] = guidance
            if schedule.full[i]:
                features = state.spare if direct else buf["features"]
                pred = features[0] if lite else buf["pred"]
                outputs = {"sample": pred}
                if not lite:
                    outputs["features"] = features
                self.backend.run("full", {**step, "encoder_hidden_states": text, "rope_cos": cos, "rope_sin": sin},
                                 outputs)
                self.sampler.step(latents, pred, sigmas[i + 1] - sigmas[i], buf["wide"], buf["narrow"])
                self._watch(watch, i, schedule, pred, latents, buf["wide"])  # before the update swaps pred away
                if not no_cache:  # nothing will be forecast: the factors would be work thrown away
                    if not direct:
                        state.spare[...] = features
                    state.update(i, derive=i >= schedule.derive_from)
            else:
                inputs = {f"factor_{j}": f for j, f in enumerate(state.factors)}
                coefficients = state.coefficients(i)
                if not np.isfinite(coefficients).all():  # host values: a check costs no device sync
                    raise coefficient_error(i, steps, coefficients)
                self.backend.write(buf["coefficients"], coefficients)
                inputs["coefficients"] = buf["coefficients"]
                if not lite:
                    inputs.update(step)
                self.backend.run("forecast", inputs, {"sample": buf["pred"]})
                self.sampler.step(latents, buf["pred"], sigmas[i + 1] - sigmas[i], buf["wide"], buf["narrow"])
                self._watch(watch, i, schedule, buf["pred"], latents, buf["wide"])
            if on_step:
                on_step(i, schedule.full[i], latents)
        self.backend.synchronize()
        bad = watch.first_bad(self.backend, steps)  # torch: the one read of the per-step verdicts
        if bad is not None:
            self._raise_non_finite(bad[0], schedule, bad[1])
        timings["denoise"] = time.perf_counter() - t1

        t2 = time.perf_counter()
        final = self.backend.numpy(latents).astype(np.float32)
        images = self._decode(unpack(final, rows, cols), (height, width))
        timings["decode"] = time.perf_counter() - t2
        if self.backend.name == "onnxruntime":  # its arenas keep what this request grew them to
            self._held["arenas"] = max(self._held["arenas"], need.transformer + need.decoder)
        timings["total"] = time.perf_counter() - t0
        return Generation(images, schedule, timings, final if return_latents else None, truncated, warnings)

    @property
    def max_steps(self) -> int:
        """More steps than the sampler's training timesteps would only repeat timesteps."""
        return int(self.sampler.num_train_timesteps)

    def _watch(self, watch: StepWatch, i: int, schedule: Schedule, pred, latents, scratch) -> None:
        what = watch.step(i, pred, latents, scratch)
        if what is not None:
            self._raise_non_finite(i, schedule, what)

    def _raise_non_finite(self, step: int, schedule: Schedule, what: int):
        if step < 0:  # the row before step 0: the text encoders
            raise conditioning_error()
        raise step_error(step, schedule.steps, schedule.full[step], what, self.dtypes)

    def _check(self, prompts: list[str], height: int, width: int, order: int) -> None:
        if not prompts or any(not p.strip() for p in prompts):
            raise UsageError("the prompt is empty; describe the image to generate, e.g. --prompt 'a red circle'")
        multiple = self.manifest["latent"]["vae_scale_factor"] * 2
        for name, v in (("height", height), ("width", width)):
            if v < multiple or v % multiple:
                lo = max(multiple, v - v % multiple)
                raise UsageError(f"{name} {v} cannot be generated: it must be a positive multiple of {multiple} "
                                 f"(try {lo} or {lo + multiple})")
        if (height // multiple) * (width // multiple) > 65536:
            raise UsageError(f"{height}x{width} is larger than the exported graphs take (65536 latent tokens)")
        for name, v in (("height", height), ("width", width)):
            if v > 1024 * multiple:  # the VAE decoder is exported for up to 1024 packed rows and columns
                raise UsageError(f"{name} {v} is above the {1024 * multiple} pixels a side the exported graphs "
                                 f"take; use at most {1024 * multiple}")
        max_order = self.cache["max_order"]
        if order < 0:
            raise UsageError(f"order must be 0 or more (got {order}); 0 reuses the last full step's features")
        if order > max_order:
            raise UsageError(f"order {order} is above the {max_order} this engine directory was exported for; "
                             f"use --order {max_order} or re-export with --max-order {order}")

    def _encode(self, prompts: list[str]):
        clip = self.tokenizers["clip"](prompts)
        t5 = self.tokenizers["t5"](prompts)
        pooled = self.backend.run("clip", {"input_ids": self.backend.asarray(clip.ids)})["pooled_projections"]
        text = self.backend.run("t5", {"input_ids": self.backend.asarray(t5.ids)})["encoder_hidden_states"]
        return text, pooled, {"clip": clip.truncated, "t5": t5.truncated}

    def _request_buffers(self, b: int, n: int, order: int) -> dict[str, Any]:
        """Device buffers for a batch and resolution, reused by every request of that shape."""
        key = (b, n, order)
        if key not in self._buffers:
            self._buffers.clear()  # one shape's buffers at a time: the factors can be large
            c_out = self.config["out_channels"]
            streams, dim = len(self.cache["streams"]), self.cache["feature_dim"]
            dt, zeros = self.dtypes, self.backend.zeros
            state = TaylorState(order, lambda: zeros((streams, b, n, dim), dt["factors"]),
                                slots=self.cache["max_order"] + 1)
            self._buffers[key] = {
                "pred": zeros((b, n, c_out), dt["sample"]), "state": state,
                "watch": StepWatch(self.backend, self.max_steps),
                "coefficients": zeros((self.cache["max_order"] + 1,), dt["coefficients"]),
                # the sampler step's float32 sum, and dt * prediction in the prediction's dtype
                "wide": zeros((b, n, c_out)),
                "narrow": None if dt["sample"] == "float32" else zeros((b, n, c_out), dt["sample"]),
                "features": None if dt["features"] == dt["factors"] else zeros((streams, b, n, dim), dt["features"]),
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
