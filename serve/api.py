"""The OpenAI-style images API, without Ray: a request body becomes an `ImageRequest`, or a `RequestError`
(status and one line); a generation becomes the response body. seer-serve's HTTP layer (serve/app.py) and
its tests use these alone.

    POST /v1/images/generations
    {"model": "flux-tiny", "prompt": "a red circle", "n": 2, "size": "64x64",
     "response_format": "b64_json", "seed": 7, "steps": 28, "plan": "k10"}

OpenAI's fields: `model`, `prompt`, `n`, `size` ("WxH" or "auto"), `response_format` (only `b64_json`:
images come back inline), `output_format` (only `png`), `user` (ignored). seer's own: `seed` (image k of
a request draws its noise from `seed + k`, so it equals `seer-run --seed SEED+k`; a random seed when
none is given, returned in the response), `steps`, `guidance`, `plan`, or `interval`/`order`/`warmup`/
`final_full`/`schedule_style`, `no_cache`, and `class_label` for a class-conditional model (DiT), which
also reads `prompt` as a class name or id.
"""

from __future__ import annotations

import base64
import io
import json
import re
import secrets
import time
from dataclasses import dataclass, field

MAX_BODY_BYTES = 1 << 20  # a request is a prompt and a few numbers; the runtime reads 100k characters at most
MAX_IMAGES = 16  # n per request
SEED_LIMIT = 2**32

OPENAI_FIELDS = ("model", "prompt", "n", "size", "response_format", "output_format", "user")
# The request's schedule and sampling: requests that agree on all of these run as one batch.
SCHEDULE_FIELDS = ("steps", "guidance", "plan", "interval", "order", "warmup", "final_full", "schedule_style",
                   "no_cache")
SEER_FIELDS = ("seed", "class_label") + SCHEDULE_FIELDS
# field -> the Pipeline argument it becomes
PIPELINE_ARGUMENT = {"guidance": "guidance_scale"}


class RequestError(Exception):
    """A request the server will not run: an HTTP status and one line saying why and what to do."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind

    def body(self) -> dict:
        """OpenAI's error shape."""
        return {"error": {"message": self.message, "type": self.kind, "param": None, "code": self.status}}


@dataclass
class ImageRequest:
    model: str
    prompt: str | None
    class_label: int | str | None
    n: int
    seed: int
    height: int | None
    width: int | None
    settings: dict = field(default_factory=dict)  # the schedule fields given, as Pipeline arguments
    received: float = field(default_factory=time.time)

    @property
    def seeds(self) -> list[int]:
        return [self.seed + k for k in range(self.n)]

    @property
    def key(self) -> str:
        """What must agree for requests to share one generation: size and schedule (not prompt or seed)."""
        return json.dumps([self.height, self.width, sorted(self.settings.items())], default=repr)


def parse_body(raw: bytes, models: list[str]) -> ImageRequest:
    """A request body (JSON bytes) checked for its shape; the values' ranges are the Pipeline's to check,
    with the same messages as seer-run."""
    if len(raw) > MAX_BODY_BYTES:
        raise RequestError(413, f"the request body is {len(raw)} bytes; send at most {MAX_BODY_BYTES}")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(400, f"the request body is not JSON ({e}); send a JSON object such as "
                                '{"prompt": "a red circle"}') from None
    if not isinstance(body, dict):
        raise RequestError(400, f"the request body must be a JSON object, not {type(body).__name__}")
    unknown = sorted(set(body) - set(OPENAI_FIELDS) - set(SEER_FIELDS))
    if unknown:
        raise RequestError(400, f"unknown field {unknown[0]!r}; seer takes {', '.join(OPENAI_FIELDS + SEER_FIELDS)}")
    model = body.get("model")
    if model is None:
        if len(models) != 1:
            raise RequestError(400, f"this server holds several models; name one in 'model' ({', '.join(models)})")
        model = models[0]
    if not isinstance(model, str) or model not in models:
        raise RequestError(404, f"no model named {str(model)[:100]!r} here; GET /v1/models lists them "
                                f"({', '.join(models)})", "model_not_found")
    prompt, label = body.get("prompt"), body.get("class_label")
    if prompt is not None and not isinstance(prompt, str):
        raise RequestError(400, f"prompt must be a string, not {type(prompt).__name__}")
    if label is not None and (isinstance(label, bool) or not isinstance(label, (int, str))):
        raise RequestError(400, f"class_label must be a class id or name, not {type(label).__name__}")
    if prompt is None and label is None:
        raise RequestError(400, "the request has no prompt; give 'prompt' (a class name or id for a "
                                "class-conditional model)")
    n = _integer(body, "n", 1)
    if not 1 <= n <= MAX_IMAGES:
        raise RequestError(400, f"n must be between 1 and {MAX_IMAGES} (got {n}); send several requests for more")
    fmt = body.get("response_format", "b64_json")
    if fmt != "b64_json":
        raise RequestError(400, f"response_format {fmt!r} is not served: seer returns images inline; use b64_json")
    if body.get("output_format", "png") != "png":
        raise RequestError(400, f"output_format {body['output_format']!r} is not served; seer returns png")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise RequestError(400, "user must be a string")
    height, width = parse_size(body.get("size", "auto"))
    seed = _integer(body, "seed", None)
    if seed is None:
        seed = secrets.randbelow(SEED_LIMIT - MAX_IMAGES)
    if not 0 <= seed or seed + n > SEED_LIMIT:
        raise RequestError(400, f"seed {seed} with n={n} draws seeds {seed}..{seed + n - 1}, outside [0, 2**32); "
                                f"use a seed from 0 to {SEED_LIMIT - n}")
    settings = {PIPELINE_ARGUMENT.get(k, k): body[k] for k in SCHEDULE_FIELDS if body.get(k) is not None}
    for k, v in settings.items():  # one key must hash: lists and objects are no setting's type
        if isinstance(v, (list, dict)):
            raise RequestError(400, f"{k} must be a number, string or boolean, not {type(v).__name__}")
    return ImageRequest(model, prompt, label, n, seed, height, width, settings)


def parse_size(size) -> tuple[int | None, int | None]:
    """OpenAI's "WIDTHxHEIGHT" (or "auto": the directory's default size) as (height, width)."""
    if size == "auto":
        return None, None
    m = re.fullmatch(r"(\d{1,5})x(\d{1,5})", size) if isinstance(size, str) else None
    if m is None:
        raise RequestError(400, f"size {str(size)[:40]!r} is not WIDTHxHEIGHT; give e.g. \"1024x1024\", or \"auto\" "
                                "for the model's default")
    return int(m.group(2)), int(m.group(1))


def _integer(body: dict, name: str, default: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(400, f"{name} must be an integer, not {type(value).__name__} ({str(value)[:40]})")
    return value


def condition(request: ImageRequest, conditioning: str) -> dict:
    """The Pipeline argument of one image: a prompt, or a class (an id, a name, or an id written as text)."""
    if conditioning == "prompt":
        if request.class_label is not None:
            raise RequestError(400, "this model is text-to-image: it takes a prompt, not class_label")
        return {"prompt": request.prompt}
    return {"class_labels": request.class_label if request.class_label is not None else request.prompt}


def png_b64(image) -> str:
    data = io.BytesIO()
    image.save(data, format="PNG")
    return base64.b64encode(data.getvalue()).decode("ascii")


def response(request: ImageRequest, images: list, generation, timings: dict, batch_images: int, queued_s: float,
             replica: str) -> dict:
    """OpenAI's response shape; seer's run metadata under "seer"."""
    s = generation.schedule
    return {
        "created": int(time.time()),
        "data": [{"b64_json": png_b64(im), "seed": seed} for im, seed in zip(images, request.seeds)],
        "seer": {"model": request.model, "seeds": request.seeds, "steps": s.steps, "full_steps": s.full_steps,
                 "forecast_steps": s.steps - len(s.full_steps), "schedule": s.describe(), "plan": generation.plan,
                 "size": f"{images[0].size[0]}x{images[0].size[1]}", "batch_images": batch_images,
                 "queued_s": round(queued_s, 4), "timings_s": {k: round(v, 4) for k, v in timings.items()},
                 "warnings": generation.warnings, "replica": replica},
    }
