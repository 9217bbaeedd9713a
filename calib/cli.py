"""seer-calibrate: fit a plan (where a budget of full steps goes, and each forecast step's weights)
on a directory's own --no-cache runs, and store it in the directory."""

from __future__ import annotations

import json
import sys

import click

from ..cli_common import command, user_errors


@command()
@click.argument("engine_dir", type=click.Path())
@click.option("--budget", "-k", "budgets", type=int, multiple=True, required=True,
              help="Full steps the plan may run (the first step included); repeat for one plan per budget, all "
                   "from one recording.")
@click.option("--name", default=None, help="The plan's name in the directory (one --budget) [default: kBUDGET-sSTEPS].")
@click.option("--steps", type=int, default=None, help="Denoising steps the plan is for [default: the directory's].")
@click.option("--prompts", "prompt_file", type=click.Path(), default=None,
              help="Calibration prompts (class ids or names for a class-conditional model), one per line "
                   "[default: a set apart from seer-eval's].")
@click.option("--calibration-size", type=int, default=None,
              help="How many calibration prompts or classes to use [default: 8, or all of --prompts].")
@click.option("--warmup", type=int, default=1, show_default=True,
              help="Leading steps always full; the search places the other full steps (1: all but the first).")
@click.option("--judge", type=click.Choice(["auto", "real", "proxy"]), default="auto", show_default=True,
              help="Score placements by cached runs against --no-cache (real) or from the recorded features alone "
                   "(proxy); auto picks real when a search of them takes about 10 minutes or less.")
@click.option("--max-evaluations", type=int, default=400, show_default=True, help="Placements the search may score.")
@click.option("--ridge", type=float, default=1e-4, show_default=True,
              help="Pull of the least-squares weights towards Taylor's (relative to the features' scale).")
@click.option("--overwrite", is_flag=True, help="Replace a plan of the same name.")
@click.option("--backend", type=click.Choice(["onnxruntime", "torch", "tensorrt"]), default="onnxruntime",
              show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, or cuda[:N] for a GPU.")
@click.option("--trust-torch-programs", is_flag=True, help="Let --backend torch load the directory's .pt2 programs.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@user_errors
def main(engine_dir, budgets, name, steps, prompt_file, calibration_size, warmup, judge, max_evaluations, ridge,
         overwrite, backend, device, trust_torch_programs, as_json):
    """Calibrate a plan of BUDGET full steps for ENGINE_DIR and add it to the directory.

    The directory's own --no-cache path runs on calibration prompts kept apart from seer-eval's; the
    features it caches are recorded (their Gram matrix over steps), least-squares weights over the last
    full steps' features are fitted for every forecast step, and the placement of the full steps is
    searched. The plan is written as schedules/NAME.json, listed and hashed in the manifest, in one
    atomic step; run it with `seer-run ENGINE_DIR --plan NAME`.

    \b
    Examples:
      seer-calibrate out/flux-tiny --budget 10 --name k10
      seer-calibrate out/flux-tiny --budget 6 --budget 8 --budget 10 --budget 14
      seer-calibrate out/flux --budget 8 --steps 28 --prompts my-prompts.txt --name k8-s28
    """
    from ..errors import UsageError
    from ..evaluate.harness import load_class_file
    from ..prompts import read_prompt_file
    from ..runtime.pipeline import Pipeline
    from ..runtime.plan import Plan, check_name
    from . import calibrate as cal

    if calibration_size is not None and calibration_size < 1:
        raise UsageError(f"--calibration-size must be at least 1 (got {calibration_size})")
    if max_evaluations < 1:
        raise UsageError(f"--max-evaluations must be at least 1 (got {max_evaluations})")
    if not 0 <= ridge <= 1e6:
        raise UsageError(f"--ridge must be between 0 and 1e6 (got {ridge})")
    pipe = Pipeline.load(engine_dir, backend=backend, device=device, trust_torch_programs=trust_torch_programs)
    d = pipe.manifest["defaults"]
    steps = d["steps"] if steps is None else steps
    if steps < 1:
        raise UsageError(f"steps must be at least 1 (got {steps})")
    budgets = list(dict.fromkeys(budgets))
    for budget in budgets:
        cal.check_budget(budget, steps, warmup)
    pipe.plan(steps)  # the step count against the sampler, before any work
    if name is not None and len(budgets) > 1:
        raise UsageError("--name names one plan; with several --budget the plans are named kBUDGET-sSTEPS, so drop "
                         "--name (or calibrate one budget at a time)")
    names = {b: check_name(name or f"k{b}-s{steps}") for b in budgets}
    taken = [n for n in names.values() if n in pipe.manifest.get("schedules", {})]
    if taken and not overwrite:
        raise UsageError(f"{engine_dir} already holds a plan named {taken[0]!r}; pass --overwrite to replace it, or "
                         "choose another --name")
    if prompt_file is not None:
        read = load_class_file if pipe.family.conditioning == "class" else read_prompt_file
        conditions = read(prompt_file)[:calibration_size or None]
        if pipe.family.conditioning == "class":
            conditions = [pipe.family.class_id(c) for c in conditions]
    else:
        conditions = cal.default_conditions(pipe, calibration_size or cal.DEFAULT_SIZE)
    runs = cal.calibration_runs(pipe, conditions)
    pipe.warmup()
    results, made, recording = {}, {}, None
    with _bars(as_json) as progress:
        for budget in budgets:
            result = cal.calibrate(pipe, budget, steps, runs, warmup, judge, ridge, max_evaluations, progress=progress,
                                   recording=recording)
            recording = result.recording
            provenance = cal.provenance(pipe, result, names[budget], budget, warmup, ridge, conditions)
            p = result.plan
            made[names[budget]] = Plan(p.full, p.order, p.coefficients, p.derive_from, names[budget], provenance)
            results[budget] = result
    cal.add_plans(engine_dir, made, cal.graph_hashes(pipe.manifest), replace=overwrite,
                  log=lambda m: click.echo(m, err=True))
    summary = {"engine_dir": str(engine_dir), "steps": steps, "runs": len(runs),
               "recording_seconds": round(recording.seconds, 1), "recorded_elements": recording.elements,
               "feature_elements": recording.feature_elements,
               "plans": [{"name": names[b], "budget": b, "judge": r.judge, "rows": r.table, "evaluations": r.evaluations,
                          "seconds": round(r.seconds, 1)} for b, r in results.items()]}
    if as_json:
        click.echo(json.dumps(summary))
        return 0
    for budget, result in results.items():
        click.echo(f"budget {budget} ({result.evaluations} placements scored, {result.judge}, "
                   f"{result.seconds:.1f} s):\n{_table(result.table)}", err=True)
    click.echo(f"{len(runs)} calibration runs recorded in {recording.seconds:.1f} s ({recording.elements} of "
               f"{recording.feature_elements} feature values a step)", err=True)
    for n in made:
        click.echo(f"plan {n} added to {engine_dir}: seer-run {engine_dir} --plan {n}", err=True)
        click.echo(n)
    return 0


def _table(rows: list[dict]) -> str:
    lines = [f"{'plan':<22}{'order':>6}{'PSNR dB':>9}{'proxy':>10}  full steps"]
    for r in rows:
        lines.append(f"{r['plan']:<22}{r['order']:>6}{r['psnr_db']:>9.2f}{r['proxy']:>10.4g}  "
                     f"{','.join(map(str, r['full_steps']))}")
    return "\n".join(lines)


class _Bars:
    def __init__(self, quiet: bool):
        self.quiet, self.bars = quiet, []

    def __call__(self, what: str, total: int | None):
        from tqdm import tqdm

        for bar in self.bars:
            bar.close()
        bar = tqdm(total=total, desc=what, file=sys.stderr, leave=False,
                   disable=self.quiet or not sys.stderr.isatty())
        self.bars.append(bar)
        return bar.update

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for bar in self.bars:
            bar.close()


def _bars(quiet: bool) -> _Bars:
    return _Bars(quiet)


if __name__ == "__main__":
    sys.exit(main())
