"""The DiT graphs (export/dit.py) against their oracle, diffusers' DiTTransformer2DModel, on tiny
random models (diffusers' own test config: 2 blocks of 2 heads x 8, patch 2, 1000 classes):

Tolerances are max |ours - oracle| / max |oracle|, 1e-6 each; measured 0 on every check (the same
operations in the same order; at real widths the fused gate matmul of the forecast graph may sum
in another order, hence not 0 by assertion):
- DitFull's sample equals `transformer(x, timestep=t, class_labels=y).sample` (int64 timesteps
  there, float32 here), with and without the unconditional label row;
- its features equal what forward hooks on every block's `attn1` and `ff` capture;
- DitForecast fed DitFull's features with coefficients [1, 0] gives DitFull's sample (blocks with
  distinct and with shared conditioning embedders), and with two factors and coefficients [1, k]
  the gated residual chain computed here by hand from diffusers' modules;
- lite returns factor_0[0] (Taylor sum at [1, 0], exactly);
- both export through export_graph (dynamic batch B_model, static spatial size) and pass its
  ONNX Runtime-vs-torch check.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from seer.export.dit import DitForecast, DitFull, DitShape
from seer.export.graphs import GraphIO, export_graph

diffusers = pytest.importorskip("diffusers")

TINY = dict(sample_size=8, patch_size=2, attention_head_dim=8, num_attention_heads=2, in_channels=4,
            out_channels=8, num_layers=2, num_embeds_ada_norm=1000, norm_type="ada_norm_zero",
            norm_elementwise_affine=False)


def tiny(seed=0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    t = diffusers.DiTTransformer2DModel(**{**TINY, **overrides}).eval()
    # every parameter redrawn at unit-ish scale: no gate, projection or embedding near zero, so
    # every path shows in the comparisons
    with torch.no_grad():
        for p in t.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return t


def no_null_class(t: torch.nn.Module) -> torch.nn.Module:
    """The same model with label tables without the unconditional row (LabelEmbedding with
    dropout_prob 0): DiTTransformer2DModel's config cannot say so, its blocks can."""
    from diffusers.models.embeddings import LabelEmbedding

    t = copy.deepcopy(t)
    for b in t.transformer_blocks:
        old = b.norm1.emb.class_embedder
        new = LabelEmbedding(old.num_classes, old.embedding_table.embedding_dim, 0.0)
        with torch.no_grad():
            new.embedding_table.weight.copy_(old.embedding_table.weight[: old.num_classes])
        b.norm1.emb.class_embedder = new
    return t.eval()


def inputs(t, batch=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    s = t.config.sample_size
    x = torch.randn(batch, t.config.in_channels, s, s, generator=g)
    ts = torch.tensor([999, 500, 3, 250, 0][:batch], dtype=torch.int64)
    y = torch.tensor([0, 999, 417, 1000, 5][:batch], dtype=torch.int64)
    return x, ts, y


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def model():
    return tiny()


# -- the shape ----------------------------------------------------------------------------------

def test_shape(model):
    s = DitShape.of(model)
    assert (s.n_blocks, s.dim, s.head_dim, s.in_channels, s.out_channels, s.patch_size, s.sample_size,
            s.num_classes, s.has_null_class) == (2, 16, 8, 4, 8, 2, 8, 1000, True)
    assert s.tokens == 16
    assert s.stream_names("modules") == ["block.0.attn", "block.0.mlp", "block.1.attn", "block.1.mlp"]
    assert s.stream_names("lite") == ["output"]
    assert s.feature_dim("modules") == 16 and s.feature_dim("lite") == 8
    assert DitShape.of(no_null_class(model)).has_null_class is False
    assert DitShape.of(tiny(out_channels=None)).out_channels == 4


def refuse(t, match):
    with pytest.raises(ValueError, match=match):
        DitShape.of(t)
    with pytest.raises(ValueError, match=match):
        DitFull(t, "modules")
    with pytest.raises(ValueError, match=match):
        DitForecast(t, "modules")


def test_unsupported_configs_refused(model):
    t = copy.deepcopy(model)
    t.transformer_blocks[1].norm_type = "ada_norm"
    refuse(t, "block 1 is not an adaLN-Zero")

    from diffusers.models.attention_processor import Attention

    t = copy.deepcopy(model)
    t.transformer_blocks[0].attn2 = Attention(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8)
    refuse(t, "cross-attention")

    t = copy.deepcopy(model)
    t.register_to_config(norm_type="ada_norm_single")
    refuse(t, "norm_type 'ada_norm_single'")

    t = copy.deepcopy(model)
    t.pos_embed.pos_embed_max_size = 8
    refuse(t, "patch embedder")

    t = copy.deepcopy(model)
    from diffusers.models.embeddings import LabelEmbedding

    t.transformer_blocks[1].norm1.emb.class_embedder = LabelEmbedding(1000, 16, 0.0)
    refuse(t, "unconditional row")

    refuse(torch.nn.Linear(2, 2), "not a diffusers DiTTransformer2DModel")
    with pytest.raises(ValueError, match="granularity"):
        DitFull(model, "blocks")


def test_other_spatial_sizes_refused(model):
    x = torch.randn(1, 4, 16, 16)
    with pytest.raises(ValueError, match="8x8 latents"):
        DitFull(model, "lite")(x, torch.tensor([1.0]), torch.tensor([1]))


# -- the full graph -----------------------------------------------------------------------------

@pytest.mark.parametrize("null", [True, False])
def test_full_equals_diffusers(model, null):
    t = model if null else no_null_class(model)
    x, ts, y = inputs(t)
    if not null:
        y = y.clamp(max=999)  # no unconditional row
    with torch.no_grad():
        want = t(x, timestep=ts, class_labels=y).sample
        for granularity in ("modules", "lite"):
            got = DitFull(t, granularity)(x, ts.float(), y)
            sample = got[0] if granularity == "modules" else got
            assert sample.shape == want.shape == (3, 8, 8, 8)
            assert rel(sample, want) <= 1e-6, (granularity, rel(sample, want))


def test_features_are_what_hooks_capture(model):
    """The oracle: diffusers' own forward, with hooks on every block's attn1 and ff."""
    x, ts, y = inputs(model)
    captured = []
    hooks = [m.register_forward_hook(lambda mod, args, out: captured.append(out))
             for b in model.transformer_blocks for m in (b.attn1, b.ff)]
    try:
        with torch.no_grad():
            model(x, timestep=ts, class_labels=y)
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        _, features = DitFull(model, "modules")(x, ts.float(), y)
    assert features.shape == (4, 3, 16, 16)  # [2 * n_blocks, B, N, dim]
    assert len(captured) == 4  # attn1 and ff of each block, in stream order
    for s, want in enumerate(captured):
        assert rel(features[s], want) <= 1e-6, (s, rel(features[s], want))


# -- the forecast graph -------------------------------------------------------------------------

def hand_forecast(t, x, ts, y, factors, coefficients):
    """The gated residual chain from diffusers' modules, one block at a time, no fusing."""
    h = t.pos_embed(x)
    for i, b in enumerate(t.transformer_blocks):
        chunks = b.norm1.linear(torch.nn.functional.silu(b.norm1.emb(ts, y, hidden_dtype=h.dtype))).chunk(6, dim=1)
        for s, gate in ((2 * i, chunks[2]), (2 * i + 1, chunks[5])):
            f_hat = sum(c * f[s] for c, f in zip(coefficients.tolist(), factors))
            h = h + gate[:, None] * f_hat
    cond = t.transformer_blocks[0].norm1.emb(ts, y, hidden_dtype=h.dtype)
    shift, scale = t.proj_out_1(torch.nn.functional.silu(cond)).chunk(2, dim=1)
    out = t.proj_out_2(t.norm_out(h) * (1 + scale[:, None]) + shift[:, None])
    n, side, p, c = out.shape[0], t.config.sample_size // 2, 2, t.out_channels
    out = out.reshape(n, side, side, p, p, c)
    return torch.einsum("nhwpqc->nchpwq", out).reshape(n, c, side * p, side * p)


def shared_embedders(t):
    """Every block's conditioning embedder a copy of block 0's, as converted DiT checkpoints are."""
    t = copy.deepcopy(t)
    for b in t.transformer_blocks[1:]:
        b.norm1.emb.load_state_dict(t.transformer_blocks[0].norm1.emb.state_dict())
    return t


@pytest.mark.parametrize("variant", ["distinct", "shared", "no-null"])
def test_forecast_at_order_0_is_the_full_step(model, variant):
    t = {"distinct": model, "shared": shared_embedders(model), "no-null": no_null_class(model)}[variant]
    x, ts, y = inputs(t)
    y = y.clamp(max=999)
    fc = DitForecast(t, "modules")
    assert len(fc.embs) == (1 if variant == "shared" else 2)
    with torch.no_grad():
        sample, features = DitFull(t, "modules")(x, ts.float(), y)
        zeros = torch.zeros_like(features)
        got = fc(x, ts.float(), y, torch.tensor([1.0, 0.0]), features, zeros + 7.0)
    assert rel(got, sample) <= 1e-6, rel(got, sample)


def test_forecast_holds_no_attention_or_mlp(model):
    fc = DitForecast(model, "modules")
    names = [n for n, _ in fc.named_parameters()]
    assert not [n for n in names if "attn" in n or ".ff." in n or "transformer_blocks" in n], names
    assert sum(p.numel() for p in fc.gates.parameters()) == 2 * 2 * (16 * 16 + 16)  # gate rows only
    shared = DitForecast(shared_embedders(model), "modules")
    assert sum(p.numel() for p in shared.embs.parameters()) * 2 == sum(p.numel() for p in fc.embs.parameters())


@pytest.mark.parametrize("k", [1.0, 2.5])
def test_forecast_is_the_gated_residual(model, k):
    x, ts, y = inputs(model)
    g = torch.Generator().manual_seed(3)
    factors = [torch.randn(4, 3, 16, 16, generator=g) for _ in range(2)]
    coefficients = torch.tensor([1.0, k])
    with torch.no_grad():
        got = DitForecast(model, "modules")(x, ts.float(), y, coefficients, *factors)
        want = hand_forecast(model, x, ts, y, factors, coefficients)
    assert rel(got, want) <= 1e-6, rel(got, want)


def test_forecast_casts_the_taylor_sum_to_the_model_dtype(model):
    x, ts, y = inputs(model)
    g = torch.Generator().manual_seed(4)
    factors = [torch.randn(4, 3, 16, 16, generator=g).double() for _ in range(2)]
    coefficients = torch.tensor([1.0, 2.0])
    with torch.no_grad():
        got = DitForecast(model, "modules")(x, ts.float(), y, coefficients, *factors)
        want = DitForecast(model, "modules")(x, ts.float(), y, coefficients, *[f.float() for f in factors])
    assert got.dtype == torch.float32 and rel(got, want) <= 1e-6


def test_lite_returns_the_taylor_sum(model):
    fc = DitForecast(model, "lite")
    assert list(fc.parameters()) == []
    g = torch.Generator().manual_seed(5)
    f0, f1 = torch.randn(1, 3, 8, 8, 8, generator=g), torch.randn(1, 3, 8, 8, 8, generator=g)
    assert torch.equal(fc(torch.tensor([1.0, 0.0]), f0, f1), f0[0])
    assert torch.allclose(fc(torch.tensor([1.0, 3.0]), f0, f1), f0[0] + 3 * f1[0])
    assert fc(torch.tensor([1.0, 0.0]), f0.half(), f1.half()).dtype == torch.float32


# -- ONNX export --------------------------------------------------------------------------------

@pytest.mark.parametrize("granularity", ["modules", "lite"])
def test_export_through_export_graph(model, granularity, tmp_path):
    import onnx

    b = torch.export.Dim("B_model", min=1, max=256)
    x, ts, y = inputs(model, batch=2)
    step = [GraphIO("hidden_states", x, {0: b}), GraphIO("timestep", ts.float(), {0: b}),
            GraphIO("class_labels", y, {0: b})]
    outputs = ["sample"] + (["features"] if granularity == "modules" else [])
    full = export_graph(DitFull(model, granularity), step, outputs, [{0: "B_model"}, {1: "B_model"}],
                        tmp_path, "full", torch_program=False)
    assert full["inputs"][0]["shape"] == ["B_model", 4, 8, 8]
    assert full["outputs"][0]["shape"] == ["B_model", 8, 8, 8]
    if granularity == "modules":
        assert full["outputs"][1]["shape"] == [4, "B_model", 16, 16]

    shape = DitShape.of(model)
    streams, dim = len(shape.stream_names(granularity)), shape.feature_dim(granularity)
    g = torch.Generator().manual_seed(6)
    per = (streams, 2, shape.tokens, dim) if granularity == "modules" else (1, 2, 8, 8, 8)
    factors = [GraphIO(f"factor_{i}", torch.randn(*per, generator=g) / (i + 1), {1: b}) for i in range(3)]
    coefficients = GraphIO("coefficients", torch.tensor([1.0, 3.0, 4.5]))
    fc = export_graph(DitForecast(model, granularity), [*(step if granularity == "modules" else []), coefficients,
                                                        *factors], ["sample"], [{0: "B_model"}], tmp_path,
                      "forecast", torch_program=False)
    assert fc["outputs"][0]["shape"] == ["B_model", 8, 8, 8]
    # the batch is symbolic in the graphs themselves: run them at another batch size
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "full.onnx"), providers=["CPUExecutionProvider"])
    x5, ts5, y5 = inputs(model, batch=5)
    got = sess.run(["sample"], {"hidden_states": x5.numpy(), "timestep": ts5.float().numpy(),
                                "class_labels": y5.numpy()})[0]
    with torch.no_grad():
        want = model(x5, timestep=ts5, class_labels=y5).sample.numpy()
    assert np.max(np.abs(got - want)) / np.max(np.abs(want)) <= 1e-4
    factor_0 = next(i for i in onnx.load(str(tmp_path / "forecast.onnx")).graph.input if i.name == "factor_0")
    assert factor_0.type.tensor_type.shape.dim[1].dim_param  # symbolic
