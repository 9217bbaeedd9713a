"""seer-serve: serve engine directories over HTTP (the OpenAI-style images API) on Ray Serve."""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import time

import click

from ..cli_common import command, user_errors

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@command()
@click.argument("engine_dirs", nargs=-1, required=True, metavar="[NAME=]ENGINE_DIR...")
@click.option("--replicas", default="1", show_default=True, metavar="N|MIN:MAX",
              help="Replicas per model (each loads the directory once); MIN:MAX lets Ray autoscale between them.")
@click.option("--max-batch", type=int, default=4, show_default=True,
              help="Images of requests with the same size and schedule run as one generation, up to this many "
                   "(1: no batching).")
@click.option("--batch-wait-ms", type=float, default=10.0, show_default=True,
              help="How long a replica waits for a batch to fill once a request is in.")
@click.option("--queue", type=int, default=8, show_default=True,
              help="Requests that may wait per replica beyond those it holds; past that a request gets 429 with "
                   "Retry-After at once.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--backend", type=click.Choice(["onnxruntime", "torch", "tensorrt"]), default="onnxruntime",
              show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, or cuda: each replica gets its own GPU.")
@click.option("--gpus-per-replica", type=float, default=1.0, show_default=True,
              help="GPUs Ray reserves per replica with --device cuda (0.5: two small models share a GPU).")
@click.option("--threads", type=int, default=None,
              help="CPU threads per replica [default: the machine's cores over the replicas, on cpu].")
@click.option("--memory-budget", default=None, help="Refuse a request whose estimated memory exceeds this (as seer-run).")
@click.option("--trust-torch-programs", is_flag=True, help="Let --backend torch load .pt2 programs (as seer-run).")
@click.option("--request-timeout", type=float, default=600.0, show_default=True,
              help="Seconds a request may take in all; past it: 504, and its work is cancelled.")
@click.option("--retry-after", type=int, default=1, show_default=True, help="Seconds a 429 or 503 asks clients to wait.")
@click.option("--address", default=None,
              help="A running Ray cluster to deploy on (e.g. auto, or ray://head:10001) [default: start Ray here]. "
                   "Every node must see ENGINE_DIR at the same path.")
@click.option("--metrics-port", type=int, default=None,
              help="Where this node's Prometheus metrics are served, when seer-serve starts Ray [default: Ray's].")
@user_errors
def main(engine_dirs, replicas, max_batch, batch_wait_ms, queue, host, port, backend, device, gpus_per_replica,
         threads, memory_budget, trust_torch_programs, request_timeout, retry_after, address, metrics_port):
    """Serve ENGINE_DIRs (made by seer-export) over HTTP: POST /v1/images/generations (OpenAI-style),
    GET /v1/models, /health, /ready. A model is named NAME, or by its directory's name.

    \b
    Example:
      seer-serve out/flux-tiny --replicas 2
      curl -s localhost:8000/v1/images/generations -d '{"prompt": "a red circle", "seed": 0}'
      seer-serve flux=/data/flux dit=/data/dit --device cuda --replicas 1:4 --host 0.0.0.0 --address auto
    """
    from ..errors import UsageError
    from .app import Options, describe

    options = Options(replicas=1, max_batch=max_batch, batch_wait_s=batch_wait_ms / 1000, queue=queue, backend=backend,
                      device=device, gpus_per_replica=gpus_per_replica, threads=threads, memory_budget=memory_budget,
                      trust_torch_programs=trust_torch_programs, request_timeout_s=request_timeout,
                      retry_after_s=retry_after)
    options.replicas, options.max_replicas = _replicas(replicas)
    options.check()
    models = []
    for spec in engine_dirs:
        name, directory = spec.split("=", 1) if "=" in spec else (os.path.basename(os.path.normpath(spec)), spec)
        if not NAME.fullmatch(name):
            raise UsageError(f"model name {name!r} is not a name (letters, digits, '.', '_', '-'); give one with "
                             "NAME=ENGINE_DIR")
        if name in [m.name for m in models]:
            raise UsageError(f"two models are named {name!r}; name them apart with NAME=ENGINE_DIR")
        models.append(describe(name, directory, verify=True))  # a bad directory fails here, not in every replica
    if options.threads is None and device == "cpu" and address is None:
        options.threads = max(1, (os.cpu_count() or 1) // (len(models) * (options.max_replicas or options.replicas)))
    if not 1 <= port <= 65535:
        raise UsageError(f"port {port} is not a TCP port; give one from 1 to 65535")
    if address is None:
        _check_port(host, port)
    return _serve(models, options, host, port, address, metrics_port)


def _replicas(text: str) -> tuple[int, int | None]:
    from ..errors import UsageError

    m = re.fullmatch(r"(\d{1,4})(?::(\d{1,4}))?", text)
    if m is None:
        raise UsageError(f"--replicas {text!r} is not N or MIN:MAX (e.g. 2, or 1:4)")
    low = int(m.group(1))
    return low, int(m.group(2)) if m.group(2) else None


def _check_port(host: str, port: int) -> None:
    from ..errors import UsageError

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise UsageError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port or --host") from None


def _serve(models, options, host, port, address, metrics_port) -> int:
    import logging

    import ray
    from ray import serve

    from ..errors import UsageError
    from .app import application

    init = {"address": address, "logging_level": logging.WARNING, "log_to_driver": True}
    if address is None:
        init.update(include_dashboard=False)
        if metrics_port is not None:
            init["_metrics_export_port"] = metrics_port
    ray.init(**init)
    signal.signal(signal.SIGTERM, _stop)  # ray.init put in a handler that aborts the process on SIGTERM
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        if options.device.startswith("cuda") and gpus < options.gpus_per_replica:
            raise UsageError(f"--device cuda needs {options.gpus_per_replica:g} GPU a replica and this Ray cluster has "
                             f"{gpus:g}; use --device cpu, or start Ray on GPU nodes (ray start --num-gpus N)")
        serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "WARNING"})
        try:
            serve.run(application(models, options), name="seer", route_prefix="/", blocking=False,
                      logging_config={"log_level": "WARNING"})
        except RuntimeError as e:  # a replica could not start: its constructor's error, as Ray reports it
            details = [d.message for app in serve.status().applications.values() for d in app.deployments.values()
                       if d.message]
            raise UsageError(f"the models could not be deployed: {_reason(details + [str(e)])}") from None
        names = ", ".join(f"{m.name} ({m.directory})" for m in models)
        click.echo(f"seer-serve: {names} on http://{host}:{port}: POST /v1/images/generations, GET /v1/models, "
                   "/health, /ready; Ctrl-C stops", err=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM, also while deploying (/ready can answer before serve.run
        # returns): stop serving, not a failure
        click.echo("seer-serve: stopping", err=True)
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not leave Ray's processes behind
            signal.signal(sig, signal.SIG_IGN)
        if address is None:
            serve.shutdown()
        else:
            serve.delete("seer")
        ray.shutdown()


def _stop(signum, frame):
    raise KeyboardInterrupt


def _reason(messages: list[str]) -> str:
    """A replica's own error out of Ray's report (a traceback): seer's one-line message when there is one."""
    text = "\n".join(messages)
    ours = re.findall(r"seer\.errors\.\w+: (.+)", text)
    if ours:
        return ours[-1].strip()[:500]
    lines = [line.strip() for line in text.splitlines() if "Error" in line or "error" in line] or [text.strip()]
    return lines[-1][:500]


if __name__ == "__main__":
    sys.exit(main())
