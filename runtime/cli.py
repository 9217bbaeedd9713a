"""seer-run: generate images from an engine directory."""

from __future__ import annotations

import contextlib
import json
import sys

import click

from ..cli_common import command, user_errors


@command()
@click.argument("engine_dir", type=click.Path())
@click.option("--prompt", "-p", default=None, help="What to draw (text-to-image models: FLUX).")
@click.option("--class", "class_label", default=None, metavar="ID|NAME",
              help="The class to draw (class-conditional models: DiT): an id, or a name from the model's labels.")
@click.option("--out", "-o", default="out.png", show_default=True, type=click.Path(),  # checked before generating
              help="PNG to write (prompt, seed and schedule go into its metadata).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--steps", type=int, default=None, help="Denoising steps [default: the directory's, 50].")
@click.option("--height", type=int, default=None, help="Image height in pixels [default: the directory's].")
@click.option("--width", type=int, default=None, help="Image width in pixels [default: the directory's].")
@click.option("--guidance", type=float, default=None,
              help="Guidance scale: embedded guidance (FLUX.1-dev) or classifier-free guidance (DiT: above 1 runs "
                   "the unconditional class beside, doubling the batch) [default: the directory's].")
@click.option("--interval", "-N", type=int, default=None,
              help="Run the full transformer every N steps after warm-up, forecast the rest [default: 6].")
@click.option("--order", type=int, default=None, help="Taylor order of the forecast [default: 1].")
@click.option("--warmup", type=int, default=None, help="Leading steps always run in full [default: 3].")
@click.option("--final-full", type=int, default=0, show_default=True, help="Trailing steps always run in full.")
@click.option("--schedule-style", type=click.Choice(["taylorseer", "diffusers"]), default="taylorseer",
              show_default=True, help="Where the full steps fall after warm-up: as in the TaylorSeer paper, or as "
                                      "diffusers' TaylorSeerCacheConfig places them.")
@click.option("--no-cache", is_flag=True, help="Run every step in full (the unaccelerated reference).")
@click.option("--plan", default=None, metavar="NAME",
              help="Run one of the directory's calibrated plans (seer-calibrate) in place of --interval/--order/"
                   "--warmup: its full steps and forecast weights.")
@click.option("--backend", type=click.Choice(["onnxruntime", "torch", "tensorrt"]), default="onnxruntime",
              show_default=True, help="tensorrt runs the plans seer-build made (GPU only).")
@click.option("--device", default="cpu", show_default=True, help="cpu, or cuda[:N] for a GPU.")
@click.option("--cuda-graphs", is_flag=True, help="Replay the transformer paths as CUDA graphs (torch or tensorrt "
                                                   "backend on cuda).")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Check every file's sha256 against the manifest before loading.")
@click.option("--expect-digest", default=None, metavar="sha256:HEX",
              help="Refuse ENGINE_DIR unless its manifest digest (printed by seer-export) is this one: pins exactly "
                   "the directory a service was tested with.")
@click.option("--trust-torch-programs", is_flag=True,
              help="Let --backend torch load the directory's .pt2 programs, which run Python code when loaded: only "
                   "for a directory you exported or pinned with --expect-digest.")
@click.option("--json", "as_json", is_flag=True, help="Print timings and the schedule as JSON on stdout.")
@click.option("--memory-budget", default=None, help="Refuse a request whose estimated memory exceeds this: bytes, or "
                                                     "with a unit (8GB, 8GiB, 512MB) [default: what is available].")
@user_errors
def main(engine_dir, prompt, class_label, out, seed, steps, height, width, guidance, interval, order, warmup, final_full,
         schedule_style, no_cache, plan, backend, device, cuda_graphs, verify, expect_digest, trust_torch_programs, as_json,
         memory_budget):
    """Generate an image from ENGINE_DIR (made by seer-export) with TaylorSeer forecasting.

    \b
    Example:
      seer-run out/flux-tiny --prompt "a red circle" --seed 0 --steps 50 --out out.png
      seer-run out/flux --prompt "..." --interval 6 --order 1 --warmup 3
      seer-run out/dit-tiny --class "red circle at the top left" --guidance 4
      seer-run out/dit --class 207 --interval 4 --order 2 --warmup 2
      seer-run out/flux-tiny --prompt "a red circle" --plan k10
    """
    from PIL.PngImagePlugin import PngInfo

    from .. import __version__
    from ..errors import UsageError
    from .output import check_image_path, write_png
    from .pipeline import Pipeline

    # before loading and generating (minutes): an unusable --out or prompt fails now, not after
    out_path = check_image_path(out)
    try:
        for text in (prompt, class_label):
            if text is not None:
                text.encode("utf-8")
    except UnicodeEncodeError:  # bytes the locale could not decode arrive as surrogate escapes
        raise UsageError("the prompt or class is not valid UTF-8 text; pass it in UTF-8 (check the terminal's "
                         "locale, e.g. LANG=C.UTF-8)") from None
    pipe = Pipeline.load(engine_dir, backend=backend, device=device, verify=verify, cuda_graphs=cuda_graphs,
                         expect_digest=expect_digest, trust_torch_programs=trust_torch_programs,
                         memory_budget=memory_budget)
    planned = pipe.load_plan(plan) if plan is not None else None  # an unknown plan fails before any work
    with _progress(steps or (planned.steps if planned else pipe.manifest["defaults"]["steps"]), quiet=as_json) as on_step:
        g = pipe(prompt, class_labels=class_label, seed=seed, steps=steps, height=height, width=width, guidance_scale=guidance,
                 interval=interval, order=order, warmup=warmup, final_full=final_full,
                 schedule_style=schedule_style, no_cache=no_cache, on_step=on_step, plan=plan)
    for name, cut in g.truncated.items():
        if cut[0]:
            click.echo(f"warning: the prompt is longer than the {name} encoder takes; its last {cut[0]} tokens "
                       "were truncated and ignored", err=True)
    for warning in g.warnings:
        click.echo(f"warning: {warning}", err=True)
    s, d = g.schedule, pipe.manifest["defaults"]["schedule"]
    condition = {"prompt": prompt} if class_label is None else {"class": class_label}
    settings = {**condition, "seed": seed, "steps": s.steps, "full_steps": s.full_steps,
                "no_cache": no_cache, "interval": d["interval"] if interval is None else interval,
                "order": d["order"] if order is None else order, "warmup": d["warmup"] if warmup is None else warmup,
                "final_full": final_full, "schedule_style": schedule_style, "plan": plan, "backend": backend,
                "engine": pipe.manifest["model"]["source"], "digest": pipe.digest, "seer": __version__}
    if planned is not None:  # the plan fixed the schedule: the rule's settings did not apply
        settings.update(interval=None, warmup=None, order=planned.order)
    info = PngInfo()
    info.add_text("parameters", json.dumps(settings))
    for key, value in condition.items():
        info.add_text(key, str(value))
    write_png(g.image, out_path, info, shown=out)
    report = {"out": out, "schedule": s.describe(), "timings_s": {k: round(v, 4) for k, v in g.timings.items()}}
    if as_json:
        click.echo(json.dumps({**settings, **report}))
    else:
        click.echo(f"{out}: {s.describe()}, denoise {g.timings['denoise']:.2f} s, total {g.timings['total']:.2f} s",
                   err=True)
    return 0


@contextlib.contextmanager
def _progress(steps: int, quiet: bool):
    """A bar over the denoising steps on a terminal, counting full and forecast steps apart."""
    from tqdm import tqdm

    bar = tqdm(total=steps, desc="denoising", unit="step", file=sys.stderr, leave=False,
               disable=quiet or not sys.stderr.isatty())
    counts = {"full": 0, "forecast": 0}

    def on_step(i, full, _latents):
        counts["full" if full else "forecast"] += 1
        bar.set_postfix(counts, refresh=False)
        bar.update()

    try:
        yield None if bar.disable else on_step
    finally:
        bar.close()


if __name__ == "__main__":
    sys.exit(main())
