"""seer-serve against the same requests through Pipeline in one process: throughput and p50/p95 latency at
several concurrencies, with and without batching, in one run (CPU, loopback).

    .venv/bin/python scripts/bench_serve.py out/flux-tiny --steps 28
    .venv/bin/python scripts/bench_serve.py out/mid --size 256x256 --steps 10 --requests 16

Rows:
- `pipeline`: one Pipeline on every core, the clients' threads calling it directly (it runs one request at a
  time, so they queue at its lock): the reference.
- `serve 1x{cores} b1`: one replica on every core, no batching: the serving layer's own cost (HTTP, Ray's
  routing, PNG and base64) is this row against `pipeline`.
- `serve 1x{cores} bB`: the same replica batching up to B images.
- `serve Rx{t} bB`: R replicas of t threads each.
Latencies are client-side, from sending the request to the decoded response.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import requests


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def measure(call, bodies, concurrency):
    latencies = []

    def one(body):
        t = time.perf_counter()
        call(body)
        latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, bodies))
    wall = time.perf_counter() - t0
    return {"images_per_s": sum(b["n"] for b in bodies) / wall, "p50_s": statistics.median(latencies),
            "p95_s": percentile(latencies, 0.95), "requests": len(bodies)}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("engine_dir")
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--size", default="auto")
    ap.add_argument("--requests", type=int, default=48, help="requests per concurrency level")
    ap.add_argument("--concurrency", default="1,4,8")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--replicas", type=int, default=2, help="the multi-replica rows' replicas (cores split)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()

    import ray
    from ray import serve

    from seer import Pipeline
    from seer.serve.api import parse_size
    from seer.serve.app import Options, application, describe

    cores = os.cpu_count() or 1
    levels = [int(c) for c in args.concurrency.split(",")]
    height, width = parse_size(args.size)
    prompts = ["a red circle", "a blue square at the top", "a green triangle at the left", "a yellow circle",
               "two shapes side by side"]

    def bodies(level):
        count = args.requests if level > 1 else max(4, args.requests // 4)
        return [{"prompt": prompts[i % len(prompts)], "seed": 100 + i, "steps": args.steps, "size": args.size, "n": 1}
                for i in range(count)]

    results = []
    pipe = Pipeline.load(args.engine_dir, threads=cores)
    pipe.warmup(height=height, width=width)

    def direct(body):
        pipe(body["prompt"], seed=body["seed"], steps=body["steps"], height=height, width=width).image.tobytes()

    for level in levels:
        results.append({"row": "pipeline", "concurrency": level, **measure(direct, bodies(level), level)})
        print(results[-1], file=sys.stderr)
    del pipe

    port = free_port()
    ray.init(num_cpus=max(cores, args.replicas) + 1, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING")
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "WARNING"})
    url = f"http://127.0.0.1:{port}/v1/images/generations"
    session = requests.Session()

    def served(body):
        r = session.post(url, json=body, timeout=600)
        if r.status_code != 200:
            raise SystemExit(f"error: the server answered {r.status_code}: {r.text[:300]}")
        r.json()

    split = max(1, cores // args.replicas)
    configs = [(f"serve 1x{cores} b1", 1, cores, 1), (f"serve 1x{cores} b{args.max_batch}", 1, cores, args.max_batch),
               (f"serve {args.replicas}x{split} b1", args.replicas, split, 1),
               (f"serve {args.replicas}x{split} b{args.max_batch}", args.replicas, split, args.max_batch)]
    model = describe("m", args.engine_dir)
    try:
        for row, replicas, threads, batch in configs:
            options = Options(replicas=replicas, threads=threads, max_batch=batch, queue=64)
            serve.run(application([model], options), name="seer", route_prefix="/", blocking=False)
            for level in levels:
                measure(served, bodies(level)[:max(2, level)], level)  # the size's first HTTP requests
                results.append({"row": row, "concurrency": level, **measure(served, bodies(level), level)})
                print(results[-1], file=sys.stderr)
    finally:
        serve.shutdown()
        ray.shutdown()

    base = {r["concurrency"]: r for r in results if r["row"] == "pipeline"}
    print(f"\n{args.engine_dir}: {args.steps} steps, size {args.size}, {cores} cores\n")
    print("| row | concurrency | images/s | vs pipeline | p50 s | p95 s | p50 vs pipeline |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        b = base[r["concurrency"]]
        print(f"| {r['row']} | {r['concurrency']} | {r['images_per_s']:.2f} | "
              f"{100 * (r['images_per_s'] / b['images_per_s'] - 1):+.1f}% | {r['p50_s']:.3f} | {r['p95_s']:.3f} | "
              f"{100 * (r['p50_s'] / b['p50_s'] - 1):+.1f}% |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"engine_dir": args.engine_dir, "steps": args.steps, "size": args.size, "cores": cores,
                       "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
