"""The static TensorRT-readiness check: seer's own graphs pass, and a graph breaking any one rule
fails with that rule named (graphs built by hand with onnx.helper, so each breaks exactly one rule)."""

from __future__ import annotations

import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import numpy as np

from seer.engines import trt_check
from seer.engines.check_cli import main as check_main

F, H, D, I64 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.INT64


def _save(tmp_path, nodes, inputs, outputs, initializers=(), opset=18, name="g", functions=()):
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=list(initializers))
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in {f.domain for f in functions}]
    model = helper.make_model(graph, opset_imports=imports, functions=list(functions))
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def _vi(name, elem, shape=(2, 3)):
    return helper.make_tensor_value_info(name, elem, list(shape))


def _rules(path):
    return sorted({f.rule for f in trt_check.check_onnx(path)})


def test_seer_graphs_are_tensorrt_ready(engine_modules, engine_lite, engine_guided):
    for directory in (engine_modules, engine_lite, engine_guided):
        results = trt_check.check_engine_dir(directory)
        assert set(results) == {"clip", "t5", "full", "forecast", "vae_decoder"}
        assert results == {k: [] for k in results}, [str(f) for v in results.values() for f in v]


def test_a_clean_graph_passes(tmp_path):
    w = numpy_helper.from_array(np.ones((3, 4), np.float32), "w")
    axes = numpy_helper.from_array(np.array([0], np.int64), "axes")
    path = _save(tmp_path, [helper.make_node("MatMul", ["x", "w"], ["y"]),
                            helper.make_node("Unsqueeze", ["y", "axes"], ["z"]),
                            helper.make_node("Pow", ["z", "z"], ["out"])],
                 [_vi("x", F)], [_vi("out", F, (1, 2, 4))], [w, axes])
    assert trt_check.check_onnx(path) == []


def test_float64_anywhere_fails(tmp_path):
    c = numpy_helper.from_array(np.ones((2, 3), np.float64), "c")
    path = _save(tmp_path, [helper.make_node("Cast", ["x"], ["xd"], to=D), helper.make_node("Add", ["xd", "c"], ["y"]),
                            helper.make_node("Cast", ["y"], ["out"], to=F)], [_vi("x", F)], [_vi("out", F)], [c])
    findings = trt_check.check_onnx(path)
    assert _rules(path) == ["float64"]
    assert {f.where for f in findings} >= {"c", "xd", "y", "Cast"}  # the constant, the values, the cast


@pytest.mark.parametrize("op, domain, message", [
    ("Unique", "", "documented as unsupported"),
    ("MadeUpOp", "", "not in the support table"),
    ("FusedGelu", "com.microsoft", "has no TensorRT importer"),
])
def test_unsupported_operators_fail(tmp_path, op, domain, message):
    node = helper.make_node(op, ["x"], ["out"], domain=domain)
    graph = helper.make_graph([node], "g", [_vi("x", F)], [_vi("out", F)])
    imports = [helper.make_opsetid("", 18)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=imports), str(path))
    findings = [f for f in trt_check.check_onnx(path) if f.rule == "operator"]
    assert len(findings) == 1 and message in findings[0].message


def test_custom_fp8_qdq_and_local_functions_are_accepted(tmp_path):
    body = helper.make_function("seer.fn", "Twice", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])],
                                [helper.make_opsetid("", 18)])
    scale = numpy_helper.from_array(np.array(1.0, np.float32), "s")
    path = _save(tmp_path, [helper.make_node("Twice", ["x"], ["y"], domain="seer.fn"),
                            helper.make_node("TRT_FP8QuantizeLinear", ["y", "s"], ["q"], domain="trt"),
                            helper.make_node("TRT_FP8DequantizeLinear", ["q", "s"], ["out"], domain="trt")],
                 [_vi("x", F)], [_vi("out", F)], [scale], functions=[body])
    assert [f for f in trt_check.check_onnx(path) if f.rule == "operator"] == []


def test_operator_on_a_type_tensorrt_lacks_fails(tmp_path):
    path = _save(tmp_path, [helper.make_node("MatMul", ["a", "b"], ["out"])],
                 [_vi("a", I64), _vi("b", I64, (3, 2))], [_vi("out", I64, (2, 2))])
    (f,) = trt_check.check_onnx(path)
    assert f.rule == "dtype" and "MatMul on INT64" in f.message and "FP32" in f.fix


def test_types_tensorrt_does_not_have_fail(tmp_path):
    path = _save(tmp_path, [helper.make_node("Cast", ["x"], ["u"], to=TensorProto.UINT16),
                            helper.make_node("Cast", ["u"], ["b"], to=TensorProto.UINT8),
                            helper.make_node("Cast", ["b"], ["out"], to=F)], [_vi("x", F)], [_vi("out", F)])
    messages = [f.message for f in trt_check.check_onnx(path) if f.rule == "dtype"]
    assert any("UINT16, which TensorRT does not have" in m for m in messages)
    assert any("UINT8 inside the network" in m for m in messages)


def test_quantized_graph_edges_fail(tmp_path):
    path = _save(tmp_path, [helper.make_node("Identity", ["x"], ["out"])],
                 [_vi("x", TensorProto.INT8)], [_vi("out", TensorProto.INT8)])
    assert _rules(path) == ["io-dtype"]


def test_mixed_types_need_explicit_casts(tmp_path):
    mixed = _save(tmp_path, [helper.make_node("Add", ["a", "b"], ["out"])], [_vi("a", H), _vi("b", F)],
                  [_vi("out", F)], name="mixed")
    assert "typing" in _rules(mixed)
    power = _save(tmp_path, [helper.make_node("Pow", ["a", "e"], ["out"])], [_vi("a", H), _vi("e", F, ())],
                  [_vi("out", H)], name="power")
    (f,) = trt_check.check_onnx(power)
    assert f.rule == "typing" and "cast the exponent to FLOAT16" in f.fix


def test_run_time_axes_fail(tmp_path):
    path = _save(tmp_path, [helper.make_node("Unsqueeze", ["x", "axes"], ["out"])],
                 [_vi("x", F), _vi("axes", I64, (1,))], [_vi("out", F, (1, 2, 3))])
    (f,) = trt_check.check_onnx(path)
    assert f.rule == "constant-input" and "'axes'" in f.message


def test_documented_restrictions_fail(tmp_path):
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    cubic = _save(tmp_path, [helper.make_node("Resize", ["x", "", "scales"], ["out"], mode="cubic")],
                  [_vi("x", F, (1, 1, 2, 2))], [_vi("out", F, (1, 1, 4, 4))], [scales], name="cubic")
    (f,) = trt_check.check_onnx(cubic)
    assert f.rule == "restriction" and "mode='cubic'" in f.message
    nearest = _save(tmp_path, [helper.make_node("Resize", ["x", "", "scales"], ["out"], mode="nearest")],
                    [_vi("x", F, (1, 1, 2, 2))], [_vi("out", F, (1, 1, 4, 4))], [scales], name="nearest")
    assert trt_check.check_onnx(nearest) == []
    g = numpy_helper.from_array(np.ones(3, np.float32), "g")
    norm = _save(tmp_path, [helper.make_node("LayerNormalization", ["x", "g"], ["y", "mean"]),
                            helper.make_node("Add", ["y", "mean"], ["out"])],
                 [_vi("x", F)], [_vi("out", F)], [g], name="norm")
    assert _rules(norm) == ["restriction"]


def test_size_opset_and_external_data(tmp_path, monkeypatch):
    path = _save(tmp_path, [helper.make_node("Relu", ["x"], ["out"])], [_vi("x", F)], [_vi("out", F)], opset=21)
    assert _rules(path) == ["opset"]
    monkeypatch.setattr(trt_check, "PROTOBUF_LIMIT", 10)  # stands in for a 2 GiB protobuf
    path = _save(tmp_path, [helper.make_node("Relu", ["x"], ["out"])], [_vi("x", F)], [_vi("out", F)], name="big")
    assert _rules(path) == ["size"]
    monkeypatch.undo()
    w = numpy_helper.from_array(np.ones((3, 3), np.float32), "w")
    model = helper.make_model(helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["out"])], "g",
                                                [_vi("x", F, (3, 3))], [_vi("out", F, (3, 3))], [w]),
                              opset_imports=[helper.make_opsetid("", 18)])
    ext = tmp_path / "ext.onnx"
    onnx.save(model, str(ext), save_as_external_data=True, location="ext.data", size_threshold=0)
    assert trt_check.check_onnx(ext) == []
    (tmp_path / "ext.data").unlink()
    (f,) = trt_check.check_onnx(ext)
    assert f.rule == "size" and "ext.data" in f.message


def test_cli(engine_lite, tmp_path):
    r = CliRunner().invoke(check_main, [str(engine_lite)])
    assert r.exit_code == 0, r.output
    assert "5 of 5 graphs ready for TensorRT" in r.output
    bad = _save(tmp_path, [helper.make_node("Cast", ["x"], ["out"], to=D)], [_vi("x", F)], [_vi("out", D)])
    r = CliRunner().invoke(check_main, [str(engine_lite), str(bad)])
    assert r.exit_code == 1 and "[float64]" in r.output and "fix:" in r.output
    assert "5 of 6 graphs" in r.output
    r = CliRunner().invoke(check_main, [str(bad), "--json"])
    assert r.exit_code == 1 and '"rule": "float64"' in r.output
    r = CliRunner().invoke(check_main, [str(tmp_path / "nowhere.txt")])
    assert r.exit_code == 2 and "error:" in r.output and "Traceback" not in r.output
