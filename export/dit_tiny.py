"""dit-tiny: a small class-conditional DiT trained here, on the shapes world.

    python -m seer.export.dit_tiny --out DIR      # about 11 minutes on one CPU thread, fixed seeds

Every component is the real diffusers class, saved as a diffusers DiT pipeline laid out as
facebook/DiT-XL-2-256 (`DiTPipeline.from_pretrained` loads it):

- classes: the 90 colour / shape / place combinations of the shapes world with the size left open
  (`shapes.CLASSES`, ids 0..89; the labels "red circle at the top left" are the pipeline's
  `id2label`, so `pipe.get_label_ids(["red circle at the top left"])` works);
- the VAE: flux-tiny's trained AutoencoderKL (16 latent channels, 8x down-sampling), reused as DiT-XL/2
  reuses Stable Diffusion's, with DiT's latent normalisation: no shift (DiTPipeline decodes
  `latents / scaling_factor`), and the scaling factor that gives the training latents unit std;
- a DiTTransformer2DModel (adaLN-Zero, learned-sigma output layout: 2 x 16 channels, patch 2 over the
  8 x 8 latents), initialised as DiT initialises (adaLN modulations and output layer zero, every block
  starting as the identity) and trained by DDPM epsilon prediction with DiT's linear betas
  (0.0001..0.02, 1000 steps), the MSE weighted towards high noise where the class is decided (see
  train_transformer: unweighted, the same run follows 72% of the classes instead of 100%), 10% of
  the labels replaced by the null class 1000 for classifier-free guidance, weights averaged (EMA).
  The timestep and class embedders are one module shared by every block while training (DiT has one
  of each; diffusers' layout keeps a copy per block, so the saved blocks hold equal copies);
- DDIMScheduler with DiT's betas, epsilon prediction and no sample clipping (latents are not
  bounded by 1).

The variance half of the output (channels 16..31, DiT's learned-range interpolation between beta_t
and the posterior variance) is not trained: DDIM does not read it. Its output layer starts at zero
and gets no gradient, so it stays exactly zero, the middle of that range, for every input.

The committed weights (export/assets/dit-tiny) are this script's output with its defaults.
"""

from __future__ import annotations

import collections
import copy
import json
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..evaluate import shapes
from .tiny import _images, _lr, _parse, _score, _staged, _train_step

ASSET_DIR = Path(__file__).parent / "assets" / "dit-tiny"  # the committed weights (package data)
NULL_CLASS = 1000  # DiTPipeline's unconditional class id (hard-coded there), DiT's num_classes
LATENT_CHANNELS = 16  # flux-tiny's VAE


@dataclass
class TrainConfig:
    seed: int = 0
    # One thread: the same arithmetic whatever the machine, and no collapse when other processes share
    # the cores (two torch threads on two busy cores measured 0.5 s a step, one thread 0.07 s).
    threads: int = 1
    layers: int = 4
    heads: int = 4
    head_dim: int = 24
    patch_size: int = 2
    images_per_class: int = 64  # jittered renders per class, encoded once
    steps: int = 10000
    batch: int = 64
    lr: float = 1e-3
    warmup: int = 200
    ema: float = 0.998
    class_dropout: float = 0.1  # share of labels replaced by the null class (classifier-free guidance)
    # The epsilon MSE weighted by min((SNR + 1) / SNR, cap): the MSE of the velocity that the predicted
    # noise implies, capped (0: unweighted, DiT's own loss). See train_transformer.
    v_weight_cap: float = 50.0
    eval_classes: int = 36
    eval_steps: int = 50
    eval_guidance: float = 4.0

    @classmethod
    def quick(cls) -> "TrainConfig":
        """A few steps of everything: proves the script end to end in seconds (tests)."""
        return cls(images_per_class=1, steps=3, batch=8, warmup=1, eval_classes=2, eval_steps=2)


def build_untrained(cfg: TrainConfig):
    """The pipeline with the transformer at its seeded DiT initialisation and flux-tiny's VAE."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel
    from safetensors.torch import load_file

    from .source import embedded_dir

    torch.manual_seed(cfg.seed)
    transformer = DiTTransformer2DModel(
        num_attention_heads=cfg.heads, attention_head_dim=cfg.head_dim, in_channels=LATENT_CHANNELS,
        out_channels=2 * LATENT_CHANNELS, num_layers=cfg.layers, sample_size=shapes.SIZE // 8,
        patch_size=cfg.patch_size, norm_type="ada_norm_zero", num_embeds_ada_norm=NULL_CLASS)
    _dit_init(transformer)
    table = transformer.transformer_blocks[0].norm1.emb.class_embedder.embedding_table
    # LabelEmbedding adds the null row only when its dropout probability is above zero
    assert table.num_embeddings == NULL_CLASS + 1, table
    # Built from flux-tiny's config and weights rather than from_pretrained, which would record the
    # directory it was loaded from (a path on this machine) in the saved config.
    source = embedded_dir() / "vae"
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(source))
    vae.load_state_dict(load_file(source / "diffusion_pytorch_model.safetensors"))
    vae.eval().requires_grad_(False)
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                              clip_sample=False, set_alpha_to_one=True, steps_offset=0, prediction_type="epsilon")
    pipe = DiTPipeline(transformer=transformer, vae=vae, scheduler=scheduler, id2label=shapes.CLASS_LABELS)
    pipe.register_to_config(id2label=shapes.CLASS_LABELS)  # model_index.json keeps it only when registered
    return pipe


def _dit_init(transformer) -> None:
    """DiT's initialisation: Xavier-uniform linear layers (the patch embedding's convolution as one),
    N(0, 0.02) class table and timestep MLP, zero adaLN modulations and output layer; and one
    timestep + class embedder shared by every block."""
    from torch import nn

    for module in transformer.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    proj = transformer.pos_embed.proj
    nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
    nn.init.zeros_(proj.bias)
    blocks = transformer.transformer_blocks
    emb = blocks[0].norm1.emb
    nn.init.normal_(emb.class_embedder.embedding_table.weight, std=0.02)
    nn.init.normal_(emb.timestep_embedder.linear_1.weight, std=0.02)
    nn.init.normal_(emb.timestep_embedder.linear_2.weight, std=0.02)
    for block in blocks:
        block.norm1.emb = emb
        nn.init.zeros_(block.norm1.linear.weight)
        nn.init.zeros_(block.norm1.linear.bias)
    for layer in (transformer.proj_out_1, transformer.proj_out_2):
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)


def _untie(transformer) -> None:
    """One embedder per block again, as diffusers' layout (and DiT-XL/2's converted weights) keep
    them: equal copies, so that the model saves as separate tensors."""
    blocks = transformer.transformer_blocks
    for block in blocks[1:]:
        block.norm1.emb = copy.deepcopy(blocks[0].norm1.emb)


def encode_dataset(vae, cfg: TrainConfig):
    """(latents [N, C, h, w], class id [N]) for `images_per_class` jittered renders of every class
    (either size); also sets the VAE's scaling factor so that the training latents have unit std,
    with no shift (DiT's normalisation)."""
    import torch

    rng = random.Random(cfg.seed + 20)
    ids = [i for i in range(len(shapes.CLASSES)) for _ in range(cfg.images_per_class)]
    chunks = []
    with torch.no_grad():
        for i in range(0, len(ids), 256):
            chunks.append(vae.encode(_images([shapes.CLASSES[k] for k in ids[i:i + 256]], rng)).latent_dist.mean)
    latents = torch.cat(chunks)
    vae.register_to_config(shift_factor=None, scaling_factor=round(float(1.0 / latents.std()), 4))
    return latents * vae.config.scaling_factor, torch.tensor(ids)


def train_transformer(pipe, latents, labels, cfg: TrainConfig, log) -> dict:
    """DDPM epsilon prediction (MSE on the first 16 output channels), uniform timesteps, labels
    dropped to the null class with probability `class_dropout`.

    The MSE is weighted per timestep by min((SNR + 1) / SNR, v_weight_cap). Unweighted, the loss is
    all but blind where the class is decided: at high noise the noise is nearly the input itself, so
    an error e in the predicted noise costs |e|^2 while it moves the implied image by |e| / sqrt(SNR)
    (SNR 0.03 at t = 600). The weight (SNR + 1) / SNR = 1 / alpha_bar makes the loss that of the
    implied velocity (v-prediction's), capped where the image is no longer recoverable from x_t
    (cap 50: t from 620 on)."""
    import torch

    transformer, scheduler = pipe.transformer, pipe.scheduler
    c = transformer.config.in_channels
    gen = torch.Generator().manual_seed(cfg.seed + 30)
    torch.manual_seed(cfg.seed + 30)
    # Eval mode while training: the model has no dropout, and in train mode every block's LabelEmbedding
    # would drop labels again on its own, independently and from the global RNG. Labels are dropped
    # here instead, once per sample, from the seeded generator.
    transformer.eval().requires_grad_(True)
    ema = copy.deepcopy(transformer).requires_grad_(False)
    opt = torch.optim.AdamW(transformer.parameters(), lr=cfg.lr, weight_decay=0.0)
    n = latents.shape[0]
    snr = scheduler.alphas_cumprod / (1 - scheduler.alphas_cumprod)
    weight = torch.clamp((snr + 1) / snr, max=cfg.v_weight_cap)
    started, recent = time.perf_counter(), collections.deque(maxlen=100)
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg.steps, cfg.lr, cfg.warmup)
        pick = torch.randint(0, n, (cfg.batch,), generator=gen)
        x0, y = latents[pick], labels[pick]
        y = torch.where(torch.rand(cfg.batch, generator=gen) < cfg.class_dropout, NULL_CLASS, y)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (cfg.batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        xt = scheduler.add_noise(x0, noise, t)
        pred = transformer(xt, timestep=t, class_labels=y, return_dict=False)[0]
        loss = ((pred[:, :c] - noise) ** 2).mean(dim=(1, 2, 3))
        if cfg.v_weight_cap > 0:
            loss = loss * weight[t]
        loss = loss.mean()
        _train_step(loss, opt, transformer, ema, step, cfg, recent, started, log)
    ema.requires_grad_(False)
    _untie(ema)
    pipe.register_modules(transformer=ema)
    params = sum(p.numel() for p in transformer.parameters())  # the tied model: what was trained
    return {"loss": sum(recent) / len(recent), "seconds": time.perf_counter() - started, "parameters": params}


def judge_pipeline(pipe, count: int, steps: int, guidance: float, seed: int = 0) -> dict:
    """Class-following accuracy of diffusers' DiTPipeline itself (DDIM, classifier-free guidance) on
    the fixed evaluation classes, judged by the shapes judge (the size, left open, is always right)."""
    import torch

    ids = shapes.class_eval_ids(count)
    with torch.no_grad():
        images = pipe(ids, guidance_scale=guidance, num_inference_steps=steps,
                      generator=torch.Generator().manual_seed(seed), output_type="np").images
    return {**_score(images, [shapes.CLASSES[i] for i in ids]), "classes": len(ids), "steps": steps,
            "guidance": guidance}


def train_dit_tiny(out: str | Path, cfg: TrainConfig | None = None, log=print) -> Path:
    """Trains dit-tiny's transformer from scratch on flux-tiny's VAE and writes the pipeline to `out`
    (temp sibling, then rename)."""
    import torch

    cfg = cfg or TrainConfig()
    torch.set_num_threads(cfg.threads)
    out = Path(out)
    started = time.perf_counter()
    with _staged(out) as tmp:
        pipe = build_untrained(cfg)
        latents, labels = encode_dataset(pipe.vae, cfg)
        log(f"encoded {len(labels)} renders ({time.perf_counter() - started:.0f} s); "
            f"scaling factor {pipe.vae.config.scaling_factor}")
        report = {"config": asdict(cfg), "vae": {"scaling_factor": pipe.vae.config.scaling_factor}}
        report["transformer"] = train_transformer(pipe, latents, labels, cfg, log)
        report["eval"] = judge_pipeline(pipe, cfg.eval_classes, cfg.eval_steps, cfg.eval_guidance)
        report["seconds"] = time.perf_counter() - started
        log(f"class following (diffusers DiTPipeline, {report['eval']['classes']} classes, {cfg.eval_steps} "
            f"DDIM steps, guidance {cfg.eval_guidance}): {100 * report['eval']['accuracy']:.1f}%  "
            f"{report['eval']['attributes']}")
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {out} in {time.perf_counter() - started:.0f} s")
    return out


def main(argv=None) -> int:
    out, cfg = _parse(argv, TrainConfig, "python -m seer.export.dit_tiny", __doc__)
    train_dit_tiny(out, cfg, log=lambda m: print(m, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
