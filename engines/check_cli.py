"""seer-check: is an engine directory (or any .onnx file) ready for TensorRT?"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..cli_common import command, user_errors


@command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@click.option("--compare", is_flag=True,
              help="Also run every built TensorRT plan against ONNX Runtime (Polygraphy; needs TensorRT and a GPU).")
@click.option("--atol", type=float, default=1e-3, show_default=True, help="Absolute tolerance for --compare.")
@click.option("--rtol", type=float, default=1e-3, show_default=True, help="Relative tolerance for --compare.")
@user_errors
def main(paths, as_json, compare, atol, rtol):
    """Check ONNX graphs against what the TensorRT ONNX parser and strongly typed networks accept.

    PATHS are engine directories (every graph their manifest names) or .onnx files. Nothing is built
    and TensorRT is not needed. Exit code 0: every graph passes; 1: findings (each names its rule,
    where it is and the fix); 2: bad input.

    With --compare, the plans seer-build made for each engine directory are also run against ONNX
    Runtime on random inputs at their profiles' opt shapes; any output outside the tolerances fails.

    \b
    Examples:
      seer-check out/flux
      seer-check model.onnx --json
      seer-check out/flux --compare --atol 1e-2
    """
    from ..errors import UsageError
    from .trt_check import check_engine_dir, check_onnx
    from .trt_support import SOURCE

    results: dict[str, list] = {}
    for p in map(Path, paths):
        if p.is_dir():
            for graph, findings in check_engine_dir(p).items():
                results[f"{p}/{graph}"] = findings
        elif p.suffix == ".onnx":
            results[str(p)] = check_onnx(p)
        else:
            raise UsageError(f"{p} is neither an engine directory nor an .onnx file")
    failed = sum(bool(f) for f in results.values())
    mismatched = 0
    if compare:
        from .tensorrt_compare import compare_plans

        for p in (Path(p) for p in paths if Path(p).is_dir()):
            verdicts = compare_plans(p, atol=atol, rtol=rtol, log=lambda m: click.echo(m, err=True))
            mismatched += sum(not ok for ok in verdicts.values())
    if as_json:
        click.echo(json.dumps({"rules_source": SOURCE, "graphs": {
            k: [f.as_dict() for f in v] for k, v in results.items()}}, indent=1))
    else:
        for name, findings in results.items():
            click.echo(f"{name}: {'ok' if not findings else f'{len(findings)} problem(s)'}")
            for f in findings:
                click.echo(f"  [{f.rule}] {f.where}: {f.message}\n      fix: {f.fix}")
        click.echo(f"{len(results) - failed} of {len(results)} graphs ready for TensorRT (rules: {SOURCE})")
    if compare:
        click.echo(f"{mismatched} TensorRT plan(s) differ from ONNX Runtime")
    sys.exit(1 if failed or mismatched else 0)
