"""seer on Ray Serve: a gateway that speaks the OpenAI-style images API, and one deployment per engine
directory whose replicas each own a warmed-up `Pipeline`.

    HTTP proxy (Ray's, one per node) -> Gateway (parses, routes by model, maps errors to statuses)
                                     -> ModelServer replicas (batch, generate, encode PNGs)

A request holds one replica for its whole denoising loop (the Taylor buffers live across it), so the
replicas are the unit of scale: Ray places them (one GPU each on a GPU cluster), restarts them when they
die, and bounds what waits for them (`max_ongoing_requests` per replica, `max_queued_requests` per caller:
past that a request is refused with 429 and Retry-After at once). Requests for one model that agree on size
and schedule are batched (`serve.batch`) into one generation of up to `max_batch` images, each image with
its own seed, so a batched image equals the same request served alone.

`build(args)` is a Ray Serve application builder: `serve run seer.serve.app:build models=flux=out/flux`
or a Serve config file's `import_path: seer.serve.app:build` deploys it without seer-serve.
"""

# No `from __future__ import annotations`: FastAPI reads the route's `Request` annotation at run time, in a
# replica that unpickled the class.
import asyncio
import logging
import os
import time
import traceback
from dataclasses import asdict, dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.metrics import Counter, Gauge, Histogram

from ..errors import EngineDirError, MemoryLimitError, SeerError
from .api import MAX_BODY_BYTES, ImageRequest, RequestError, condition, parse_body, response

logger = logging.getLogger("ray.serve")
LATENCY_BUCKETS_S = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 150, 300]


@dataclass
class Options:
    """How every model is served (seer-serve's options; `build`'s arguments)."""

    replicas: int = 1  # per model; with max_replicas above it, Ray autoscales between the two
    max_replicas: int | None = None
    max_batch: int = 4  # images in one generation
    batch_wait_s: float = 0.01  # how long a replica waits for a batch to fill once a request is in
    queue: int = 8  # requests that may wait per replica beyond those it holds; past that: 429
    backend: str = "onnxruntime"
    device: str = "cpu"  # "cuda": one GPU per replica (gpus_per_replica)
    gpus_per_replica: float = 1.0
    threads: int | None = None  # CPU threads per replica [default: the machine's cores / replicas]
    memory_budget: str | None = None
    trust_torch_programs: bool = False
    request_timeout_s: float = 600.0  # past this a request gets 504 and its work is cancelled
    retry_after_s: int = 1  # what a 429 tells the client to wait

    def check(self) -> None:
        from ..errors import UsageError

        for name, low in (("replicas", 1), ("max_batch", 1), ("queue", 0), ("retry_after_s", 0)):
            if getattr(self, name) < low:
                raise UsageError(f"{name.replace('_', '-')} must be at least {low} (got {getattr(self, name)})")
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise UsageError(f"the most replicas ({self.max_replicas}) is below the fewest ({self.replicas}); give "
                             "--replicas MIN:MAX with MIN <= MAX")
        if not 0 <= self.batch_wait_s <= 10 or not 0 < self.request_timeout_s <= 86400:
            raise UsageError("batch wait must be 0-10 s and the request timeout 0-86400 s")
        if not 0 < self.gpus_per_replica <= 8:
            raise UsageError(f"gpus per replica must be above 0 and at most 8 (got {self.gpus_per_replica})")


@dataclass
class Model:
    """One engine directory to serve, pinned to the manifest digest read when the application was built: a
    node whose copy of the directory differs refuses to start a replica."""

    name: str
    directory: str
    digest: str
    info: dict = field(default_factory=dict)  # what GET /v1/models shows


@serve.deployment(max_ongoing_requests=8)
class ModelServer:
    """One replica: one Pipeline, loaded, verified against the pinned digest and warmed up before Ray sends it
    a request (a replica is ready only when its constructor returns)."""

    def __init__(self, model: Model, options: Options):
        from ..runtime.pipeline import Pipeline

        self.model, self.options = model, options
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.pipe = Pipeline.load(model.directory, backend=options.backend, device=options.device,
                                  expect_digest=model.digest, trust_torch_programs=options.trust_torch_programs,
                                  memory_budget=options.memory_budget, threads=options.threads)
        self.pipe.warmup()
        self._batched.set_max_batch_size(options.max_batch)
        self._batched.set_batch_wait_timeout_s(options.batch_wait_s)
        tags = ("model",)
        self.images = Counter("seer_images", "Images generated", tags)
        self.steps = Counter("seer_steps", "Denoising steps run, by kind (full or forecast)", tags + ("kind",))
        self.seconds = Histogram("seer_generation_seconds", "Wall time of one generation (a batch)",
                                 LATENCY_BUCKETS_S, tags)
        self.batch = Histogram("seer_batch_images", "Images in one generation", [1, 2, 4, 8, 16, 32, 64], tags)
        self.waiting = Gauge("seer_replica_waiting", "Requests a replica holds that have not started", tags)
        for metric in (self.images, self.steps, self.seconds, self.batch, self.waiting):
            metric.set_default_tags({"model": model.name})
        self._waiting = 0

    def pid(self) -> int:
        return os.getpid()

    async def __call__(self, request: ImageRequest) -> dict:
        self._waiting += 1
        self.waiting.set(self._waiting)
        return await self._batched(request)

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.01)
    async def _batched(self, requests: list[ImageRequest]) -> list[dict]:
        self._waiting -= len(requests)
        self.waiting.set(self._waiting)
        return await asyncio.to_thread(self._run, requests)

    def _run(self, requests: list[ImageRequest]) -> list[dict]:
        """Requests of one batch, grouped by size and schedule, each group in generations of up to max_batch
        images. A group that fails is run again request by request, so one bad request fails alone."""
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(r.key, []).append(i)
        results: list[dict | None] = [None] * len(requests)
        for members in groups.values():
            for i, result in zip(members, self._group([requests[i] for i in members])):
                results[i] = result
        return results

    def _group(self, requests: list[ImageRequest]) -> list[dict]:
        try:
            return self._generate(requests)
        except SeerError as e:
            if len(requests) > 1:
                return [self._group([r])[0] for r in requests]
            status = 500 if isinstance(e, EngineDirError) else 507 if isinstance(e, MemoryLimitError) else 400
            return [{"status": status, "error": str(e)}]
        except RequestError as e:
            if len(requests) > 1:
                return [self._group([r])[0] for r in requests]
            return [{"status": e.status, "error": e.message}]
        except Exception as e:  # a bug: logged with its traceback, one line to the client
            logger.error("seer: generation failed:\n%s", traceback.format_exc())
            return [{"status": 500, "error": f"the model server failed ({type(e).__name__}: {e}); see the replica's "
                                             "log"} for _ in requests]

    def _generate(self, requests: list[ImageRequest]) -> list[dict]:
        started = time.time()
        images = [(r, condition(r, self.pipe.family.conditioning), seed) for r in requests for seed in r.seeds]
        settings = {"height": requests[0].height, "width": requests[0].width, **requests[0].settings}
        out: dict[int, list] = {id(r): [] for r in requests}
        runs: dict[int, list] = {id(r): [] for r in requests}
        b = self.options.max_batch
        for chunk in (images[k:k + b] for k in range(0, len(images), b)):
            conditions = {key: [c[key] for _, c, _ in chunk] for key in chunk[0][1]}
            g = self.pipe(**conditions, seed=[s for _, _, s in chunk], **settings)
            full = len(g.schedule.full_steps)
            self.images.inc(len(chunk))
            self.steps.inc(full, tags={"kind": "full"})  # transformer runs: one step of a batch is one run
            self.steps.inc(g.schedule.steps - full, tags={"kind": "forecast"})
            self.seconds.observe(g.timings["total"])
            self.batch.observe(len(chunk))
            for (r, _, _), image in zip(chunk, g.images):
                out[id(r)].append(image)
                if not runs[id(r)] or runs[id(r)][-1][0] is not g:
                    runs[id(r)].append((g, len(chunk)))
        results = []
        for r in requests:
            generations = runs[id(r)]  # a request larger than max_batch ran in several generations
            timings = {k: sum(g.timings[k] for g, _ in generations) for k in generations[0][0].timings}
            first, batch = generations[0]
            results.append({"status": 200, "body": response(r, out[id(r)], first, timings, batch,
                                                            started - r.received, self.replica)})
        return results


async def _result(pending):
    return await pending


async def _body(request: Request) -> bytes:
    """The body, refused past MAX_BODY_BYTES without reading the rest."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise RequestError(413, f"the request body is over {MAX_BODY_BYTES} bytes; a request is a prompt and a "
                                    "few settings")
        chunks.append(chunk)
    return b"".join(chunks)


def _kind(status: int) -> str:
    return {429: "rate_limit_error", 504: "timeout"}.get(status, "server_error" if status >= 500 else
                                                         "invalid_request_error")


def deployment_name(model: str) -> str:
    return f"seer-{model}"


gateway = FastAPI(title="seer", description="OpenAI-style image generation with TaylorSeer forecasting")


@serve.deployment(max_ongoing_requests=1000)
@serve.ingress(gateway)
class Gateway:
    """The HTTP face: parses and checks requests (400 with the reason seer-run would give), routes them to
    the model's replicas and maps what can happen there to statuses: 429 when the model's queue is full, 503
    when its replica died or none is up, 504 past the request timeout; nothing waits without bound."""

    def __init__(self, handles: dict, models: list[Model], options: Options):
        self.handles, self.models, self.options = handles, {m.name: m for m in models}, options
        self.requests = Counter("seer_requests", "HTTP requests answered, by model and status", ("model", "status"))
        self.latency = Histogram("seer_request_seconds", "Request latency at the gateway (queue and generation)",
                                 LATENCY_BUCKETS_S, ("model",))
        self.in_flight = Gauge("seer_in_flight", "Requests the gateway is waiting on, by model", ("model",))
        self._in_flight = {name: 0 for name in self.models}

    @gateway.post("/v1/images/generations")
    async def generations(self, request: Request):
        t0, model = time.perf_counter(), "-"
        try:
            req = parse_body(await _body(request), list(self.models))
            model = req.model
            result = await self._forward(req)
        except RequestError as e:
            result = {"status": e.status, "error": e.message, "kind": e.kind, "retry_after": e.status in (429, 503)}
        status = result["status"]
        self.requests.inc(tags={"model": model, "status": str(status)})
        if status == 200:
            self.latency.observe(time.perf_counter() - t0, tags={"model": model})
            return JSONResponse(result["body"])
        headers = {"Retry-After": str(self.options.retry_after_s)} if result.get("retry_after") else None
        body = RequestError(status, result["error"], result.get("kind", _kind(status))).body()
        return JSONResponse(body, status_code=status, headers=headers)

    async def _forward(self, req: ImageRequest) -> dict:
        name, handle = req.model, self.handles[req.model]
        self._in_flight[name] += 1
        self.in_flight.set(self._in_flight[name], tags={"model": name})
        pending = handle.remote(req)
        try:
            return await asyncio.wait_for(asyncio.shield(_result(pending)), self.options.request_timeout_s)
        except BackPressureError:
            raise RequestError(429, f"model {name} has a full queue ({self.options.queue} requests a replica); "
                                    f"retry after {self.options.retry_after_s} s", "rate_limit_error") from None
        except asyncio.TimeoutError:
            pending.cancel()
            raise RequestError(504, f"the request took longer than the server's {self.options.request_timeout_s:g} s "
                                    "timeout and was cancelled; ask for fewer steps or images, or raise "
                                    "--request-timeout", "timeout") from None
        except RayActorError:
            raise RequestError(503, f"the replica of model {name} running this request stopped (Ray restarts it); "
                                    "retry the request", "server_error") from None
        except DeploymentUnavailableError:
            raise RequestError(503, f"model {name} has no replica running; retry shortly", "server_error") from None
        finally:
            self._in_flight[name] -= 1
            self.in_flight.set(self._in_flight[name], tags={"model": name})

    @gateway.get("/v1/models")
    async def list_models(self):
        return {"object": "list", "data": [{"id": m.name, "object": "model", "owned_by": "seer", "seer": m.info}
                                           for m in self.models.values()]}

    @gateway.get("/health")
    async def health(self):
        """Liveness: the gateway answers."""
        return {"status": "ok"}

    @gateway.get("/ready")
    async def ready(self):
        """Readiness: every model has at least one replica that loaded, verified and warmed up its Pipeline."""
        status = await asyncio.to_thread(serve.status)
        up = {}
        for app in status.applications.values():
            for name, d in app.deployments.items():
                up[name] = d.replica_states.get("RUNNING", 0)
        waiting = [m for m in self.models if up.get(deployment_name(m), 0) == 0]
        if waiting:
            return JSONResponse({"status": "starting", "waiting_for": waiting}, status_code=503,
                                headers={"Retry-After": "5"})
        return {"status": "ready", "replicas": {m: up[deployment_name(m)] for m in self.models}}


def application(models: list[Model], options: Options):
    """The Ray Serve application serving these models."""
    options.check()
    handles = {}
    for m in models:
        actor = {"num_cpus": options.threads or 1}
        if options.device.startswith("cuda"):
            actor["num_gpus"] = options.gpus_per_replica
        scale = {"num_replicas": options.replicas}
        if options.max_replicas is not None and options.max_replicas > options.replicas:
            scale = {"autoscaling_config": {"min_replicas": options.replicas, "max_replicas": options.max_replicas,
                                            "target_ongoing_requests": options.max_batch}}
        handles[m.name] = ModelServer.options(
            name=deployment_name(m.name), **scale, ray_actor_options=actor,
            # one batch running and the next one gathering; the rest wait at the caller, bounded
            max_ongoing_requests=2 * options.max_batch,
            max_queued_requests=options.queue * (options.max_replicas or options.replicas),
            health_check_period_s=10, health_check_timeout_s=30,
            max_constructor_retry_count=3,  # a replica that cannot load (no GPU, a changed file) will not next time
        ).bind(m, options)
    return Gateway.options(name="seer-gateway", ray_actor_options={"num_cpus": 0}).bind(handles, models, options)


def describe(name: str, directory: str, verify: bool = False) -> Model:
    """A model entry for `directory`: its manifest read (every file hashed only with `verify`: each replica
    does that anyway, against this digest) and what /v1/models shows of it."""
    from pathlib import Path

    from ..engines.manifest import open_engine_dir

    manifest, digest = open_engine_dir(Path(directory), verify=verify)
    d = manifest["defaults"]
    info = {"family": manifest["model"]["family"],
            "source": manifest["model"].get("source"), "digest": digest, "cache": manifest["cache"]["granularity"],
            "size": f"{d['width']}x{d['height']}", "steps": d["steps"], "plans": sorted(manifest.get("schedules", {}))}
    return Model(name, str(Path(directory).resolve()), digest, info)


def build(args: dict):
    """Ray Serve application builder: `models` is "NAME=DIR,NAME=DIR" (or a dict), the rest are Options'
    fields, e.g. `serve run seer.serve.app:build models=flux=/data/flux replicas=2 device=cuda`."""
    args = dict(args)
    spec = args.pop("models")
    pairs = spec.items() if isinstance(spec, dict) else (p.split("=", 1) for p in str(spec).split(","))
    known = list(Options.__dataclass_fields__)
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r}; seer.serve.app:build takes models and {', '.join(known)}")
    defaults = asdict(Options())
    options = Options(**{k: _value(v, defaults[k]) for k, v in args.items()})
    return application([describe(name, directory) for name, directory in pairs], options)


def _value(text, default):
    """A `key=value` argument of `serve run` (always text) as the field's type."""
    if not isinstance(text, str) or isinstance(default, str):
        return text
    if isinstance(default, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{text!r} is not true or false")
        return text.lower() in ("true", "1")
    return float(text) if "." in text else int(text)
