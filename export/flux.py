"""FLUX as the graphs of an engine directory: the two transformer paths, the text encoders and
the VAE decoder, written as thin torch modules over diffusers' own submodules.

`FluxFull` is diffusers' FluxTransformer2DModel.forward step for step, with the rotary tables
taken as inputs (so no float64 enters the graph) and, for the per-module cache, the features
TaylorSeer caches as a second output: in every double-stream block the image-token attention and
MLP outputs, in every single-stream block the image rows of `proj_out`, all before their gates.
The text-token streams are not cached: at a forecast step no attention runs, so they never reach
the prediction.

`FluxForecast` recomputes only what depends on the current step -- the image embedder, the
timestep/guidance/pooled-text conditioning, the gates, the residual chain and the output layer --
and replaces every attention and MLP output by its Taylor forecast. Only the gate rows of the
modulation linears are kept, fused into one matrix.

With the output-only ("lite") cache the feature is the prediction itself and the forecast graph
is the Taylor sum alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from ..runtime.taylor import forecast

# Linear layers FP8 keeps in the graph's precision (module names of diffusers' FluxTransformer2DModel):
# the embedders, every modulation linear (the timestep path), norm_out and the final proj_out.
FP8_KEPT = re.compile(r"^(x_embedder|context_embedder|time_text_embed\..*|norm_out\..*|proj_out"
                      r"|(transformer_blocks|single_transformer_blocks)\.\d+\.norm1?(_context)?\.linear)$")


@dataclass(frozen=True)
class FluxShape:
    """The config facts every graph and the runtime agree on."""

    n_double: int
    n_single: int
    dim: int
    head_dim: int
    in_channels: int
    out_channels: int
    joint_attention_dim: int
    pooled_dim: int
    guidance: bool
    axes_dims_rope: tuple[int, ...]
    rope_theta: int

    @classmethod
    def of(cls, transformer: nn.Module) -> FluxShape:
        c = transformer.config
        if c.patch_size != 1:
            raise ValueError(f"FLUX transformers with patch_size {c.patch_size} are not supported (expected 1)")
        return cls(
            n_double=len(transformer.transformer_blocks),
            n_single=len(transformer.single_transformer_blocks),
            dim=c.num_attention_heads * c.attention_head_dim,
            head_dim=c.attention_head_dim,
            in_channels=c.in_channels,
            out_channels=c.out_channels or c.in_channels,
            joint_attention_dim=c.joint_attention_dim,
            pooled_dim=c.pooled_projection_dim,
            guidance=bool(c.guidance_embeds),
            axes_dims_rope=tuple(c.axes_dims_rope),
            rope_theta=int(transformer.pos_embed.theta),
        )

    def stream_names(self, granularity: str) -> list[str]:
        if granularity == "lite":
            return ["output"]
        names = []
        for i in range(self.n_double):
            names += [f"double.{i}.img_attn", f"double.{i}.img_mlp"]
        names += [f"single.{i}.total" for i in range(self.n_single)]
        return names

    def feature_dim(self, granularity: str) -> int:
        return self.out_channels if granularity == "lite" else self.dim


def _conditioning(transformer: nn.Module, timestep, guidance, pooled):
    # As in diffusers: the graphs take timestep and guidance in [0, 1] and scale them by 1000.
    timestep = timestep.to(pooled.dtype) * 1000
    if guidance is None:
        return transformer.time_text_embed(timestep, pooled)
    return transformer.time_text_embed(timestep, guidance.to(pooled.dtype) * 1000, pooled)


class FluxFull(nn.Module):
    """hidden_states, encoder_hidden_states, pooled_projections, timestep, [guidance], rope_cos,
    rope_sin -> sample[, features]  (features: [streams, B, N_img, dim])."""

    def __init__(self, transformer: nn.Module, granularity: str):
        super().__init__()
        self.t = transformer
        self.granularity = granularity
        self.guidance = FluxShape.of(transformer).guidance

    def forward(self, hidden_states, encoder_hidden_states, pooled_projections, timestep, *rest):
        guidance, rope_cos, rope_sin = rest if self.guidance else (None, *rest)
        t = self.t
        temb = _conditioning(t, timestep, guidance, pooled_projections)
        img = t.x_embedder(hidden_states)
        txt = t.context_embedder(encoder_hidden_states)
        rope = (rope_cos, rope_sin)
        features = []
        for b in t.transformer_blocks:
            n_img, gate_msa, shift_mlp, scale_mlp, gate_mlp = b.norm1(img, emb=temb)
            n_txt, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = b.norm1_context(txt, emb=temb)
            attn_img, attn_txt = b.attn(hidden_states=n_img, encoder_hidden_states=n_txt, image_rotary_emb=rope)
            img = img + gate_msa.unsqueeze(1) * attn_img
            mlp_img = b.ff(b.norm2(img) * (1 + scale_mlp[:, None]) + shift_mlp[:, None])
            img = img + gate_mlp.unsqueeze(1) * mlp_img
            txt = txt + c_gate_msa.unsqueeze(1) * attn_txt
            mlp_txt = b.ff_context(b.norm2_context(txt) * (1 + c_scale_mlp[:, None]) + c_shift_mlp[:, None])
            txt = txt + c_gate_mlp.unsqueeze(1) * mlp_txt
            features += [attn_img, mlp_img]
        text_len = txt.shape[1]
        x = torch.cat([txt, img], dim=1)
        for b in t.single_transformer_blocks:
            n_x, gate = b.norm(x, emb=temb)
            mlp = b.act_mlp(b.proj_mlp(n_x))
            attn = b.attn(hidden_states=n_x, image_rotary_emb=rope)
            total = b.proj_out(torch.cat([attn, mlp], dim=2))
            x = x + gate.unsqueeze(1) * total
            features.append(total[:, text_len:])
        img = x[:, text_len:]
        sample = t.proj_out(t.norm_out(img, temb))
        if self.granularity == "lite":
            return sample
        return sample, torch.stack(features, dim=0)


class FluxForecast(nn.Module):
    """modules: hidden_states, pooled_projections, timestep, [guidance], coefficients, factor_0..O
    -> sample.   lite: coefficients, factor_0..O -> sample."""

    def __init__(self, transformer: nn.Module, granularity: str):
        super().__init__()
        shape = FluxShape.of(transformer)
        self.granularity = granularity
        self.guidance = shape.guidance
        # the factors may be kept in another dtype than the model's: the Taylor sum is cast to it
        self.dtype = next(transformer.parameters()).dtype
        if granularity == "lite":
            return
        t = transformer
        self.x_embedder, self.time_text_embed = t.x_embedder, t.time_text_embed
        self.norm_out, self.proj_out = t.norm_out, t.proj_out
        d = shape.dim
        rows_w, rows_b = [], []
        # AdaLayerNormZero chunks: shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp;
        # AdaLayerNormZeroSingle: shift, scale, gate. Keep the gate rows, in stream order.
        for b in t.transformer_blocks:
            w, bias = b.norm1.linear.weight, b.norm1.linear.bias
            for k in (2, 5):
                rows_w.append(w[k * d : (k + 1) * d])
                rows_b.append(bias[k * d : (k + 1) * d])
        for b in t.single_transformer_blocks:
            w, bias = b.norm.linear.weight, b.norm.linear.bias
            rows_w.append(w[2 * d : 3 * d])
            rows_b.append(bias[2 * d : 3 * d])
        self.gates = nn.Linear(d, len(rows_w) * d, dtype=self.dtype, device="meta")
        self.gates.weight = nn.Parameter(torch.cat(rows_w).detach(), requires_grad=False)
        self.gates.bias = nn.Parameter(torch.cat(rows_b).detach(), requires_grad=False)
        del rows_w, rows_b
        self.streams = len(self.gates.weight) // d
        self.dim = d

    def forward(self, *args):
        if self.granularity == "lite":
            coefficients, *factors = args
            return forecast([f[0] for f in factors], coefficients).to(self.dtype)
        if self.guidance:
            hidden_states, pooled, timestep, guidance, coefficients, *factors = args
        else:
            (hidden_states, pooled, timestep, coefficients, *factors), guidance = args, None
        temb = _conditioning(self, timestep, guidance, pooled)
        gates = self.gates(nn.functional.silu(temb)).unflatten(1, (self.streams, self.dim))
        img = self.x_embedder(hidden_states)
        for s in range(self.streams):
            img = img + gates[:, s].unsqueeze(1) * forecast([f[s] for f in factors], coefficients).to(img.dtype)
        return self.proj_out(self.norm_out(img, temb))


class ClipPooled(nn.Module):
    """input_ids -> pooled CLIP embedding (what FLUX takes as pooled_projections)."""

    def __init__(self, text_encoder: nn.Module):
        super().__init__()
        self.m = text_encoder

    def forward(self, input_ids):
        return self.m(input_ids, output_hidden_states=False).pooler_output


class T5Hidden(nn.Module):
    """input_ids -> T5 last hidden state (FLUX's encoder_hidden_states), in the transformer's dtype
    (T5 itself may run wider: it overflows in float16)."""

    def __init__(self, text_encoder: nn.Module, out_dtype: torch.dtype | None = None):
        super().__init__()
        self.m = text_encoder
        self.out_dtype = out_dtype

    def forward(self, input_ids):
        hidden = self.m(input_ids, output_hidden_states=False)[0]
        return hidden if self.out_dtype is None else hidden.to(self.out_dtype)


class VaeDecode(nn.Module):
    """Unpacked latents [B, C, h, w] -> image in [-1, 1]; the latent scaling is inside the graph."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae
        self.scaling = float(vae.config.scaling_factor)
        self.shift = float(vae.config.shift_factor or 0.0)

    def forward(self, latents):
        return self.vae.decode(latents / self.scaling + self.shift, return_dict=False)[0]
