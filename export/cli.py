"""seer-export: turn a FLUX or DiT pipeline into an engine directory."""

from __future__ import annotations

import click

from ..cli_common import command, user_errors


@command()
@click.argument("model")
@click.option("--out", "-o", required=True, type=click.Path(),  # checked by seer itself: one error line
              help="Engine directory to create (written atomically).")
@click.option("--cache", type=click.Choice(["modules", "lite"]), default="modules", show_default=True,
              help="What TaylorSeer caches: every attention/MLP output (paper-faithful) or only the "
                   "prediction (lite: tiny memory).")
@click.option("--max-order", type=int, default=None,
              help="Highest Taylor order seer-run may use with this directory [default: 2 for FLUX, 4 for DiT "
                   "(TaylorSeer-DiT's)].")
@click.option("--max-sequence-length", type=int, default=None,
              help="T5 tokens per prompt [default: 512 for FLUX.1-dev, 256 without guidance embedding, "
                   "less where the tokenizer says so (16 for flux-tiny)].")
@click.option("--precision", type=click.Choice(["bf16", "fp16", "fp32"]), default=None,
              help="Precision of the graphs [default: the checkpoint's own: bf16 for FLUX.1-dev, fp32 for "
                   "flux-tiny]. T5 stays fp32 in fp16 directories (it overflows in fp16) and the VAE decoder "
                   "fp32 in all; fp16 and fp32 run on ONNX Runtime's CPU provider, bf16 on --backend torch or "
                   "tensorrt.")
@click.option("--factor-dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default=None,
              help="dtype of the Taylor factors (the forecast graph's inputs) [default: the graphs' precision].")
@click.option("--torch-programs/--no-torch-programs", default=None,
              help="Also store the torch.export programs (for seer-run --backend torch; they repeat every "
                   "weight) [default: only when the transformer is under 2 GiB].")
@click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt"]), default="onnxruntime", show_default=True,
              help="tensorrt: also build TensorRT plans for this GPU (static, default size; seer-build for more).")
@click.option("--overwrite", is_flag=True,
              help="Replace --out if it is an engine directory (or empty), in one step; anything else is refused.")
@click.option("--fp8", is_flag=True,
              help="Quantize the full transformer path to FP8 E4M3 (standard Q/DQ), calibrated at the default "
                   "schedule's full steps; TensorRT runs it on compute capability 8.9+.")
@click.option("--calibration", type=click.Path(dir_okay=False), default=None,
              help="With --fp8: reuse this saved calibration (calibration/fp8.json of an earlier export).")
@click.option("--calibration-prompts", type=click.Path(dir_okay=False), default=None,
              help="With --fp8: calibration prompts, one per line [default: the shipped set; for flux-tiny, "
                   "shapes-world prompts outside seer-eval's set].")
@click.option("--calibration-size", type=int, default=32, show_default=True, help="With --fp8: prompts to use.")
@click.option("--calibration-steps", type=int, default=None,
              help="With --fp8: denoising steps per calibration run [default: the directory's, 50].")
@user_errors
def main(model, out, cache, max_order, max_sequence_length, precision, factor_dtype, torch_programs, backend,
         overwrite, fp8, calibration, calibration_prompts, calibration_size, calibration_steps):
    """Export MODEL to an engine directory of ONNX graphs and a manifest.

    MODEL is `flux-tiny` or `dit-tiny` (the small trained models shipped inside seer), `flux` (alias of
    black-forest-labs/FLUX.1-dev), `dit` (facebook/DiT-XL-2-256), any Hugging Face repo id of a
    diffusers FLUX or DiT pipeline, or a local diffusers directory of one. Hub downloads go through the
    normal Hugging Face cache, so a model fetched once exports offline afterwards.

    \b
    Examples:
      seer-export flux-tiny --out out/flux-tiny
      seer-export flux --out out/flux --cache lite
      seer-export flux-tiny --out out/flux-tiny-fp16 --precision fp16
      seer-export flux --out out/flux --backend tensorrt
      seer-export flux --out out/flux-fp8 --fp8 --backend tensorrt
      seer-export dit-tiny --out out/dit-tiny
      seer-export facebook/DiT-XL-2-256 --out out/dit
    """
    from .source import family_of

    log = lambda m: click.echo(m, err=True)  # noqa: E731
    if backend == "tensorrt":  # fail before a long export, not after it
        from ..engines.tensorrt_build import current_device, require_tensorrt

        require_tensorrt()
        current_device()
    if family_of(model) == "dit":
        from .dit_export import export_dit, refuse_flux_options

        refuse_flux_options(**{"--fp8": fp8, "--max-sequence-length": max_sequence_length is not None})
        export_dit(model, out, cache=cache, max_order=4 if max_order is None else max_order,
                   torch_program=torch_programs, overwrite=overwrite, log=log, precision=precision,
                   factor_dtype=factor_dtype, progress=True)
    else:
        from .flux_export import FP8Options, export_flux

        fp8_options = FP8Options(calibration, calibration_prompts, calibration_size, calibration_steps) if fp8 else None
        export_flux(model, out, cache=cache, max_order=2 if max_order is None else max_order,
                    torch_program=torch_programs, max_sequence_length=max_sequence_length, overwrite=overwrite,
                    log=log, fp8=fp8_options, precision=precision, factor_dtype=factor_dtype, progress=True)
    if backend == "tensorrt":
        from ..engines.tensorrt_build import build_plans

        build_plans(out, log=log)
    from ..engines.manifest import read_manifest_digest

    log(f"digest {read_manifest_digest(out)} (pin this directory with seer-run --expect-digest)")
    click.echo(out)
