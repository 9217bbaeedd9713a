"""seer-serve: the OpenAI-style images API on a real Ray Serve instance (CPU, loopback only).

Oracles: every served image is compared with the same request run through `Pipeline` in this process, and
every 400 with the message the Pipeline (seer-run) gives for the same arguments. The Ray part starts one local
Ray instance for the module and deploys the application in the configurations each test needs."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from cli_contract import one_line_error, run
from PIL import Image

from seer import Pipeline
from seer.errors import UsageError
from seer.serve.api import ImageRequest, RequestError, condition, parse_body

requests = pytest.importorskip("requests")


# ---------------------------------------------------------------- the request format, without Ray


def _refused(body, status: int, *needles, models=("flux",)):
    with pytest.raises(RequestError) as e:
        parse_body(json.dumps(body).encode() if not isinstance(body, bytes) else body, list(models))
    assert e.value.status == status, e.value.message
    for n in needles:
        assert n in e.value.message, e.value.message
    assert "\n" not in e.value.message


def test_parses_openai_and_seer_fields():
    r = parse_body(json.dumps({"prompt": "a red circle", "n": 3, "size": "96x64", "response_format": "b64_json",
                               "seed": 5, "steps": 20, "plan": "k10", "guidance": 2.0, "user": "u1"}).encode(), ["flux"])
    assert (r.model, r.prompt, r.n, r.width, r.height, r.seeds) == ("flux", "a red circle", 3, 96, 64, [5, 6, 7])
    assert r.settings == {"steps": 20, "plan": "k10", "guidance_scale": 2.0}
    auto = parse_body(b'{"prompt": "x", "size": "auto"}', ["flux"])
    assert (auto.height, auto.width) == (None, None) and 0 <= auto.seed < 2**32  # a random seed, returned


def test_batch_key_is_size_and_schedule_only():
    a = parse_body(b'{"prompt": "a", "seed": 1, "steps": 20}', ["flux"])
    b = parse_body(b'{"prompt": "b", "seed": 9, "n": 2, "steps": 20}', ["flux"])
    c = parse_body(b'{"prompt": "a", "seed": 1, "steps": 21}', ["flux"])
    d = parse_body(b'{"prompt": "a", "seed": 1, "steps": 20, "size": "32x64"}', ["flux"])
    assert a.key == b.key and len({a.key, c.key, d.key}) == 3


@pytest.mark.parametrize("body,status,needle", [
    (b"{bad", 400, "not JSON"),
    (b"[1]", 400, "JSON object"),
    ({"prompt": "x", "sead": 1}, 400, "unknown field 'sead'"),
    ({"n": 1}, 400, "no prompt"),
    ({"prompt": 7}, 400, "prompt must be a string"),
    ({"prompt": "x", "n": 0}, 400, "n must be between 1 and 16"),
    ({"prompt": "x", "n": 1.5}, 400, "n must be an integer"),
    ({"prompt": "x", "n": True}, 400, "n must be an integer"),
    ({"prompt": "x", "size": "1024"}, 400, "WIDTHxHEIGHT"),
    ({"prompt": "x", "size": "-64x64"}, 400, "WIDTHxHEIGHT"),
    ({"prompt": "x", "response_format": "url"}, 400, "b64_json"),
    ({"prompt": "x", "output_format": "jpeg"}, 400, "png"),
    ({"prompt": "x", "seed": 2**32 - 1, "n": 2}, 400, "outside [0, 2**32)"),
    ({"prompt": "x", "seed": -1}, 400, "outside [0, 2**32)"),
    ({"prompt": "x", "steps": [20]}, 400, "steps must be a number"),
    ({"prompt": "x", "model": "dall-e-3"}, 404, "no model named 'dall-e-3'"),
    ({"prompt": "x" * (1 << 20)}, 413, "bytes"),
])
def test_refuses_bad_requests_in_one_line(body, status, needle):
    _refused(body, status, needle)


def test_several_models_need_a_name():
    _refused({"prompt": "x"}, 400, "name one in 'model'", "flux, dit", models=("flux", "dit"))
    assert parse_body(b'{"prompt": "7", "model": "dit"}', ["flux", "dit"]).model == "dit"


def test_class_conditional_models_read_the_prompt_as_a_class():
    assert condition(ImageRequest("dit", "207", None, 1, 0, None, None), "class") == {"class_labels": "207"}
    assert condition(ImageRequest("dit", "x", 3, 1, 0, None, None), "class") == {"class_labels": 3}
    assert condition(ImageRequest("dit", "red circle", None, 1, 0, None, None), "class") == {"class_labels": "red circle"}
    with pytest.raises(RequestError, match="takes a prompt, not class_label"):
        condition(ImageRequest("flux", None, 3, 1, 0, None, None), "prompt")


# ---------------------------------------------------------------- per-image seeds: what batching rests on


def test_batched_images_equal_each_request_alone(engine_modules, engine_dit):
    pipe = Pipeline.load(engine_modules)
    prompts, seeds = ["a red circle", "a blue square at the top", "a green triangle"], [3, 11, 2**32 - 1]
    batch = pipe(prompts, seed=seeds, steps=12, return_latents=True)
    for k, (p, s) in enumerate(zip(prompts, seeds)):
        alone = pipe(p, seed=s, steps=12, return_latents=True)
        np.testing.assert_array_equal(alone.latents[0], batch.latents[k])
    # a list of seeds is not one seed for the batch: the second image differs from batch-seed noise
    assert not np.array_equal(pipe(prompts, seed=3, steps=12, return_latents=True).latents[1], batch.latents[1])
    dit = Pipeline.load(engine_dit)  # classifier-free guidance doubles the batch: the rows still match
    batch = dit(class_labels=[1, 3], seed=[4, 9], steps=10, guidance_scale=4.0, return_latents=True)
    for k, (c, s) in enumerate(((1, 4), (3, 9))):
        alone = dit(class_labels=c, seed=s, steps=10, guidance_scale=4.0, return_latents=True)
        np.testing.assert_array_equal(alone.latents[0], batch.latents[k])
    with pytest.raises(UsageError, match="2 seeds for 3 images"):
        pipe(prompts, seed=[1, 2], steps=4)
    with pytest.raises(UsageError, match="seed must be an int"):
        pipe(prompts[:2], seed=[1, "2"], steps=4)


# ---------------------------------------------------------------- seer-serve's command line, before Ray starts


def test_cli_refuses_bad_setups_in_one_line(engine_modules, tmp_path):
    from seer.serve.cli import main

    one_line_error(*run([tmp_path / "missing"], main), "is not a directory")
    one_line_error(*run([engine_modules, "--replicas", "two"], main), "--replicas 'two' is not N or MIN:MAX")
    one_line_error(*run([engine_modules, "--replicas", "4:2"], main), "MIN <= MAX")
    one_line_error(*run([engine_modules, "--max-batch", "0"], main), "max-batch must be at least 1")
    one_line_error(*run([f"a={engine_modules}", f"a={engine_modules}"], main), "two models are named 'a'")
    one_line_error(*run([f"../x={engine_modules}"], main), "is not a name")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        one_line_error(*run([engine_modules, "--port", busy.getsockname()[1]], main), "cannot listen on", "--port")


# ---------------------------------------------------------------- a real Ray Serve instance


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_serve():
    ray = pytest.importorskip("ray")
    from ray import serve

    port, metrics = _free_port(), _free_port()
    ray.init(num_cpus=6, include_dashboard=False, log_to_driver=False, _metrics_export_port=metrics,
             logging_level="WARNING")
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "WARNING"})
    try:
        yield {"url": f"http://127.0.0.1:{port}", "metrics": f"http://127.0.0.1:{metrics}/metrics"}
    finally:
        serve.shutdown()
        ray.shutdown()


def _deploy(models: dict, **options):
    from ray import serve

    from seer.serve.app import Options, application, describe

    serve.run(application([describe(n, str(d)) for n, d in models.items()], Options(threads=1, **options)),
              name="seer", route_prefix="/", blocking=False)


def _post(url, body, timeout=60):
    r = requests.post(url + "/v1/images/generations", json=body, timeout=timeout)
    return r.status_code, r.json(), r.headers


def _image(item) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))))


def _replica_pids(model: str) -> list[int]:
    import psutil

    return [p.pid for p in psutil.process_iter(["cmdline"])
            if any(f"ServeReplica:seer:seer-{model}" in part for part in (p.info["cmdline"] or []))]


def _rss(pids) -> int:
    import psutil

    return sum(psutil.Process(p).memory_info().rss for p in pids)


PROMPTS = ["a red circle", "a blue square at the top", "a green triangle at the left", "a yellow circle", "two shapes"]


def test_serves_200_requests_at_concurrency_8_each_equal_to_the_pipeline(ray_serve, engine_modules):
    _deploy({"flux-tiny": engine_modules}, replicas=2, max_batch=4)
    url = ray_serve["url"]
    bodies = [{"prompt": PROMPTS[i % 5], "seed": 1000 + i, "steps": 16, "n": 1 + (i % 7 == 0)} for i in range(240)]
    with ThreadPoolExecutor(8) as pool:  # warm-up: every replica has seen every batch size
        list(pool.map(lambda b: _post(url, b), bodies[200:]))
    pids = _replica_pids("flux-tiny")
    assert len(pids) == 2
    before = _rss(pids)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda b: _post(url, b), bodies[:200]))
    after = _rss(pids)
    assert [a[0] for a in answers] == [200] * 200, [a[1] for a in answers if a[0] != 200][:3]
    pipe = Pipeline.load(engine_modules)
    for body, (_, answer, _) in zip(bodies, answers):
        assert answer["seer"]["seeds"] == [body["seed"] + k for k in range(body["n"])]
        assert len(answer["data"]) == body["n"] and answer["seer"]["forecast_steps"] == 16 - len(answer["seer"]["full_steps"])
        for k, item in enumerate(answer["data"]):
            reference = pipe(body["prompt"], seed=body["seed"] + k, steps=16).image
            np.testing.assert_array_equal(_image(item), np.asarray(reference))
    assert max(a[1]["seer"]["batch_images"] for a in answers) > 1  # requests were batched
    assert len({a[1]["seer"]["replica"] for a in answers}) == 2  # and spread over both replicas
    assert after - before < 64 * 2**20, f"replica memory grew {(after - before) / 2**20:.0f} MiB over 200 requests"


def test_models_health_errors_and_metrics(ray_serve, engine_modules, engine_dit):
    _deploy({"flux-tiny": engine_modules, "dit": engine_dit}, replicas=1, max_batch=2)
    url = ray_serve["url"]
    assert requests.get(url + "/health", timeout=10).json() == {"status": "ok"}
    ready = requests.get(url + "/ready", timeout=10)
    assert ready.status_code == 200 and ready.json()["replicas"] == {"flux-tiny": 1, "dit": 1}
    listed = requests.get(url + "/v1/models", timeout=10).json()
    assert [m["id"] for m in listed["data"]] == ["flux-tiny", "dit"]
    assert listed["data"][1]["seer"]["family"] == "dit"
    # a class-conditional model reads the prompt as a class id or name
    status, answer, _ = _post(url, {"model": "dit", "prompt": "3", "seed": 4, "steps": 10, "guidance": 4.0})
    assert status == 200, answer
    expected = Pipeline.load(engine_dit)(class_labels=3, seed=4, steps=10, guidance_scale=4.0).image
    np.testing.assert_array_equal(_image(answer["data"][0]), np.asarray(expected))
    # a bad value gets 400 and the Pipeline's own message (what seer-run prints)
    pipe = Pipeline.load(engine_modules)
    for body, kwargs in (({"size": "63x64"}, {"width": 63, "height": 64}), ({"steps": 5000}, {"steps": 5000}),
                         ({"plan": "nope"}, {"plan": "nope"}), ({"interval": 0}, {"interval": 0})):
        with pytest.raises(UsageError) as expected_error:
            pipe("x", **kwargs)
        status, answer, _ = _post(url, {"model": "flux-tiny", "prompt": "x", **body})
        assert (status, answer["error"]["message"]) == (400, str(expected_error.value))
    status, answer, _ = _post(url, {"prompt": "x"})
    assert status == 400 and "name one in 'model'" in answer["error"]["message"]
    # more images than --max-batch: several generations, each image still its own seed's
    status, answer, _ = _post(url, {"model": "flux-tiny", "prompt": "a red circle", "n": 3, "seed": 50, "steps": 8})
    assert status == 200 and answer["seer"]["batch_images"] == 2 and answer["seer"]["seeds"] == [50, 51, 52]
    for k, item in enumerate(answer["data"]):
        np.testing.assert_array_equal(_image(item), np.asarray(pipe("a red circle", seed=50 + k, steps=8).image))
    # one bad request batched with good ones fails alone
    with ThreadPoolExecutor(4) as pool:
        mixed = list(pool.map(lambda b: _post(url, {"model": "flux-tiny", "steps": 8, **b}),
                              [{"prompt": "a red circle"}, {"prompt": "  "}, {"prompt": "a blue square"}] * 2))
    assert [m[0] for m in mixed] == [200, 400, 200] * 2
    # Prometheus metrics through Ray's exporter
    wanted = ('seer_steps_total{', 'kind="forecast"', 'kind="full"', 'seer_requests_total{', 'status="400"',
              'status="200"', "seer_in_flight{", "seer_request_seconds_bucket{", "seer_images_total{", 'model="dit"')
    deadline, text = time.time() + 60, ""
    while time.time() < deadline and not all(w in text for w in wanted):
        time.sleep(2)
        text = requests.get(ray_serve["metrics"], timeout=10).text
    assert [w for w in wanted if w not in text] == [], text[-2000:]


def test_overload_gets_429_at_once_and_recovers(ray_serve, engine_modules):
    _deploy({"flux-tiny": engine_modules}, replicas=1, max_batch=1, queue=2, retry_after_s=3)
    url = ray_serve["url"]

    def timed(i):
        t = time.perf_counter()
        status, answer, headers = _post(url, {"prompt": "a red circle", "seed": i, "steps": 50, "n": 4})
        return status, time.perf_counter() - t, headers.get("Retry-After"), answer

    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(timed, range(24)))
    refused = [a for a in answers if a[0] == 429]
    served = [a for a in answers if a[0] == 200]
    assert len(refused) + len(served) == 24, [a[3] for a in answers if a[0] not in (200, 429)][:2]
    # 1 replica holds 2 (one running, one gathering) and 2 wait: the rest are refused
    assert len(served) <= 8 and len(refused) >= 16
    assert all(a[2] == "3" for a in refused) and "full queue" in refused[0][3]["error"]["message"]
    assert max(a[1] for a in refused) < min(3.0, max(a[1] for a in served))  # refused at once, not after waiting
    assert _post(url, {"prompt": "a red circle", "steps": 8})[0] == 200  # recovered


def test_a_killed_replica_fails_its_requests_clearly_and_comes_back(ray_serve, engine_modules):
    _deploy({"flux-tiny": engine_modules}, replicas=2, max_batch=2, queue=16)
    url = ray_serve["url"]
    victim = _replica_pids("flux-tiny")[0]
    results = []

    def load():
        with ThreadPoolExecutor(8) as pool:
            results.extend(pool.map(lambda i: _post(url, {"prompt": "a red circle", "seed": i, "steps": 50}), range(80)))

    worker = threading.Thread(target=load)
    worker.start()
    time.sleep(1.0)
    os.kill(victim, signal.SIGKILL)
    worker.join(timeout=120)
    assert not worker.is_alive(), "requests hung after a replica was killed"
    statuses = [r[0] for r in results]
    assert len(statuses) == 80 and set(statuses) <= {200, 503}, set(statuses)
    for status, answer, headers in results:
        if status == 503:
            assert "stopped" in answer["error"]["message"] and headers.get("Retry-After")
    deadline = time.time() + 90
    while time.time() < deadline:
        ready = requests.get(url + "/ready", timeout=10).json()
        if ready.get("replicas", {}).get("flux-tiny") == 2 and victim not in _replica_pids("flux-tiny"):
            break
        time.sleep(1)
    assert ready.get("replicas", {}).get("flux-tiny") == 2, ready
    with ThreadPoolExecutor(4) as pool:
        later = list(pool.map(lambda i: _post(url, {"prompt": "a blue square", "seed": i, "steps": 8}), range(12)))
    assert [s for s, _, _ in later] == [200] * 12


# ---------------------------------------------------------------- the seer-serve command, as a process


def _seer_serve(*args):
    import subprocess
    import sys

    exe = os.path.join(os.path.dirname(sys.executable), "seer-serve")
    return subprocess.Popen([exe, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_seer_serve_serves_until_sigterm(engine_modules):
    port = _free_port()
    proc = _seer_serve(f"tiny={engine_modules}", "--port", port, "--replicas", 1)
    try:
        deadline, ready = time.time() + 120, None
        while time.time() < deadline and proc.poll() is None:
            try:
                ready = requests.get(f"http://127.0.0.1:{port}/ready", timeout=5)
                if ready.status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(1)
        assert ready is not None and ready.status_code == 200, proc.stderr.read() if proc.poll() is not None else ""
        status, answer, _ = _post(f"http://127.0.0.1:{port}", {"prompt": "a red circle", "seed": 3, "steps": 8})
        assert status == 200 and answer["seer"]["model"] == "tiny"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "seer-serve: stopping" in err and "Traceback" not in err, err[-3000:]


def test_seer_serve_reports_a_replica_that_cannot_start_in_one_line(engine_modules):
    proc = _seer_serve(engine_modules, "--port", _free_port(), "--backend", "tensorrt")  # no GPU: every replica fails
    out, err = proc.communicate(timeout=240)
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and lines == [err.strip().splitlines()[-1]], err[-3000:]
    assert "could not be deployed: the tensorrt backend runs on an NVIDIA GPU" in lines[0]
