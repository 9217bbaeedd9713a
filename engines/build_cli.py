"""seer-build: turn an engine directory's ONNX graphs into TensorRT plans on this machine."""

from __future__ import annotations

import json

import click

from ..cli_common import command, user_errors
from ..errors import UsageError


def _range(text: str, parse, what: str):
    """'X' -> (X, X, X); 'MIN:OPT:MAX' -> the three."""
    parts = text.split(":")
    if len(parts) not in (1, 3):
        raise UsageError(f"cannot read {what} {text!r}: write one value or MIN:OPT:MAX")
    values = [parse(p) for p in parts]
    return tuple(values * 3 if len(values) == 1 else values)


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"cannot read size {text!r}: write HEIGHTxWIDTH, e.g. 1024x1024") from None
    return h, w


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"cannot read batch {text!r}: write a number or MIN:OPT:MAX, e.g. 1:1:4") from None


@command()
@click.argument("engine_dir", type=click.Path())
@click.option("--out", "-o", type=click.Path(file_okay=False), default=None,
              help="Write a new directory instead of adding the plans to ENGINE_DIR.")
@click.option("--batch", default="1", show_default=True, help="Batch size, or MIN:OPT:MAX for a dynamic range.")
@click.option("--size", default=None,
              help="HEIGHTxWIDTH, or MIN:OPT:MAX of them [default: the directory's default size, static].")
@click.option("--optimization-level", type=int, default=3, show_default=True,
              help="TensorRT builder optimization level, 0-5 (higher: longer builds, maybe faster plans).")
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
              help="Load and update this timing cache (faster rebuilds; do not ship one across GPU models).")
@click.option("--tf32/--no-tf32", default=True, show_default=True, help="Allow TF32 for float32 math.")
@click.option("--refittable", is_flag=True, help="Build plans whose weights can be refitted (e.g. LoRA).")
@click.option("--strip-plan", is_flag=True, help="Leave the weights out of the plans (needs --refittable).")
@click.option("--weight-streaming", is_flag=True, help="Allow streaming weights from host memory at run time.")
@click.option("--graph", "graphs", multiple=True, help="Build only this graph (repeatable) [default: all].")
@click.option("--overwrite", is_flag=True,
              help="Replace --out if it is an engine directory (or empty), in one step; anything else is refused.")
@click.option("--dry-run", is_flag=True, help="Print the optimization profiles and stop (needs no TensorRT).")
@user_errors
def main(engine_dir, out, batch, size, optimization_level, timing_cache, tf32, refittable, strip_plan,
         weight_streaming, graphs, overwrite, dry_run):
    """Build TensorRT plans for every graph of ENGINE_DIR, for this GPU and this TensorRT.

    Plans only run where they were built (same TensorRT version and GPU); the manifest records both
    and seer-run refuses plans built elsewhere. Shapes are static by default (best speed); give
    --batch and --size ranges for dynamic shapes.

    \b
    Examples:
      seer-build out/flux
      seer-build out/flux --size 768x768:1024x1024:1360x1360 --batch 1:1:4 --out out/flux-dyn
      seer-build out/flux --dry-run
    """
    from .manifest import read_manifest
    from .tensorrt_build import BuildOptions, build_plans, profile_shapes

    options = BuildOptions(
        batch=_range(batch, _int, "batch"), sizes=_range(size, _size, "size") if size else None,
        optimization_level=optimization_level, tf32=tf32, timing_cache=timing_cache, refittable=refittable,
        strip_plan=strip_plan, weight_streaming=weight_streaming, graphs=tuple(graphs))
    if dry_run:
        manifest = read_manifest(engine_dir, verify=False)
        click.echo(json.dumps(profile_shapes(manifest, options.validate(manifest)), indent=1))
        return
    from .manifest import read_manifest_digest

    log = lambda m: click.echo(m, err=True)  # noqa: E731
    build_plans(engine_dir, options, out=out, overwrite=overwrite, log=log)
    log(f"digest {read_manifest_digest(out or engine_dir)} (the plans changed the manifest: pin this one)")
    click.echo(out or engine_dir)
