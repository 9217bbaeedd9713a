"""Peak memory of real requests against seer's estimate (runtime/memory.py): the measurements its
constants were fitted to. Each request runs in a fresh process; its peak RSS is read from the
kernel's high-water mark (reset through /proc/self/clear_refs, Linux only) after loading and a
small warm-up, once for the denoising loop and once for the VAE decoder.

    python scripts/memory_calibration.py out/flux-tiny --sizes 256 512 768 1024 --batches 1 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def measure(directory: str, height: int, width: int, batch: int) -> dict:
    from seer.runtime.pipeline import Pipeline

    pipe = Pipeline.load(directory)
    pipe("warm-up", steps=2, height=64, width=64, interval=1, warmup=1)
    base = _status("VmRSS")
    _reset_peak()
    marks = {}

    def on_step(i, full, latents):
        if i == 3:  # the loop's peak, before the decoder runs
            marks["loop"], marks["held"] = _status("VmHWM") - base, _status("VmRSS") - base
            _reset_peak()

    pipe(["a red circle"] * batch, steps=4, height=height, width=width, interval=2, warmup=2, order=1,
         on_step=on_step)
    return {**marks, "decoder": _status("VmHWM") - base - marks["held"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("engine_dirs", nargs="*")
    ap.add_argument("--sizes", nargs="+", default=["256", "512", "768", "1024", "2048x256"],
                    help="S (square) or HxW")
    ap.add_argument("--batches", nargs="+", type=int, default=[1])
    ap.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        d, h, w, b = args.one
        print(json.dumps(measure(d, int(h), int(w), int(b))))
        return

    from seer.runtime.pipeline import Pipeline

    print("| directory | size | batch | loop MB | estimate MB | ratio | decoder MB | estimate MB | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for d in args.engine_dirs:
        pipe = Pipeline.load(d, verify=False)
        for size in args.sizes:
            h, w = (int(v) for v in (size.split("x") if "x" in size else (size, size)))
            for b in args.batches:
                out = subprocess.run([sys.executable, __file__, "--one", d, str(h), str(w), str(b)],
                                     capture_output=True, text=True, check=True).stdout
                m = json.loads(out.strip().splitlines()[-1])
                e = pipe.estimate(b, h, w)
                loop = e.buffers + e.transformer
                print(f"| {d} | {h}x{w} | {b} | {m['loop'] / 1e6:.0f} | {loop / 1e6:.0f} | {loop / m['loop']:.2f} "
                      f"| {m['decoder'] / 1e6:.0f} | {e.decoder / 1e6:.0f} | {e.decoder / m['decoder']:.2f} |",
                      flush=True)


if __name__ == "__main__":
    main()
