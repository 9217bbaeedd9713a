"""FP8 export: calibration at the schedule's full steps only, standard FP8 Q/DQ that ONNX Runtime
runs, the fragile layers left in float32, and clear errors for bad calibration input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from seer.calib import fp8
from seer.engines.tensorrt_build import check_fp8_device
from seer.errors import UsageError

from fp8_graphs import layers

STEPS, SIZE = 12, 4  # a short calibration keeps the test quick; the schedule is the default 6/1/3


@pytest.fixture(scope="session")
def engine_fp8(tmp_path_factory):
    from seer.export.flux_export import FP8Options, export_flux

    out = tmp_path_factory.mktemp("engines") / "flux-tiny-fp8"
    export_flux("flux-tiny", out, log=lambda m: None, cache="modules", max_order=1,
                fp8=FP8Options(size=SIZE, steps=STEPS))
    return out


def test_which_layers_are_quantized():
    # diffusers' FLUX module names: embedders, modulation, norm_out and proj_out stay in float
    kept = ["x_embedder", "context_embedder", "time_text_embed.timestep_embedder.linear_1",
            "time_text_embed.guidance_embedder.linear_2", "time_text_embed.text_embedder.linear_1",
            "transformer_blocks.12.norm1.linear", "transformer_blocks.0.norm1_context.linear",
            "single_transformer_blocks.37.norm.linear", "norm_out.linear", "proj_out"]
    quantized = ["transformer_blocks.0.attn.to_q", "transformer_blocks.3.attn.add_k_proj", "transformer_blocks.1.ff.net.2",
                 "transformer_blocks.1.ff_context.net.0.proj", "single_transformer_blocks.2.proj_mlp",
                 "single_transformer_blocks.2.proj_out", "single_transformer_blocks.0.attn.to_v"]
    assert [fp8.quantizable(n) for n in kept] == [False] * len(kept)
    assert all(fp8.quantizable(n) for n in quantized)


def test_fp8_graph_quantizes_exactly_the_intended_layers(engine_fp8):
    manifest = json.loads((engine_fp8 / "manifest.json").read_text())
    model = onnx.load(str(engine_fp8 / "full.onnx"))
    assert max(i.version for i in model.opset_import if i.domain in ("", "ai.onnx")) == 19
    seen = {}
    for layer, e in layers(model).items():
        dq = "q" in e and e["dq_w"] is not None and e["dq_w"].op_type == "DequantizeLinear"
        seen[layer] = dq
        if dq:
            assert e["weight_fp8"].data_type == onnx.TensorProto.FLOAT8E4M3FN
            assert e["q"].op_type == "QuantizeLinear" and e["zero"].data_type == onnx.TensorProto.FLOAT8E4M3FN
            # activation scale = calibrated max / 448 (hand-derived from the E4M3 range)
            amax = json.loads((engine_fp8 / "calibration/fp8.json").read_text())["amax"][layer]
            scale = float(onnx.numpy_helper.to_array(e["q_scale"]))
            assert scale == pytest.approx(amax / 448, rel=1e-6)
    assert seen and all(quantized == fp8.quantizable(layer) for layer, quantized in seen.items())
    assert sum(seen.values()) == manifest["quantization"]["full"]["quantized"] == 44  # flux-tiny's 2 + 4 blocks
    # the forecast graph stays in float: no Q/DQ at all
    forecast = onnx.load(str(engine_fp8 / "forecast.onnx"))
    assert not {"QuantizeLinear", "DequantizeLinear"} & {n.op_type for n in forecast.graph.node}


def test_calibration_records_only_full_steps(engine_fp8):
    from seer.runtime.schedule import Schedule

    c = json.loads((engine_fp8 / "calibration/fp8.json").read_text())
    full = Schedule.taylorseer(STEPS, 6, 3).full
    assert c["full_steps"] == [i for i, f in enumerate(full) if f] == [0, 1, 2, 8]
    # one pass of the first quantized layer per prompt and full step, none at forecast steps
    assert c["recorded_passes"] == SIZE * 4 and c["prompts"] == SIZE


def test_fp8_graph_runs_in_onnx_runtime_close_to_float32(engine_fp8, engine_modules):
    from seer.runtime.pipeline import Pipeline

    kw = dict(seed=2, steps=20, return_latents=True)
    for extra in ({"no_cache": True}, {"interval": 6, "order": 1, "warmup": 3}):  # FP8 against float32, same schedule
        ref = Pipeline.load(engine_modules)("a red circle at the top left", **extra, **kw).latents
        got = Pipeline.load(engine_fp8)("a red circle at the top left", **extra, **kw).latents
        err = np.abs(got - ref).max() / np.abs(ref).max()
        assert 0 < err < 0.1, err  # FP8 changes the numbers, a little


def test_saved_calibration_is_reused_and_fp8_dirs_are_tensorrt_ready(engine_fp8, tmp_path):
    from seer.engines.trt_check import check_engine_dir
    from seer.export.flux_export import FP8Options, export_flux

    assert check_engine_dir(engine_fp8) == {k: [] for k in ("clip", "t5", "full", "forecast", "vae_decoder")}
    again = tmp_path / "again"
    export_flux("flux-tiny", again, log=lambda m: None, cache="modules", max_order=1,
                fp8=FP8Options(calibration=str(engine_fp8 / "calibration/fp8.json")))
    a, b = (onnx.load(str(d / "full.onnx")) for d in (engine_fp8, again))
    weights = lambda m: {i.name: i.raw_data for i in m.graph.initializer if "fp8" in i.name or "scale" in i.name}  # noqa: E731
    assert weights(a) == weights(b)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_fp8_over_16_bit_graphs(engine_fp8, engine_modules, tmp_path, precision):
    """FP8 on top of a 16-bit export: Q/DQ dequantizing to the graph's dtype, TensorRT-ready, and a
    torch program of the same quantization that --backend torch runs (bf16 runs nowhere else on a
    CPU); for fp16, ONNX Runtime's Q/DQ kernels and the torch program agree."""
    from seer.engines.trt_check import check_engine_dir
    from seer.export.flux_export import FP8Options, export_flux
    from seer.runtime.pipeline import Pipeline

    dtype = {"fp16": "float16", "bf16": "bfloat16"}[precision]
    out = tmp_path / precision
    export_flux("flux-tiny", out, log=lambda m: None, cache="modules", max_order=1, precision=precision,
                fp8=FP8Options(calibration=str(engine_fp8 / "calibration/fp8.json")))
    m = json.loads((out / "manifest.json").read_text())
    assert m["quantization"]["full"]["dequantize_to"] == dtype and "torch" in m["formats"]
    assert check_engine_dir(out) == {k: [] for k in ("clip", "t5", "full", "forecast", "vae_decoder")}
    graph = onnx.load(str(out / "full.onnx"))
    inits = {i.name: i for i in graph.graph.initializer}
    scales = [inits[n.input[1]] for n in graph.graph.node if n.op_type == "DequantizeLinear"]
    assert len(scales) == 2 * m["quantization"]["full"]["quantized"]
    assert {s.data_type for s in scales} == {getattr(onnx.TensorProto, dtype.upper())}

    kw = dict(seed=2, steps=12, no_cache=True, return_latents=True)
    ref = Pipeline.load(engine_modules)("a red circle at the top left", **kw).latents  # float32, no FP8
    got = Pipeline.load(out, backend="torch", trust_torch_programs=True)("a red circle at the top left", **kw).latents
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert 0 < err < 0.1, err
    if precision == "fp16":
        ort = Pipeline.load(out)("a red circle at the top left", **kw).latents
        assert np.abs(ort - got).max() / np.abs(got).max() < 0.5 * err


def test_bad_calibration_input(tmp_path):
    from seer.export.cli import main

    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing here\n\n")
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "other"}')
    for args, message in ((["--calibration-prompts", str(empty)], "holds no prompts"),
                          (["--calibration-prompts", str(tmp_path / "missing.txt")], "does not exist"),
                          (["--calibration-size", "0"], "at least 1"),
                          (["--calibration", str(bad)], "is not an FP8 calibration")):
        r = CliRunner().invoke(main, ["flux-tiny", "--out", str(tmp_path / "e"), "--fp8", *args])
        assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output
        assert not (tmp_path / "e").exists()


def test_fp8_needs_compute_capability_8_9():
    for cc in ("8.9", "9.0", "10.0", "12.0"):
        check_fp8_device(cc)
    for cc in ("8.6", "8.0", "7.5"):
        with pytest.raises(UsageError, match="compute capability 8.9 or newer"):
            check_fp8_device(cc)
