"""DiT as the two transformer graphs of an engine directory, written as thin torch modules over
diffusers' own DiTTransformer2DModel submodules.

diffusers' DiT: the patch embedder (`pos_embed`, a PatchEmbed: a strided convolution plus a fixed
sin-cos table), then N BasicTransformerBlocks with adaLN-Zero. Every block's `norm1` is an
AdaLayerNormZero holding its own conditioning embedder `emb` (timestep + class label) and a linear
whose six chunks are shift/scale/gate of the attention and of the MLP:

    norm_h, gate_msa, shift_mlp, scale_mlp, gate_mlp = norm1(h, t, y)
    attn = attn1(norm_h);                              h = gate_msa * attn + h
    ff = ff(norm3(h) * (1 + scale_mlp) + shift_mlp);   h = gate_mlp * ff + h

and the output layer: shift/scale from `proj_out_1` on the conditioning of block 0's embedder,
`norm_out`, `proj_out_2`, unpatchify.

`DitFull` is that forward step for step and, for the per-module cache, returns the features
TaylorSeer caches: every block's attention and MLP outputs before their gates ("attn", "mlp"
streams, in block order). `DitForecast` recomputes only what depends on the step -- the patch
embedding, the conditioning, the gates, the residual chain and the output layer -- and adds each
gate times the Taylor forecast of its stream. Only the gate rows (chunks 2 and 5) of the blocks'
norm1 linears are kept, fused into one matrix per conditioning embedder; blocks whose embedders
hold identical weights (as converted DiT checkpoints do: one embedder copied into every block)
share one embedder and one fused gate matrix.

With the output-only ("lite") cache the feature is the prediction itself and the forecast graph
is the Taylor sum alone.

The graphs take the timestep as float32 (diffusers' embedder converts the integer timestep to
float32 first, so the values are the same) and the class labels as int64; the spatial size is the
model's sample_size (PatchEmbed's sin-cos table is built for it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..runtime.taylor import forecast
from .common import GRANULARITIES


@dataclass(frozen=True)
class DitShape:
    """The config facts every graph and the runtime agree on."""

    n_blocks: int
    dim: int
    head_dim: int
    in_channels: int
    out_channels: int
    patch_size: int
    sample_size: int
    num_classes: int
    has_null_class: bool
    """The label table has the extra unconditional row `num_classes` (classifier-free guidance)."""

    @classmethod
    def of(cls, transformer: nn.Module) -> DitShape:
        problem = _unsupported(transformer)
        if problem:
            raise ValueError(f"this DiT transformer is not supported: {problem}")
        c = transformer.config
        d = c.num_attention_heads * c.attention_head_dim
        tables = [b.norm1.emb.class_embedder for b in transformer.transformer_blocks]
        null = {t.embedding_table.num_embeddings == t.num_classes + 1 for t in tables}
        return cls(
            n_blocks=len(transformer.transformer_blocks),
            dim=d,
            head_dim=c.attention_head_dim,
            in_channels=c.in_channels,
            out_channels=c.out_channels or c.in_channels,
            patch_size=c.patch_size,
            sample_size=c.sample_size,
            num_classes=c.num_embeds_ada_norm,
            has_null_class=null.pop(),
        )

    @property
    def tokens(self) -> int:
        """Patch tokens of one sample_size x sample_size latent."""
        return (self.sample_size // self.patch_size) ** 2

    def stream_names(self, granularity: str) -> list[str]:
        if granularity == "lite":
            return ["output"]
        names = []
        for i in range(self.n_blocks):
            names += [f"block.{i}.attn", f"block.{i}.mlp"]
        return names

    def feature_dim(self, granularity: str) -> int:
        return self.out_channels if granularity == "lite" else self.dim


def _unsupported(t: nn.Module) -> str | None:
    """What in `t` the graphs would not reproduce, or None."""
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.embeddings import CombinedTimestepLabelEmbeddings, PatchEmbed
    from diffusers.models.normalization import AdaLayerNormZero

    c = getattr(t, "config", None)
    if c is None or not hasattr(t, "transformer_blocks") or not hasattr(t, "proj_out_2"):
        return f"{type(t).__name__} is not a diffusers DiTTransformer2DModel"
    if getattr(c, "norm_type", None) != "ada_norm_zero":
        return f"norm_type {getattr(c, 'norm_type', None)!r} (only 'ada_norm_zero' is supported)"
    if not c.num_embeds_ada_norm:
        return "num_embeds_ada_norm is not set (the class-conditional embedder is required)"
    if c.sample_size % c.patch_size:
        return f"sample_size {c.sample_size} is not a multiple of patch_size {c.patch_size}"
    pe = t.pos_embed
    if not isinstance(pe, PatchEmbed) or pe.pos_embed is None or pe.pos_embed_max_size or pe.layer_norm \
            or not pe.flatten:
        return "the patch embedder is not a plain PatchEmbed with a fixed sin-cos table"
    if len(t.transformer_blocks) == 0:
        return "it has no transformer blocks"
    null = set()
    for i, b in enumerate(t.transformer_blocks):
        if not isinstance(b, BasicTransformerBlock) or b.norm_type != "ada_norm_zero":
            return f"block {i} is not an adaLN-Zero BasicTransformerBlock"
        if b.attn2 is not None or b.only_cross_attention or b.cross_attention_dim is not None:
            return f"block {i} has cross-attention"
        if b.pos_embed is not None:
            return f"block {i} adds positional embeddings of its own"
        if not isinstance(b.norm1, AdaLayerNormZero) or not isinstance(b.norm1.emb, CombinedTimestepLabelEmbeddings):
            return f"block {i}'s norm1 is not an AdaLayerNormZero with a timestep + class label embedder"
        if not isinstance(b.norm1.norm, nn.LayerNorm):
            return f"block {i}'s norm1 does not normalise with a LayerNorm"
        table = b.norm1.emb.class_embedder
        if table.num_classes != c.num_embeds_ada_norm:
            return f"block {i}'s label table has {table.num_classes} classes, the config {c.num_embeds_ada_norm}"
        null.add(table.embedding_table.num_embeddings == table.num_classes + 1)
    if len(null) > 1:
        return "some blocks' label tables have the unconditional row and some do not"
    return None


def _embed(pos_embed: nn.Module, shape: DitShape, hidden_states: torch.Tensor) -> torch.Tensor:
    """PatchEmbed at the model's own size (any other size would rebuild the sin-cos table in
    float64 inside the graph)."""
    size = shape.sample_size
    if tuple(hidden_states.shape[-2:]) != (size, size):
        raise ValueError(f"DiT graphs take {size}x{size} latents (the model's sample_size), "
                         f"not {hidden_states.shape[-2]}x{hidden_states.shape[-1]}")
    return pos_embed(hidden_states)


def _output(m: nn.Module, shape: DitShape, h: torch.Tensor, conditioning: torch.Tensor) -> torch.Tensor:
    """The final adaLN, projection and unpatchify of `m`'s norm_out / proj_out_1 / proj_out_2:
    tokens [B, N, dim] -> [B, C_out, H, W]."""
    shift, scale = m.proj_out_1(nn.functional.silu(conditioning)).chunk(2, dim=1)
    h = m.norm_out(h) * (1 + scale[:, None]) + shift[:, None]
    h = m.proj_out_2(h)
    p, c = shape.patch_size, shape.out_channels
    side = shape.sample_size // p
    h = h.reshape(-1, side, side, p, p, c).permute(0, 5, 1, 3, 2, 4)  # n h w p q c -> n c h p w q
    return h.reshape(-1, c, side * p, side * p)


class DitFull(nn.Module):
    """hidden_states [B, C, H, W], timestep [B] float32, class_labels [B] int64 -> sample
    [B, C_out, H, W][, features [2 * n_blocks, B, N, dim]]."""

    def __init__(self, transformer: nn.Module, granularity: str):
        super().__init__()
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, not {granularity!r}")
        self.shape = DitShape.of(transformer)
        self.t = transformer.eval()  # an inference graph: no label dropout
        self.granularity = granularity

    def forward(self, hidden_states, timestep, class_labels):
        t = self.t
        h = _embed(t.pos_embed, self.shape, hidden_states)
        features = []
        for b in t.transformer_blocks:
            n, gate_msa, shift_mlp, scale_mlp, gate_mlp = b.norm1(h, timestep, class_labels, hidden_dtype=h.dtype)
            attn = b.attn1(n)
            h = gate_msa.unsqueeze(1) * attn + h
            ff = b.ff(b.norm3(h) * (1 + scale_mlp[:, None]) + shift_mlp[:, None])
            h = gate_mlp.unsqueeze(1) * ff + h
            features += [attn, ff]
        conditioning = t.transformer_blocks[0].norm1.emb(timestep, class_labels, hidden_dtype=h.dtype)
        sample = _output(t, self.shape, h, conditioning)
        if self.granularity == "lite":
            return sample
        return sample, torch.stack(features, dim=0)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


class DitForecast(nn.Module):
    """modules: hidden_states, timestep, class_labels, coefficients, factor_0..K -> sample.
    lite: coefficients, factor_0..K -> sample.  (factors: [streams, B, N, dim], lite [1, B, C_out, H, W])"""

    def __init__(self, transformer: nn.Module, granularity: str):
        super().__init__()
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, not {granularity!r}")
        shape = DitShape.of(transformer)
        self.granularity = granularity
        # the factors may be kept in another dtype than the model's: the Taylor sum is cast to it
        self.dtype = next(transformer.parameters()).dtype
        if granularity == "lite":
            return
        t = transformer.eval()  # an inference graph: no label dropout
        self.shape = shape
        # the per-token outer layers only: the graph holds no attention or MLP weights
        self.pos_embed, self.norm_out, self.proj_out_1, self.proj_out_2 = (
            t.pos_embed, t.norm_out, t.proj_out_1, t.proj_out_2)
        d = shape.dim
        # blocks grouped by their conditioning embedder (identical weights: one group)
        embs: list[nn.Module] = []
        streams: list[list[int]] = []
        rows: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
        for i, b in enumerate(t.transformer_blocks):
            emb, lin = b.norm1.emb, b.norm1.linear
            g = next((k for k, e in enumerate(embs) if e is emb or _same_weights(e, emb)), None)
            if g is None:
                g = len(embs)
                embs.append(emb)
                streams.append([])
                rows.append(([], []))
            # AdaLayerNormZero chunks: shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp
            for k, s in ((2, 2 * i), (5, 2 * i + 1)):
                rows[g][0].append(lin.weight[k * d : (k + 1) * d])
                bias = lin.bias if lin.bias is not None else torch.zeros(6 * d, dtype=lin.weight.dtype)
                rows[g][1].append(bias[k * d : (k + 1) * d])
                streams[g].append(s)
        self.embs = nn.ModuleList(embs)
        self.gates = nn.ModuleList()
        for w, bias in rows:
            lin = nn.Linear(d, len(w) * d, dtype=self.dtype, device="meta")
            lin.weight = nn.Parameter(torch.cat(w).detach(), requires_grad=False)
            lin.bias = nn.Parameter(torch.cat(bias).detach(), requires_grad=False)
            self.gates.append(lin)
        del rows
        self.group_streams = streams
        self.output_group = next(g for g, s in enumerate(streams) if 0 in s)  # block 0's embedder
        self.streams = 2 * shape.n_blocks
        self.dim = d

    def forward(self, *args):
        if self.granularity == "lite":
            coefficients, *factors = args
            return forecast([f[0] for f in factors], coefficients).to(self.dtype)
        hidden_states, timestep, class_labels, coefficients, *factors = args
        h = _embed(self.pos_embed, self.shape, hidden_states)
        gates: list = [None] * self.streams
        conditioning = None
        for g, (emb, lin) in enumerate(zip(self.embs, self.gates)):
            c = emb(timestep, class_labels, hidden_dtype=h.dtype)
            if g == self.output_group:
                conditioning = c
            rows = lin(nn.functional.silu(c)).unflatten(1, (len(self.group_streams[g]), self.dim))
            for j, s in enumerate(self.group_streams[g]):
                gates[s] = rows[:, j]
        for s in range(self.streams):
            h = gates[s].unsqueeze(1) * forecast([f[s] for f in factors], coefficients).to(h.dtype) + h
        return _output(self, self.shape, h, conditioning)

