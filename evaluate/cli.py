"""seer-eval and seer-bench: the quality harness and the benchmark on the command line."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..cli_common import command, user_errors
from ..errors import UsageError

# seer-eval's default rows per model family: TaylorSeer's FLUX setting; TaylorSeer-DiT's (interval 4,
# order 2, 2 warm-up steps)
EVAL_SCHEDULES = {"flux": ("none", "6/1/3"), "dit": ("none", "4/2/2")}
OPTIONS = {"prompt": ("--prompts", "--prompt-file"), "class": ("--classes", "--class-file")}
FAMILY_NAMES = {"flux": "FLUX", "dit": "DiT"}


@command()
@click.argument("engine_dirs", nargs=-1, required=True, type=click.Path())
@click.option("--schedule", "-s", "schedules", multiple=True, default=(),
              help="'none' (every step full), INTERVAL/ORDER/WARMUP[/FINAL_FULL], or plan:NAME (a plan the "
                   "directories hold, seer-calibrate); repeat for more rows "
                   "[default: none and 6/1/3 for FLUX, none and 4/2/2 for DiT].")
@click.option("--prompts", "count", type=int, default=None,
              help="How many prompts (text-to-image directories) [default: 36 of the shapes world's balanced set, "
                   "or all of --prompt-file].")
@click.option("--prompt-file", type=click.Path(dir_okay=False), default=None,
              help="One prompt per line instead of the shapes world (prompt following is then not judged).")
@click.option("--classes", "class_count", type=int, default=None,
              help="How many classes (class-conditional directories, DiT) [default: 36 of the shapes world's "
                   "balanced set for dit-tiny's labels, else the first 36 labelled ids, or all of --class-file].")
@click.option("--class-file", type=click.Path(dir_okay=False), default=None,
              help="One class id or name per line (class following is judged where the label is a shapes-world "
                   "class).")
@click.option("--seed", "seeds", type=int, multiple=True, default=(0,), show_default=True,
              help="Seeds; repeat for more images per prompt or class.")
@click.option("--steps", type=int, default=None, help="Denoising steps [default: the directory's].")
@click.option("--guidance", type=float, default=None,
              help="Guidance scale (FLUX.1-dev's embedded guidance, DiT's classifier-free guidance) "
                   "[default: the directory's].")
@click.option("--backend", type=click.Choice(["onnxruntime", "torch"]), default="onnxruntime", show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, or cuda[:N] for a GPU.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the full report (every image's numbers) to this file.")
@click.option("--images", "image_dir", type=click.Path(file_okay=False), default=None,
              help="Also save every generated image under this directory, one folder per row.")
@click.option("--trust-torch-programs", is_flag=True,
              help="Let --backend torch load the directories' .pt2 programs, which run Python code when loaded.")
@user_errors
def main(engine_dirs, schedules, count, prompt_file, class_count, class_file, seeds, steps, guidance, backend,
         device, json_path, image_dir, trust_torch_programs):
    """Measure prompt or class following and fidelity to --no-cache for schedules and engine directories.

    Every row is one (ENGINE_DIR, schedule); PSNR and SSIM compare each image with the --no-cache
    image of the same prompt (FLUX) or class (DiT) and seed from the first ENGINE_DIR. Pass a --cache
    modules and a --cache lite directory of the same model to compare cache granularities; all
    ENGINE_DIRS take the same kind of condition.

    \b
    Examples:
      seer-eval out/flux-tiny out/flux-tiny-lite -s none -s 6/1/3 -s 4/2/3 --json eval.json
      seer-eval out/dit-tiny out/dit-tiny-lite -s none -s 4/2/2 -s 6/1/3 --classes 36
    """
    from .harness import ScheduleSpec, evaluate, table

    engine_dirs = list(engine_dirs)
    kind, family = conditioning(engine_dirs, count, prompt_file, class_count, class_file)
    specs = [ScheduleSpec.parse(s) for s in schedules or EVAL_SCHEDULES.get(family, EVAL_SCHEDULES["flux"])]
    given, number = conditions_asked(kind, count, prompt_file, class_count, class_file)
    report = evaluate(engine_dirs, specs, given, list(seeds), steps=steps, backend=backend, device=device,
                      image_dir=image_dir, progress=lambda m: click.echo(m, err=True),
                      trust_torch_programs=trust_torch_programs, count=number, guidance=guidance)
    click.echo(table(report))
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(report, indent=1) + "\n")
        click.echo(f"wrote {json_path}", err=True)


def conditioning(engine_dirs, count, prompt_file, class_count, class_file,
                 files: bool = True) -> tuple[str, str | None]:
    """The directories' conditioning kind and family; the other kind's options are refused (the fix names
    the file options too where the command has them, `files`)."""
    from .harness import conditioning_of

    kind, family = conditioning_of(engine_dirs)
    wrong = "class" if kind == "prompt" else "prompt"
    given = (count, prompt_file) if wrong == "prompt" else (class_count, class_file)
    used = [name for name, value in zip(OPTIONS[wrong], given) if value is not None]
    if used:
        name = FAMILY_NAMES.get(family, family)
        model = (f"text-to-image ({name}): it takes prompts" if kind == "prompt"
                 else f"class-conditional ({name}): it takes classes")
        raise UsageError(f"{' and '.join(used)} {'do' if len(used) > 1 else 'does'} not apply: this model is {model}; "
                         f"use {' or '.join(OPTIONS[kind][:2 if files else 1])} instead")
    return kind, family


def conditions_asked(kind, count, prompt_file, class_count, class_file) -> tuple[list | None, int | None]:
    """(the conditions a file gives, or None for the default set; how many)."""
    from .harness import load_class_file, load_prompts

    if kind == "prompt":
        return (load_prompts(count, prompt_file) if prompt_file else None), count
    return (load_class_file(class_file, class_count) if class_file else None), class_count


@command()
@click.argument("engine_dirs", nargs=-1, type=click.Path())
@click.option("--size", type=click.Choice(["tiny", "mid", "flux-slim", "flux"]), default=None,
              help="Build (once, under --work) and measure a model of this size instead of ENGINE_DIRS: tiny is "
                   "the embedded flux-tiny, mid a 70.6M-parameter random-weight FLUX config for CPUs, flux-slim "
                   "and flux FLUX.1-dev-sized configs for GPUs [default: tiny when no ENGINE_DIRS].")
@click.option("--work", type=click.Path(file_okay=False), default=None,
              help="Where --size keeps its model and engine directories [default: OUT/engines].")
@click.option("--schedule", "-s", "schedules", multiple=True, default=(),
              help="INTERVAL/ORDER/WARMUP[/FINAL_FULL] or plan:NAME (a plan the directories hold); repeat for "
                   "more (--no-cache is always measured) "
                   "[default: 6/1/3 4/2/3 3/1/3 for FLUX, 4/2/2 6/1/3 4/2/3 for DiT].")
@click.option("--prompts", "count", type=int, default=None,
              help="Prompts of the balanced set, for the quality numbers (FLUX) [default: 8].")
@click.option("--classes", "class_count", type=int, default=None,
              help="Classes, for the quality numbers (DiT: the shapes world's balanced set for dit-tiny's labels, "
                   "else the first labelled ids) [default: 8, or all when the model has fewer].")
@click.option("--seed", "seeds", type=int, multiple=True, default=(0,), show_default=True)
@click.option("--steps", type=int, default=None, help="Denoising steps [default: the directory's].")
@click.option("--guidance", type=float, default=None,
              help="Guidance scale of every row, ours and diffusers' [default: the directory's].")
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
              help="Also run diffusers on the same weights: no cache, its TaylorSeer hook, its FirstBlockCache "
                   "(DiT: no cache only, diffusers' cache hooks do not run on DiTPipeline).")
@click.option("--memory/--no-memory", default=True, show_default=True,
              help="Measure each row's peak memory in a fresh process.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Where bench.json, bench.md and bench.png go [default: out/bench, or out/bench-SIZE].")
@click.option("--trust-torch-programs", is_flag=True,
              help="Let --backend torch load the given directories' .pt2 programs, which run Python code when loaded (directories --size builds are trusted).")
@user_errors
def bench_main(engine_dirs, size, work, schedules, count, class_count, seeds, steps, guidance, repeats, backend, device,
               precision, cuda_graphs, peers, memory, out_dir, trust_torch_programs):
    """Speed and quality of schedules against --no-cache, the schedule's ideal, and diffusers.

    Pass a --cache modules and a --cache lite directory of the same model to compare both, or
    --size to have them built (FLUX). DiT directories are measured on classes instead of prompts.

    \b
    Examples:
      seer-bench --size mid --prompts 2 --repeats 3
      seer-bench out/flux-tiny out/flux-tiny-lite -s 6/1/3 -s 4/2/3 --out out/bench
      seer-bench out/dit-tiny out/dit-tiny-lite --classes 8 --out out/bench-dit
    """
    from . import bench, sizes
    from .harness import ScheduleSpec, load_prompts

    if engine_dirs and size:
        raise UsageError("give either ENGINE_DIRS or --size, not both")
    if work and not size and engine_dirs:
        raise UsageError("--work is where --size builds its engine directories; it needs --size")
    specs = [ScheduleSpec.parse(s) for s in schedules]
    if engine_dirs:
        kind = conditioning(list(engine_dirs), count, None, class_count, None, files=False)[0]
    elif class_count is not None:
        raise UsageError("--classes is for class-conditional (DiT) engine directories, and --size builds FLUX models; "
                         "use --prompts, or pass DiT ENGINE_DIRS")
    else:
        kind = "prompt"
    if kind == "prompt":
        load_prompts(count)  # a count out of range is refused before anything is built
    chosen = None
    if not engine_dirs:
        chosen = sizes.get(size or "tiny", device, precision)
    elif precision:
        raise UsageError("--precision picks the precision --size exports in; an engine directory has its own")
    out = Path(out_dir or ("out/bench" if engine_dirs else f"out/bench-{chosen.name}"))
    if chosen is not None:
        engine_dirs = sizes.prepare(chosen, Path(work) if work else out / "engines", backend,
                                    log=lambda m: click.echo(m, err=True))
    report = bench.run([str(d) for d in engine_dirs], specs, None, list(seeds), steps, backend, device, peers,
                       repeats=repeats, memory=memory, judge=chosen is None or chosen.transformer is None,
                       size=chosen.name if chosen else None, progress=lambda m: click.echo(m, err=True),
                       cuda_graphs=cuda_graphs, trust_torch_programs=trust_torch_programs or chosen is not None,
                       count=count if kind == "prompt" else class_count, guidance=guidance)
    bench.write(report, out)
    click.echo(bench.markdown(report))
    click.echo(f"wrote {out}/bench.json, bench.md, bench.png", err=True)
