"""seer-eval: the quality harness on the command line."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..cli_common import user_errors


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("engine_dirs", nargs=-1, required=True, type=click.Path())
@click.option("--schedule", "-s", "schedules", multiple=True, default=("none", "6/1/3"), show_default=True,
              help="'none' (every step full) or INTERVAL/ORDER/WARMUP[/FINAL_FULL]; repeat for more rows.")
@click.option("--prompts", "count", type=int, default=None,
              help="How many prompts [default: 36 of the shapes world's balanced set, or all of --prompt-file].")
@click.option("--prompt-file", type=click.Path(dir_okay=False), default=None,
              help="One prompt per line instead of the shapes world (prompt following is then not judged).")
@click.option("--seed", "seeds", type=int, multiple=True, default=(0,), show_default=True,
              help="Seeds; repeat for more images per prompt.")
@click.option("--steps", type=int, default=None, help="Denoising steps [default: the directory's].")
@click.option("--backend", type=click.Choice(["onnxruntime", "torch"]), default="onnxruntime", show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, or cuda[:N] for a GPU.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the full report (every image's numbers) to this file.")
@click.option("--images", "image_dir", type=click.Path(file_okay=False), default=None,
              help="Also save every generated image under this directory, one folder per row.")
@user_errors
def main(engine_dirs, schedules, count, prompt_file, seeds, steps, backend, device, json_path, image_dir):
    """Measure prompt following and fidelity to --no-cache for schedules and engine directories.

    Every row is one (ENGINE_DIR, schedule); PSNR and SSIM compare each image with the --no-cache
    image of the same prompt and seed from the first ENGINE_DIR. Pass a --cache modules and a
    --cache lite directory of the same model to compare cache granularities.

    \b
    Example:
      seer-eval out/flux-tiny out/flux-tiny-lite -s none -s 6/1/3 -s 4/2/3 --json eval.json
    """
    from .harness import ScheduleSpec, evaluate, load_prompts, table

    specs = [ScheduleSpec.parse(s) for s in schedules]
    prompts = load_prompts(count, prompt_file)
    report = evaluate(list(engine_dirs), specs, prompts, list(seeds), steps=steps, backend=backend, device=device,
                      image_dir=image_dir, progress=lambda m: click.echo(m, err=True))
    click.echo(table(report))
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(report, indent=1) + "\n")
        click.echo(f"wrote {json_path}", err=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("engine_dirs", nargs=-1, required=True, type=click.Path())
@click.option("--schedule", "-s", "schedules", multiple=True, default=("6/1/3", "4/2/3", "3/1/3"), show_default=True,
              help="INTERVAL/ORDER/WARMUP[/FINAL_FULL]; repeat for more (--no-cache is always measured).")
@click.option("--prompts", "count", type=int, default=8, show_default=True, help="Prompts of the balanced set.")
@click.option("--seed", "seeds", type=int, multiple=True, default=(0,), show_default=True)
@click.option("--steps", type=int, default=None, help="Denoising steps [default: the directory's].")
@click.option("--backend", type=click.Choice(["onnxruntime", "torch", "tensorrt"]), default="onnxruntime",
              show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--peers/--no-peers", default=True, show_default=True,
              help="Also run diffusers on the same weights: no cache, its TaylorSeer hook, its FirstBlockCache.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="out/bench", show_default=True,
              help="Where bench.json, bench.md and bench.png go.")
@user_errors
def bench_main(engine_dirs, schedules, count, seeds, steps, backend, device, peers, out_dir):
    """Speed and quality of schedules against --no-cache, the schedule's ideal, and diffusers.

    Pass a --cache modules and a --cache lite directory of the same model to compare both.

    \b
    Example:
      seer-bench out/flux-tiny out/flux-tiny-lite -s 6/1/3 -s 4/2/3 --out out/bench
    """
    from . import bench
    from .harness import ScheduleSpec, load_prompts

    specs = [ScheduleSpec.parse(s) for s in schedules]
    report = bench.run(list(engine_dirs), specs, load_prompts(count), list(seeds), steps, backend, device, peers,
                       progress=lambda m: click.echo(m, err=True))
    bench.write(report, Path(out_dir))
    click.echo(bench.markdown(report))
    click.echo(f"wrote {out_dir}/bench.json, bench.md, bench.png", err=True)
