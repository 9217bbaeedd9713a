"""flux-tiny: a small FLUX-architecture text-to-image model trained here, on the shapes world.

    python -m seer.export.tiny --out DIR          # about 21 minutes on 2 idle CPU cores, fixed seeds

Every component is the real diffusers / transformers class, saved as a diffusers FLUX pipeline
(`FluxPipeline.from_pretrained` loads it, `seer-export` takes it like any FLUX pipeline):

- tokenizers built on the prompt vocabulary: CLIP's byte-level BPE (merges learned deterministically) and
  T5's unigram model (whole words, log-probabilities from their counts in the prompts; characters
  as fallback), with T5's special ids (<pad> 0, </s> 1, <unk> 2);
- CLIP and T5 text encoders with fixed random weights: frozen random features that keep every word
  and its position apart, which is all the transformer needs to learn from;
- an AutoencoderKL (16 latent channels, 8x down-sampling, as FLUX's) trained to reconstruct the
  shapes world, with FLUX's latent shift and scale measured on the training latents;
- a FluxTransformer2DModel trained by rectified flow matching (velocity = noise - data, logit-normal
  sigmas shifted as the FLUX scheduler shifts them at this resolution), weights averaged (EMA).

The committed weights (export/assets/flux-tiny) are this script's output with its defaults.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import json
import math
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..evaluate import shapes

MAX_SEQUENCE_LENGTH = 16  # T5 tokens; the longest shapes prompt has 10 words and </s>
_CLIP_SPECIALS = ["<|startoftext|>", "<|endoftext|>"]


@dataclass
class TrainConfig:
    seed: int = 0
    threads: int = 2
    vae_steps: int = 1200
    vae_batch: int = 16
    vae_lr: float = 1e-3
    images_per_prompt: int = 32  # jittered renders per prompt, encoded once for the transformer
    steps: int = 9000
    batch: int = 64
    lr: float = 1e-3
    warmup: int = 200
    ema: float = 0.998
    eval_prompts: int = 36
    eval_steps: int = 50

    @classmethod
    def quick(cls) -> "TrainConfig":
        """A few steps of everything: proves the script end to end in seconds (tests)."""
        return cls(vae_steps=2, vae_batch=4, images_per_prompt=1, steps=3, batch=8, warmup=1, eval_prompts=2,
                   eval_steps=2)


def _bpe_merges(words: list[str], suffix: str) -> list[tuple[str, str]]:
    """Byte-pair merges learned on `words` until every word is one token, most frequent pair first
    and ties broken by the pair itself.

    Learned here rather than with `tokenizers`' BpeTrainer: that trainer breaks ties between equally
    frequent pairs in hash-map order, so its merge ranks (and so the token ids every weight depends
    on) change from run to run, and the weights could not be reproduced."""
    counts = collections.Counter(words)
    pieces = {w: [*w[:-1], w[-1] + suffix] for w in counts}
    merges: list[tuple[str, str]] = []
    while True:
        pairs: collections.Counter = collections.Counter()
        for w, n in counts.items():
            for pair in zip(pieces[w], pieces[w][1:]):
                pairs[pair] += n
        if not pairs:
            return merges
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        for w, p in pieces.items():
            merged, i = [], 0
            while i < len(p):
                if i + 1 < len(p) and (p[i], p[i + 1]) == best:
                    merged.append(p[i] + p[i + 1])
                    i += 2
                else:
                    merged.append(p[i])
                    i += 1
            pieces[w] = merged


def _clip_tokenizer(directory: Path) -> None:
    """Byte-level BPE in CLIP's layout (`</w>` ends a word; every prompt word is one token; any other
    text still encodes, byte by byte)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import CLIPTokenizerFast

    suffix = "</w>"
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = _bpe_merges([w for p in shapes.PROMPTS for w in p.split()], suffix)
    tokens = [*_CLIP_SPECIALS, *alphabet, *(c + suffix for c in alphabet), *(a + b for a, b in merges)]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<|endoftext|>", end_of_word_suffix=suffix))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", bos), ("<|endoftext|>", eos)])
    fast = CLIPTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                             unk_token="<|endoftext|>", pad_token="<|endoftext|>", model_max_length=77)
    fast.save_pretrained(directory)


def _t5_tokenizer(directory: Path) -> None:
    """A unigram model over the prompt words (maximum-likelihood log-probabilities from word counts),
    single characters as a fallback, and T5's special tokens; `</s>` ends every sequence.

    Built from counts rather than with a unigram trainer: on a corpus of a few hundred sentences both
    `tokenizers`' and sentencepiece's trainers prune the words away and keep single characters."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    words = collections.Counter(f"\u2581{w}" for p in shapes.PROMPTS for w in p.split())
    chars = sorted({c for p in shapes.PROMPTS for c in p.replace(" ", "")} | {"\u2581"})
    total = sum(words.values()) + len(chars)
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(w, math.log(n / total)) for w, n in sorted(words.items())]
    vocab += [(c, math.log(1 / total) - 10.0) for c in chars if c not in words]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=0, model_max_length=MAX_SEQUENCE_LENGTH)
    fast.save_pretrained(directory)


def build_untrained(directory: Path, seed: int = 0, guidance_embeds: bool = False, latent_channels: int = 16):
    """The pipeline with tokenizers built and every network at its seeded initialisation
    (`guidance_embeds`: FLUX.1-dev's guidance-distilled layout; `latent_channels`: the VAE's, which
    the transformer packs 2x2; both for tests of other layouts)."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizerFast, T5Config, T5EncoderModel, T5TokenizerFast

    _clip_tokenizer(directory / "tokenizer")
    _t5_tokenizer(directory / "tokenizer_2")
    clip_tok = CLIPTokenizerFast.from_pretrained(directory / "tokenizer")
    t5_tok = T5TokenizerFast.from_pretrained(directory / "tokenizer_2")

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * latent_channels, num_layers=2, num_single_layers=4, attention_head_dim=16,
        num_attention_heads=4, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 6, 6))
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(16, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=8, sample_size=shapes.SIZE, scaling_factor=1.0, shift_factor=0.0,
        use_quant_conv=False, use_post_quant_conv=False)
    torch.manual_seed(seed + 2)
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(clip_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, projection_dim=32, max_position_embeddings=77,
        bos_token_id=clip_tok.bos_token_id, eos_token_id=clip_tok.eos_token_id, pad_token_id=clip_tok.pad_token_id))
    torch.manual_seed(seed + 3)
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(t5_tok), d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=2,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096)
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=clip_tok, text_encoder_2=t5,
                        tokenizer_2=t5_tok, transformer=transformer)


def _images(specs, rng: random.Random):
    """A float [-1, 1] NCHW batch of jittered renders."""
    import numpy as np
    import torch

    arr = np.stack([shapes.render(s, rng) for s in specs]).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def _lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))


def _ema_update(ema, model, step: int, decay: float) -> None:
    """One step of the weights' exponential moving average (`ema` a copy of `model`); the decay ramps
    up from 0.1 so that the average does not keep the initialisation for long."""
    import torch

    decay = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1 - decay)


def train_vae(vae, cfg: TrainConfig, log) -> dict:
    import torch

    rng = random.Random(cfg.seed + 10)
    torch.manual_seed(cfg.seed + 10)
    vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    started, recent = time.perf_counter(), collections.deque(maxlen=50)
    for step in range(cfg.vae_steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg.vae_steps, cfg.vae_lr, min(100, cfg.vae_steps))
        x = _images(rng.choices(shapes.ALL_SPECS, k=cfg.vae_batch), rng)
        posterior = vae.encode(x).latent_dist
        y = vae.decode(posterior.sample()).sample
        loss = (y - x).abs().mean() + ((y - x) ** 2).mean() + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        recent.append(loss.item())
        if step % 100 == 0 or step == cfg.vae_steps - 1:
            log(f"vae step {step}/{cfg.vae_steps} loss {sum(recent) / len(recent):.4f} "
                f"({time.perf_counter() - started:.0f} s)")
    vae.eval().requires_grad_(False)
    return {"loss": sum(recent) / len(recent), "seconds": time.perf_counter() - started}


def encode_dataset(vae, cfg: TrainConfig):
    """(latents [N, C, h, w], prompt index [N]) for `images_per_prompt` renders of every prompt;
    also sets the VAE's shift and scale so that the training latents have mean 0 and std 1."""
    import torch

    rng = random.Random(cfg.seed + 20)
    specs = [s for s in shapes.ALL_SPECS for _ in range(cfg.images_per_prompt)]
    index = torch.tensor([shapes.ALL_SPECS.index(s) for s in specs])
    chunks = []
    with torch.no_grad():
        for i in range(0, len(specs), 256):
            chunks.append(vae.encode(_images(specs[i:i + 256], rng)).latent_dist.mean)
    latents = torch.cat(chunks)
    shift, scale = float(latents.mean()), float(1.0 / latents.std())
    vae.register_to_config(shift_factor=round(shift, 4), scaling_factor=round(scale, 4))
    return (latents - vae.config.shift_factor) * vae.config.scaling_factor, index


def _train_step(loss, opt, transformer, ema, step: int, cfg, recent, started: float, log) -> None:
    """One optimiser step on `loss` (gradients clipped to norm 1), the EMA update, and the running
    loss logged every 250 steps: the tail of every trainer's step."""
    import torch

    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
    opt.step()
    _ema_update(ema, transformer, step, cfg.ema)
    recent.append(loss.item())
    if step % 250 == 0 or step == cfg.steps - 1:
        log(f"transformer step {step}/{cfg.steps} loss {sum(recent) / len(recent):.4f} "
            f"({time.perf_counter() - started:.0f} s)")


def train_transformer(pipe, latents, index, cfg: TrainConfig, log):
    import torch
    from diffusers import FluxPipeline

    transformer = pipe.transformer
    with torch.no_grad():
        embeds, pooled, text_ids = pipe.encode_prompt(
            list(shapes.PROMPTS), prompt_2=None, max_sequence_length=MAX_SEQUENCE_LENGTH)
    n, c, h, w = latents.shape
    packed = FluxPipeline._pack_latents(latents, n, c, h, w)
    img_ids = FluxPipeline._prepare_latent_image_ids(n, h // 2, w // 2, latents.device, latents.dtype)
    # The FLUX scheduler shifts sigmas by exp(mu), mu linear in the image token count; train where it samples.
    sched = pipe.scheduler.config
    slope = (sched.max_shift - sched.base_shift) / (sched.max_image_seq_len - sched.base_image_seq_len)
    mu = sched.base_shift + slope * (packed.shape[1] - sched.base_image_seq_len)
    shift = math.exp(mu)

    gen = torch.Generator().manual_seed(cfg.seed + 30)
    torch.manual_seed(cfg.seed + 30)
    transformer.train().requires_grad_(True)
    ema = copy.deepcopy(transformer).eval().requires_grad_(False)
    opt = torch.optim.AdamW(transformer.parameters(), lr=cfg.lr, weight_decay=0.0)
    started, recent = time.perf_counter(), collections.deque(maxlen=100)
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg.steps, cfg.lr, cfg.warmup)
        pick = torch.randint(0, n, (cfg.batch,), generator=gen)
        x0, prompt = packed[pick], index[pick]
        sigma = torch.sigmoid(torch.randn(cfg.batch, generator=gen))
        sigma = shift * sigma / (1 + (shift - 1) * sigma)
        noise = torch.randn(x0.shape, generator=gen)
        xt = (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * noise
        pred = transformer(hidden_states=xt, timestep=sigma, pooled_projections=pooled[prompt],
                           encoder_hidden_states=embeds[prompt], txt_ids=text_ids, img_ids=img_ids,
                           return_dict=False)[0]
        loss = ((pred - (noise - x0)) ** 2).mean()
        _train_step(loss, opt, transformer, ema, step, cfg, recent, started, log)
    pipe.register_modules(transformer=ema)
    return {"loss": sum(recent) / len(recent), "seconds": time.perf_counter() - started, "mu": mu}


def judge_pipeline(pipe, count: int, steps: int, seed: int = 0) -> dict:
    """Prompt-following accuracy of the diffusers pipeline itself on the fixed evaluation prompts."""
    import torch

    specs = shapes.eval_specs(count)
    with torch.no_grad():
        images = pipe([s.prompt for s in specs], height=shapes.SIZE, width=shapes.SIZE, num_inference_steps=steps,
                      max_sequence_length=MAX_SEQUENCE_LENGTH, generator=torch.Generator().manual_seed(seed),
                      output_type="np").images
    return {**_score(images, specs), "prompts": len(specs)}


def _score(images, specs) -> dict:
    """The judge's accuracy, overall and per attribute, on float [0, 1] HWC images of `specs`."""
    import numpy as np

    verdicts = [shapes.judge((np.clip(img, 0, 1) * 255).round().astype(np.uint8), s) for img, s in zip(images, specs)]
    per = {k: sum(v.attributes[k] for v in verdicts) / len(verdicts) for k in ("size", "colour", "shape", "place")}
    return {"accuracy": sum(v.correct for v in verdicts) / len(verdicts), "attributes": per}


@contextlib.contextmanager
def _staged(out: Path):
    """A temporary sibling of `out` to write into, renamed to `out` (replacing it) when the block
    succeeds and removed when it fails: a directory that exists is a complete one."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def train_flux_tiny(out: str | Path, cfg: TrainConfig | None = None, log=print) -> Path:
    """Trains flux-tiny from scratch and writes it to `out` (temp sibling, then rename)."""
    import torch

    cfg = cfg or TrainConfig()
    torch.set_num_threads(cfg.threads)
    out = Path(out)
    started = time.perf_counter()
    with _staged(out) as tmp:
        pipe = build_untrained(tmp, cfg.seed)
        for m in (pipe.text_encoder, pipe.text_encoder_2):
            m.eval().requires_grad_(False)
        report = {"config": asdict(cfg), "vae": train_vae(pipe.vae, cfg, log)}
        latents, index = encode_dataset(pipe.vae, cfg)
        report["transformer"] = train_transformer(pipe, latents, index, cfg, log)
        pipe.transformer.eval().requires_grad_(False)
        report["eval"] = judge_pipeline(pipe, cfg.eval_prompts, cfg.eval_steps)
        report["seconds"] = time.perf_counter() - started
        log(f"prompt following (diffusers FluxPipeline, {report['eval']['prompts']} prompts, "
            f"{cfg.eval_steps} steps): {100 * report['eval']['accuracy']:.1f}%  {report['eval']['attributes']}")
        for name in ("tokenizer", "tokenizer_2"):  # save_pretrained rewrites them below
            shutil.rmtree(tmp / name)
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {out} in {time.perf_counter() - started:.0f} s")
    return out


def _parse(argv, config_class, prog: str, doc: str):
    """(out, config) from a training script's command line: --out DIR, --quick, and one option per
    config field (--vae-steps 600) that overrides the defaults or the quick ones."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="directory to write the diffusers pipeline to")
    parser.add_argument("--quick", action="store_true", help="a few steps of everything (smoke test)")
    for field, value in asdict(config_class()).items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=type(value), default=None)
    args = parser.parse_args(argv)
    cfg = config_class.quick() if args.quick else config_class()
    for field in asdict(cfg):
        if getattr(args, field) is not None:
            setattr(cfg, field, getattr(args, field))
    return args.out, cfg


def main(argv=None) -> int:
    out, cfg = _parse(argv, TrainConfig, "python -m seer.export.tiny", __doc__)
    train_flux_tiny(out, cfg, log=lambda m: print(m, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
