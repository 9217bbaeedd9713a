"""Golden vectors for libseer's conformance test, written by the Python runtime (the oracle).

    .venv/bin/python cpp/tests/golden.py ENGINE_DIR OUT_DIR [--case JSON]...

For each case (a request, as Pipeline takes it): the token ids of every text encoder, the noise of its
seeds, the sampler's per-step values, the final latents and the 8-bit images. OUT_DIR/golden.json lists
them; arrays go to raw little-endian files beside it (float32 latents, uint8 RGB images)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from seer import Pipeline
from seer.runtime.noise import randn

PROMPTS = ["a red circle", "a blue square at the top left", "two green triangles", "A Yellow CIRCLE, bottom-right!",
           "  spaces   and\ttabs  ", "café crème brûlée", "数字 42 and emoji 🎨", "<|endoftext|> special </s> tokens",
           "a very long prompt " + "with many repeated words " * 12]


def images_hw(pipe: Pipeline, case: dict) -> tuple[int, int]:
    d = pipe.manifest["defaults"]
    return case.get("height", d["height"]), case.get("width", d["width"])


def run_case(pipe: Pipeline, case: dict, out: Path, index: int) -> dict:
    flux = pipe.family.conditioning == "prompt"
    n, seed = case.get("images", 1), case.get("seed", 0)
    kwargs = {k: case[k] for k in ("steps", "height", "width", "guidance_scale", "interval", "order", "warmup",
                                   "final_full", "schedule_style", "no_cache", "plan") if k in case}
    condition = {"prompt": [case["prompt"]] * n} if flux else {"class_labels": [case["class_label"]] * n}
    pipe(**condition, seed=[seed + k for k in range(n)], **kwargs)  # warm: the timed run below is a served one
    t = time.perf_counter()
    g = pipe(**condition, seed=[seed + k for k in range(n)], return_latents=True, **kwargs)
    seconds = time.perf_counter() - t
    latents = np.ascontiguousarray(g.latents, dtype=np.float32)
    images = np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in g.images])
    noise = np.concatenate([randn(pipe.family.noise_shape(1, *images_hw(pipe, case)), seed + k) for k in range(n)])
    (out / f"case{index}_noise.bin").write_bytes(noise.astype(np.float32).tobytes())
    (out / f"case{index}_latents.bin").write_bytes(latents.tobytes())
    (out / f"case{index}_images.bin").write_bytes(images.tobytes())
    height, width = images.shape[1:3]
    tokens = pipe.family.sequence(height, width)[0]
    sampling = pipe.sampler.plan(g.schedule.steps, tokens, pipe.dtypes["latents"])
    record = {"request": case, "noise": f"case{index}_noise.bin", "latents": f"case{index}_latents.bin", "latents_shape": list(latents.shape),
              "images": f"case{index}_images.bin", "images_shape": list(images.shape),
              "full_steps": g.schedule.full_steps, "python_seconds": seconds,
              "python_seconds_denoise": g.timings["denoise"], "model_timesteps": [float(v) for v in sampling.model_timesteps]}
    if hasattr(sampling, "sigmas"):
        record["sigmas"] = [float(v) for v in sampling.sigmas]
    return record


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("engine_dir")
    ap.add_argument("out")
    ap.add_argument("--case", action="append", default=[], help="a request as JSON (Pipeline's keywords)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = Pipeline.load(args.engine_dir)
    golden = {"engine_dir": str(Path(args.engine_dir).resolve()), "digest": pipe.digest, "cases": [], "tokens": [],
              "noise": []}
    for i, text in enumerate(args.case):
        golden["cases"].append(run_case(pipe, json.loads(text), out, i))
    if pipe.family.conditioning == "prompt":
        for name, tok in pipe.family.tokenizers.items():
            t = tok(PROMPTS)
            for p, ids, cut in zip(PROMPTS, t.ids.tolist(), t.truncated):
                golden["tokens"].append({"encoder": name, "prompt": p, "ids": ids, "truncated": cut})
    for seed, count in ((0, 16), (7, 1024), (123456789, 1000), (2**32 - 1, 4099)):
        name = f"noise_{seed}_{count}.bin"
        (out / name).write_bytes(randn((count,), seed).astype(np.float32).tobytes())
        golden["noise"].append({"seed": seed, "count": count, "file": name})
    (out / "golden.json").write_text(json.dumps(golden, indent=1) + "\n")


if __name__ == "__main__":
    main()
