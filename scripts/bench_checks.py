"""What the request checks cost: the same requests with the per-step NaN/Inf check on and off (the
argument and memory checks run before the loop either way and are included in both), flux-tiny and
the `mid` size side by side, interleaved rounds, median.

    python scripts/bench_checks.py out/flux-tiny out/mid --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("engine_dirs", nargs="+", help="engine directories, e.g. flux-tiny's and mid's")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    from seer.runtime.pipeline import Pipeline

    print(f"{args.steps} steps, TaylorSeer 6/1/3, {args.backend} on {args.device}, median of {args.repeats} "
          "interleaved rounds")
    print("| directory | size | check | total ms | denoise ms | per step us |")
    print("|---|---|---|---|---|---|")
    for d in args.engine_dirs:
        pipe = Pipeline.load(d, backend=args.backend, device=args.device, trust_torch_programs=True)  # exported here
        pipe.warmup()
        times: dict[bool, list[dict]] = {True: [], False: []}
        for _ in range(args.repeats):
            for on in (True, False):  # interleaved: drift in the machine's speed hits both alike
                pipe.check_finite = on
                t = time.perf_counter()
                g = pipe("a red circle at the top left", seed=0, steps=args.steps)
                times[on].append({"total": time.perf_counter() - t, "denoise": g.timings["denoise"]})
        size = f"{pipe.manifest['defaults']['height']}x{pipe.manifest['defaults']['width']}"
        med = {on: {k: statistics.median(r[k] for r in rs) for k in ("total", "denoise")} for on, rs in times.items()}
        for on in (True, False):
            print(f"| {d} | {size} | {'on' if on else 'off'} | {med[on]['total'] * 1e3:.1f} | "
                  f"{med[on]['denoise'] * 1e3:.1f} | |")
        # the up-front checks (types, ranges, the memory estimate and the free-memory query), alone
        from seer.runtime import arguments, memory

        n = 2000
        t = time.perf_counter()
        for _ in range(n):
            arguments.check_types("a red circle", 0, args.steps, None, None, None, None, None, None, 0,
                                  "taylorseer", False, False, None)
            memory.check(pipe.estimate(1, 512, 512), 0, args.device, None, "")
        upfront_us = (time.perf_counter() - t) / n * 1e6
        # the per-step check alone, on this size's prediction and latents: robust to a busy machine
        buf = next(iter(pipe._buffers.values()))
        watch, pred, scratch = buf["watch"], buf["pred"], buf["wide"]
        watch.enabled = True
        t = time.perf_counter()
        for i in range(n):
            watch.step(i % args.steps, pred, pred, scratch)
        pipe.backend.synchronize()
        step_us = (time.perf_counter() - t) / n * 1e6
        diff = (med[True]["denoise"] - med[False]["denoise"]) / args.steps
        print(f"| {d} | {size} | cost | {(med[True]['total'] - med[False]['total']) * 1e3:+.1f} | "
              f"{(med[True]['denoise'] - med[False]['denoise']) * 1e3:+.1f} | {diff * 1e6:+.1f} |", flush=True)
        print(f"| {d} | {size} | up-front checks alone | {upfront_us / 1e3:.3f} | | |")
        print(f"| {d} | {size} | per-step check alone | | {step_us * args.steps / 1e3:.3f} | {step_us:.1f} |",
              flush=True)
        # what loading checks: the manifest's schema, consistency and confinement (each file's
        # sha256, which verification always did, apart), against the whole load
        from seer.engines.manifest import open_engine_dir

        k = 20
        t = time.perf_counter()
        for _ in range(k):
            open_engine_dir(d, verify=False)
        checks_ms = (time.perf_counter() - t) / k * 1e3
        t = time.perf_counter()
        open_engine_dir(d, verify=True)
        hashed_ms = (time.perf_counter() - t) * 1e3
        t = time.perf_counter()
        Pipeline.load(d, backend=args.backend, device=args.device)
        load_ms = (time.perf_counter() - t) * 1e3
        print(f"| {d} | {size} | load: manifest checks / with sha256 / whole load | {checks_ms:.1f} / "
              f"{hashed_ms:.1f} / {load_ms:.1f} | | |", flush=True)


if __name__ == "__main__":
    main()
