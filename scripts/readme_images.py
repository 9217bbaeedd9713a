"""Regenerates the README's pictures from a flux-tiny engine directory:

    .venv/bin/python scripts/readme_images.py out/flux-tiny docs/images

- flux-tiny-demo.png: exactly what `bash scripts/demo.sh` writes (its prompt, seed 0, 50 steps, 6/1/3);
- flux-tiny-prompts.png: a row per schedule (--no-cache, then 6/1/3), a column per prompt, 3x enlarged.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

from seer.runtime.pipeline import Pipeline

DEMO = "a red circle at the top left"
PROMPTS = [DEMO, "a blue square at the bottom right", "a small green triangle in the centre",
           "a large yellow circle at the top right", "a purple triangle at the bottom left",
           "a small orange square at the top left"]


def main(engine_dir: str, out_dir: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pipe = Pipeline.load(engine_dir)
    pipe(DEMO, seed=0, steps=50, interval=6, order=1, warmup=3).image.save(out / "flux-tiny-demo.png")
    rows = [[pipe(p, seed=0, steps=50, **kw).image for p in PROMPTS]
            for kw in ({"no_cache": True}, {"interval": 6, "order": 1, "warmup": 3})]
    size, pad = rows[0][0].width * 3, 4
    grid = Image.new("RGB", (len(PROMPTS) * (size + pad) + pad, len(rows) * (size + pad) + pad), "white")
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            grid.paste(image.resize((size, size), Image.Resampling.NEAREST), (pad + c * (size + pad), pad + r * (size + pad)))
    grid.save(out / "flux-tiny-prompts.png")


if __name__ == "__main__":
    main(*sys.argv[1:3])
