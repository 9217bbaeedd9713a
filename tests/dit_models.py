"""The tiny random DiT the DiT tests share: DiT-XL/2's layout (diffusers' own DiT test config), built
offline and saved as a diffusers DiTPipeline directory."""

from __future__ import annotations

import json

import torch

LABELS = {0: "tench, Tinca tinca", 1: "goldfish", 2: "crane", 3: "white shark", 4: "crane"}


def build_dit(directory):
    """A DiTPipeline of DiT-XL/2's layout (ada_norm_zero, learned sigma, 1000 classes + the null
    class, a DDIMScheduler as DiT-XL-2-256 ships), tiny and random, saved as a diffusers directory."""
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(
        sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=2, in_channels=4,
        out_channels=8, attention_bias=True, activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
        norm_type="ada_norm_zero", norm_elementwise_affine=False)
    # random adaLN-zero weights: large enough that every block changes the output
    with torch.no_grad():
        for p in transformer.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    torch.manual_seed(1)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=4, sample_size=16, scaling_factor=0.18215)
    scheduler = DDIMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear", num_train_timesteps=1000,
                              clip_sample=False, set_alpha_to_one=True)
    pipe = DiTPipeline(transformer=transformer, vae=vae, scheduler=scheduler, id2label=LABELS)
    pipe.save_pretrained(directory, safe_serialization=True)
    index = directory / "model_index.json"
    meta = json.loads(index.read_text())
    if "id2label" not in meta:  # older diffusers do not record it
        meta["id2label"] = {str(k): v for k, v in LABELS.items()}
        index.write_text(json.dumps(meta))
    return directory
