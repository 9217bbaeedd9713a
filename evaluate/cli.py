"""seer-eval: the quality harness on the command line."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..cli_common import command, user_errors
from ..errors import UsageError


@command()
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
@click.option("--trust-torch-programs", is_flag=True,
              help="Let --backend torch load the directories' .pt2 programs, which run Python code when loaded.")
@user_errors
def main(engine_dirs, schedules, count, prompt_file, seeds, steps, backend, device, json_path, image_dir,
         trust_torch_programs):
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
                      image_dir=image_dir, progress=lambda m: click.echo(m, err=True),
                      trust_torch_programs=trust_torch_programs)
    click.echo(table(report))
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(report, indent=1) + "\n")
        click.echo(f"wrote {json_path}", err=True)


@command()
@click.argument("engine_dirs", nargs=-1, type=click.Path())
@click.option("--size", type=click.Choice(["tiny", "mid", "flux-slim", "flux"]), default=None,
              help="Build (once, under --work) and measure a model of this size instead of ENGINE_DIRS: tiny is "
                   "the embedded flux-tiny, mid a 70.6M-parameter random-weight FLUX config for CPUs, flux-slim "
                   "and flux FLUX.1-dev-sized configs for GPUs [default: tiny when no ENGINE_DIRS].")
@click.option("--work", type=click.Path(file_okay=False), default=None,
              help="Where --size keeps its model and engine directories [default: OUT/engines].")
@click.option("--schedule", "-s", "schedules", multiple=True, default=("6/1/3", "4/2/3", "3/1/3"), show_default=True,
              help="INTERVAL/ORDER/WARMUP[/FINAL_FULL]; repeat for more (--no-cache is always measured).")
@click.option("--prompts", "count", type=int, default=8, show_default=True,
              help="Prompts of the balanced set, for the quality numbers.")
@click.option("--seed", "seeds", type=int, multiple=True, default=(0,), show_default=True)
@click.option("--steps", type=int, default=None, help="Denoising steps [default: the directory's].")
@click.option("--repeats", type=int, default=3, show_default=True,
              help="Timing rounds (every row once per round, interleaved); times are the median.")
@click.option("--backend", type=click.Choice(["onnxruntime", "torch", "tensorrt"]), default="onnxruntime",
              show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--precision", type=click.Choice(["bf16", "fp16", "fp32"]), default=None,
              help="With --size: the graphs' precision [default: fp32 for tiny and mid, bf16 for flux-slim and "
                   "flux]; diffusers' peers run in the directories' precision.")
@click.option("--cuda-graphs", is_flag=True, help="Time our rows with the transformer paths replayed as CUDA graphs "
                                                   "(--backend torch or tensorrt on cuda).")
@click.option("--peers/--no-peers", default=True, show_default=True,
              help="Also run diffusers on the same weights: no cache, its TaylorSeer hook, its FirstBlockCache.")
@click.option("--memory/--no-memory", default=True, show_default=True,
              help="Measure each row's peak memory in a fresh process.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Where bench.json, bench.md and bench.png go [default: out/bench, or out/bench-SIZE].")
@click.option("--trust-torch-programs", is_flag=True,
              help="Let --backend torch load the given directories' .pt2 programs, which run Python code when loaded (directories --size builds are trusted).")
@user_errors
def bench_main(engine_dirs, size, work, schedules, count, seeds, steps, repeats, backend, device, precision,
               cuda_graphs, peers, memory, out_dir, trust_torch_programs):
    """Speed and quality of schedules against --no-cache, the schedule's ideal, and diffusers.

    Pass a --cache modules and a --cache lite directory of the same model to compare both, or
    --size to have them built.

    \b
    Examples:
      seer-bench --size mid --prompts 2 --repeats 3
      seer-bench out/flux-tiny out/flux-tiny-lite -s 6/1/3 -s 4/2/3 --out out/bench
    """
    from . import bench, sizes
    from .harness import ScheduleSpec, load_prompts

    if engine_dirs and size:
        raise UsageError("give either ENGINE_DIRS or --size, not both")
    if work and not size and engine_dirs:
        raise UsageError("--work is where --size builds its engine directories; it needs --size")
    specs = [ScheduleSpec.parse(s) for s in schedules]
    prompts = load_prompts(count)
    chosen = None
    if not engine_dirs:
        chosen = sizes.get(size or "tiny", device, precision)
    elif precision:
        raise UsageError("--precision picks the precision --size exports in; an engine directory has its own")
    out = Path(out_dir or ("out/bench" if engine_dirs else f"out/bench-{chosen.name}"))
    if chosen is not None:
        engine_dirs = sizes.prepare(chosen, Path(work) if work else out / "engines", backend,
                                    log=lambda m: click.echo(m, err=True))
    report = bench.run([str(d) for d in engine_dirs], specs, prompts, list(seeds), steps, backend, device, peers,
                       repeats=repeats, memory=memory, judge=chosen is None or chosen.transformer is None,
                       size=chosen.name if chosen else None, progress=lambda m: click.echo(m, err=True),
                       cuda_graphs=cuda_graphs, trust_torch_programs=trust_torch_programs or chosen is not None)
    bench.write(report, out)
    click.echo(bench.markdown(report))
    click.echo(f"wrote {out}/bench.json, bench.md, bench.png", err=True)
