"""FP8 Q/DQ rewriting of an exported graph (calib.fp8.quantize_graph) on small graphs: Q/DQ in the
graph's own precision (float32, float16, bfloat16), values checked against a numpy fake-quantized
reference, ONNX Runtime runs (float32/float16: its CPU provider has no bfloat16 kernels), and the
file layout: external data kept in the same file, written beside the original, nothing left over."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings

import ml_dtypes
import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from seer.calib import fp8

from fp8_graphs import layers

F8 = ml_dtypes.float8_e4m3fn
DIMS = (16, 24, 40, 12)  # no square weight (its orientation in the graph is unambiguous); FP8 weights > 256 bytes
LAYERS = ("fc1", "fc2", "fc3")
DTYPES = {torch.float32: (np.float32, onnx.TensorProto.FLOAT), torch.float16: (np.float16, onnx.TensorProto.FLOAT16),
          torch.bfloat16: (ml_dtypes.bfloat16, onnx.TensorProto.BFLOAT16)}


class Stack(torch.nn.Module):
    def __init__(self):
        super().__init__()
        for name, i, o in zip(LAYERS, DIMS, DIMS[1:]):
            setattr(self, name, torch.nn.Linear(i, o))

    def forward(self, x):
        x = torch.nn.functional.gelu(self.fc1(x))
        return self.fc3(torch.nn.functional.gelu(self.fc2(x)))


class Wrapper(torch.nn.Module):
    """The stack as attribute `t`: its layers are exported as `t.fc1`..., as quantize_graph's prefix expects."""

    def __init__(self):
        super().__init__()
        self.t = Stack()

    def forward(self, x):
        return self.t(x)


def make(dtype: torch.dtype, shape=(2, 5, DIMS[0]), seed: int = 0):
    """The wrapped stack in `dtype`, a sample input, and per layer the largest |input| it sees."""
    torch.manual_seed(seed)
    module = Wrapper().to(dtype).eval()
    x = torch.randn(*shape).to(dtype)
    amax = {}
    hooks = [getattr(module.t, n).register_forward_pre_hook(
        lambda m, args, n=n: amax.__setitem__(n, float(args[0].abs().max()))) for n in LAYERS]
    with torch.no_grad():
        module(x)
    for h in hooks:
        h.remove()
    return module, x, amax


def export(module, x, path, external_data: str | None = None, **save):
    import onnx_ir as ir

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(None):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (x,), input_names=["x"], output_names=["y"], opset_version=18,
                                    dynamo=True, verbose=False)
    ir.save(program.model, str(path), external_data=external_data, **save)
    return path


def scale(amax: float, np_dtype) -> float:
    """amax / 448 in float32, rounded to the layer's dtype (what the graph must hold)."""
    return float(np.asarray(np.float32(amax) / np.float32(448), np.float32).astype(np_dtype))


def fake_quant(a: np.ndarray, s: float, np_dtype=np.float32) -> np.ndarray:
    """Quantize-dequantize (E4M3, per tensor, scale `s`): divided in float32, dequantized to `np_dtype`
    (DequantizeLinear's output type), returned widened to float32."""
    q = np.clip(a.astype(np.float32) / np.float32(s), -448, 448).astype(F8)
    return (q.astype(np.float32) * np.float32(s)).astype(np_dtype).astype(np.float32)


def reference(module, x, amax, np_dtype, quantized=True) -> np.ndarray:
    """The stack in float32, every linear layer's input and weight fake-quantized as the graph does."""
    h = x.float()
    for i, name in enumerate(LAYERS):
        lin = getattr(module.t, name)
        w, b = lin.weight.detach().float().numpy(), lin.bias.detach().float()
        a = h.numpy()
        if quantized:
            a = fake_quant(a, scale(amax[name], np_dtype), np_dtype)
            w = fake_quant(w, scale(np.abs(w).max(), np_dtype), np_dtype)
        h = torch.from_numpy(a) @ torch.from_numpy(w).T + b
        if i < len(LAYERS) - 1:
            h = torch.nn.functional.gelu(h)
    return h.numpy()


def run_ort(path, x: torch.Tensor, outputs=("y",)) -> list[np.ndarray] | np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.disable_quant_qdq", "1")  # as runtime/backends.py: run Q/DQ as written
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    got = sess.run(list(outputs), {"x": x.numpy()})
    return got[0] if tuple(outputs) == ("y",) else got


def as_array(t: onnx.TensorProto) -> np.ndarray:
    return numpy_helper.to_array(t)


def leftovers(directory) -> list[str]:
    return sorted(p for p in os.listdir(directory) if p.startswith(".") or "tmp" in p)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_qdq_in_the_graphs_precision(tmp_path, dtype):
    np_dtype, onnx_dtype = DTYPES[dtype]
    module, x, amax = make(dtype)
    path = export(module, x, tmp_path / "g.onnx")
    assert fp8.quantize_graph(path, amax) == {"quantized": len(LAYERS), "kept": 0}
    onnx.checker.check_model(str(path))
    assert sorted(os.listdir(tmp_path)) == ["g.onnx"]

    model = onnx.load(str(path))
    assert max(i.version for i in model.opset_import if i.domain in ("", "ai.onnx")) == 19
    found = layers(model)
    assert sorted(found) == list(LAYERS) and all("q" in e for e in found.values())
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert len(dq) == 2 * len(LAYERS) and len(q) == len(LAYERS)
    inits = {i.name: i for i in model.graph.initializer}
    # DequantizeLinear outputs its scale's type: every one dequantizes to the graph's dtype
    assert {inits[n.input[1]].data_type for n in [*dq, *q]} == {onnx_dtype}
    assert {inits[n.input[2]].data_type for n in q} == {onnx.TensorProto.FLOAT8E4M3FN}
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    assert {types[n.output[0]] for n in dq} == {onnx_dtype}

    for name, e in found.items():
        lin = getattr(module.t, name)
        w = lin.weight.detach().float().numpy()
        w8 = as_array(e["weight_fp8"])
        assert w8.dtype == F8
        if e["node"].op_type == "MatMul":  # the exporter folds the transpose into the weight
            w = w.T
        assert w8.shape == w.shape
        # scales: max / 448 computed in float32, rounded to the graph's dtype
        w_scale, a_scale = as_array(e["weight_scale"]), as_array(e["input_scale"])
        assert w_scale.dtype == a_scale.dtype == np_dtype and w_scale.shape == a_scale.shape == ()
        assert float(w_scale) == scale(np.abs(w).max(), np_dtype)
        assert float(a_scale) == scale(amax[name], np_dtype)
        # FP8 weights quantized with the rounded scale: exactly what Q would make of them
        assert np.array_equal(w8.view(np.uint8),
                              np.clip(w / np.float32(w_scale), -448, 448).astype(F8).view(np.uint8))
        # dequantized, within E4M3 precision of the weights (3 mantissa bits: 2^-4 relative; the
        # subnormal step 2^-9 of the scale; the scale's rounding can clip the largest by 2^-8)
        back = w8.astype(np.float32) * np.float32(w_scale)
        assert np.all(np.abs(back - w) <= np.abs(w) * 2.0**-4 + float(w_scale) * 2.0**-9 + np.abs(w).max() * 2.0**-8)
        assert np.abs(back).max() > 0.95 * np.abs(w).max()  # the range is used


@pytest.mark.parametrize("dtype,shape", [(torch.float32, (2, 5, DIMS[0])), (torch.float32, (4, DIMS[0])),
                                         (torch.float16, (2, 5, DIMS[0])), (torch.float16, (64, DIMS[0]))],
                         ids=["float32", "float32-gemm", "float16", "float16-gemm"])
def test_quantized_graph_runs_in_onnx_runtime(tmp_path, dtype, shape):
    np_dtype, onnx_dtype = DTYPES[dtype]
    module, x, amax = make(dtype, shape, seed=1)
    path = export(module, x, tmp_path / "g.onnx")
    assert ("Gemm" if len(shape) == 2 else "MatMul") in {n.op_type for n in onnx.load(str(path)).graph.node}
    assert fp8.quantize_graph(path, amax) == {"quantized": 3, "kept": 0}

    got = run_ort(path, x).astype(np.float32)
    want = reference(module, x, amax, np_dtype)
    plain = reference(module, x, amax, np_dtype, quantized=False)
    peak = np.abs(want).max()
    err = np.abs(got - want) / peak
    if dtype == torch.float32:
        assert err.max() < 1e-5  # the same arithmetic, up to summation order
    else:
        # ONNX Runtime computes in float16: where that moves an activation across an FP8 rounding
        # boundary, it lands one FP8 step (6 %) away, and that carries on; most elements agree closely
        assert np.quantile(err, 0.75) < 2e-3 and err.max() < 5e-2
    assert 1e-3 < np.abs(got - plain).max() / peak < 0.1  # FP8 changes the numbers, a little

    # each layer alone, from the activation ONNX Runtime feeds it: fake-quantized matmul, closely
    model = onnx.load(str(path))
    found = layers(model)
    names = [n for layer in LAYERS for n in (found[layer]["q"].input[0], found[layer]["node"].output[0])]
    model.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx_dtype, None) for n in names)
    onnx.save(model, str(tmp_path / "probe.onnx"))
    values = iter(run_ort(tmp_path / "probe.onnx", x, names))
    for layer in LAYERS:
        a, y = (next(values).astype(np.float32) for _ in range(2))
        lin, node = getattr(module.t, layer), found[layer]["node"]
        w = lin.weight.detach().float().numpy()
        want = fake_quant(a, scale(amax[layer], np_dtype), np_dtype) @ \
            fake_quant(w, scale(np.abs(w).max(), np_dtype), np_dtype).T
        if node.op_type == "Gemm":
            want = want + lin.bias.detach().float().numpy()
        assert np.abs(y - want).max() / np.abs(want).max() < (1e-5 if dtype == torch.float32 else 2e-3), layer


def test_external_data_keeps_its_file(tmp_path):
    import onnx_ir as ir

    module, x, amax = make(torch.float32, seed=2)
    path = export(module, x, tmp_path / "g.onnx", external_data="g.onnx.data")
    before = onnx.load(str(path), load_external_data=False)
    old = [t for t in before.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert len(old) == 3  # the weights (the biases are below ir.save's 256-byte threshold)
    data_size, data_inode = (tmp_path / "g.onnx.data").stat().st_size, (tmp_path / "g.onnx.data").stat().st_ino
    (tmp_path / "single").mkdir()
    single = export(module, x, tmp_path / "single" / "g.onnx")

    assert fp8.quantize_graph(path, amax) == fp8.quantize_graph(single, amax) == {"quantized": 3, "kept": 0}
    assert sorted(os.listdir(tmp_path)) == ["g.onnx", "g.onnx.data", "single"] and not leftovers(tmp_path / "single")
    header = onnx.load(str(path), load_external_data=False)
    external = {t.name: {e.key: e.value for e in t.external_data} for t in header.graph.initializer
                if t.data_location == onnx.TensorProto.EXTERNAL}
    fp8_weights = [t for t in header.graph.initializer if t.name.endswith(".weight_fp8")]
    assert len(fp8_weights) == 3 and all(t.name in external and not t.raw_data for t in fp8_weights)
    assert {e["location"] for e in external.values()} == {"g.onnx.data"}
    # the data file holds exactly the external tensors (the FP8 weights): a new file, a quarter of the
    # float32 weights' bytes
    stat = (tmp_path / "g.onnx.data").stat()
    assert stat.st_size == sum(int(e["length"]) for e in external.values()) == data_size // 4
    assert stat.st_ino != data_inode
    assert path.stat().st_size < 64 * 1024
    onnx.checker.check_model(str(path))
    # the same graph and values as the single-file quantization, and ONNX Runtime loads it
    loaded, inline = onnx.load(str(path)), onnx.load(str(single))
    assert {t.name: numpy_helper.to_array(t).tobytes() for t in loaded.graph.initializer} == \
        {t.name: numpy_helper.to_array(t).tobytes() for t in inline.graph.initializer}
    assert np.array_equal(run_ort(path, x), run_ort(single, x))
    model = ir.load(str(path))
    assert all(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values()
               if v.name.endswith(".weight_fp8"))


def test_several_data_files_become_one(tmp_path):
    module, x, amax = make(torch.float32, seed=3)
    path = export(module, x, tmp_path / "g.onnx", external_data="w.data", max_shard_size_bytes=2048)
    shards = sorted(os.listdir(tmp_path))
    assert len(shards) > 3, shards
    assert fp8.quantize_graph(path, amax) == {"quantized": 3, "kept": 0}
    assert sorted(os.listdir(tmp_path)) == ["g.onnx", "g.onnx.data"]  # the old shards are gone
    assert np.abs(run_ort(path, x) - reference(module, x, amax, np.float32)).max() < 1e-5


def test_kept_layers_and_unchanged_files_on_failure(tmp_path, monkeypatch):
    module, x, amax = make(torch.float32, seed=4)
    path = export(module, x, tmp_path / "g.onnx", external_data="g.onnx.data")
    files = {p: (tmp_path / p).read_bytes() for p in os.listdir(tmp_path)}

    def broken(*a, **k):
        raise onnx.checker.ValidationError("no")

    monkeypatch.setattr(onnx.checker, "check_model", broken)
    with pytest.raises(onnx.checker.ValidationError):
        fp8.quantize_graph(path, amax)
    assert {p: (tmp_path / p).read_bytes() for p in os.listdir(tmp_path)} == files  # untouched, no scratch left
    monkeypatch.undo()

    # a layer without calibration stays in float
    partial = {k: v for k, v in amax.items() if k != "fc2"}
    assert fp8.quantize_graph(path, partial) == {"quantized": 2, "kept": 1}
    found = layers(onnx.load(str(path)))
    assert {k for k, e in found.items() if "q" in e} == {"fc1", "fc3"}
    assert found["fc2"]["dq_w"] is None  # its weight is still the plain initializer
    # quantizing again changes nothing more: the FP8 layers' weights are no initializers now
    assert fp8.quantize_graph(path, amax) == {"quantized": 1, "kept": 2}
    assert sorted(os.listdir(tmp_path)) == ["g.onnx", "g.onnx.data"]
    got, want = run_ort(path, x), reference(module, x, amax, np.float32)
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-5


def test_shared_weights_are_kept(tmp_path):
    module, x, amax = make(torch.float32, seed=5)
    path = export(module, x, tmp_path / "g.onnx")
    model = onnx.load(str(path))
    # a second consumer of fc2's weight (an Identity to an extra output) keeps fc2 in float
    node = next(n for n in model.graph.node if fp8._linear_module(n, "t.") == "fc2")
    model.graph.node.append(onnx.helper.make_node("Identity", [node.input[1]], ["w2"]))
    shape = next(list(i.dims) for i in model.graph.initializer if i.name == node.input[1])
    model.graph.output.append(onnx.helper.make_tensor_value_info("w2", onnx.TensorProto.FLOAT, shape))
    onnx.save(model, str(path))
    assert fp8.quantize_graph(path, amax) == {"quantized": 2, "kept": 1}


def test_external_constants_survive_the_data_file_replacement(tmp_path):
    # a Constant node whose tensor sits in the data file (onnx can store attributes there): the old
    # data file is replaced, so the constant must move with the graph
    module, x, amax = make(torch.float32, seed=6)
    path = export(module, x, tmp_path / "g.onnx")
    model = onnx.load(str(path))
    bias = next(i for i in model.graph.initializer if i.name == "t.fc3.bias")
    model.graph.initializer.remove(bias)
    model.graph.node.insert(0, onnx.helper.make_node("Constant", [], [bias.name], value=bias))
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="g.onnx.data", size_threshold=0, convert_attribute=True)
    header = onnx.load(str(path), load_external_data=False)
    const = next(n for n in header.graph.node if n.op_type == "Constant").attribute[0].t
    assert const.data_location == onnx.TensorProto.EXTERNAL
    os.chmod(path, 0o640)

    assert fp8.quantize_graph(path, amax) == {"quantized": 3, "kept": 0}
    assert sorted(os.listdir(tmp_path)) == ["g.onnx", "g.onnx.data"]
    assert path.stat().st_mode & 0o777 == 0o640  # the replaced file keeps its permissions
    got, want = run_ort(path, x), reference(module, x, amax, np.float32)
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-5
