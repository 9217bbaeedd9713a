"""FLUX on the runtime side: CLIP and T5 prompt encodings, rotary tables per resolution, and the
2x2 packing of the VAE's latents into transformer tokens (diffusers' FluxPipeline layout)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...errors import UsageError
from ..rope import flux_rope
from ..text import PromptTokenizer

MAX_TOKENS = 65536  # image tokens the exported graphs take
MAX_PACKED_SIDE = 1024  # packed rows and columns the VAE decoder is exported for


class FluxFamily:
    name = "flux"
    conditioning = "prompt"

    def __init__(self, directory: Path, manifest: dict, backend):
        self.backend, self.config, self.latent = backend, manifest["model"]["config"], manifest["latent"]
        self.tokenizers = {k: PromptTokenizer(directory / v["tokenizer"], v["max_length"], v["pad_id"], v["pad_token"])
                           for k, v in manifest["text"].items()}
        self.multiple = 2 * self.latent["vae_scale_factor"]  # pixels per packed token side

    def conditions(self, prompt, class_labels) -> list[str]:
        if class_labels is not None:
            raise UsageError("this model is text-to-image (FLUX): it takes a prompt, not class labels; pass "
                             "--prompt '...' instead of --class")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
        if not prompts or any(not p.strip() for p in prompts):
            raise UsageError("the prompt is empty; describe the image to generate, e.g. --prompt 'a red circle'")
        return prompts

    def check_unguided(self, guidance_scale: float) -> None:
        """FLUX.1-schnell takes no guidance; like FluxPipeline, a scale given is ignored (with a warning)."""

    def check(self, height: int, width: int) -> None:
        m = self.multiple
        for name, v in (("height", height), ("width", width)):
            if v < m or v % m:
                lo = max(m, v - v % m)
                raise UsageError(f"{name} {v} cannot be generated: it must be a positive multiple of {m} "
                                 f"(try {lo} or {lo + m})")
        if (height // m) * (width // m) > MAX_TOKENS:
            raise UsageError(f"{height}x{width} is larger than the exported graphs take ({MAX_TOKENS} latent tokens)")
        for name, v in (("height", height), ("width", width)):
            if v > MAX_PACKED_SIDE * m:
                raise UsageError(f"{name} {v} is above the {MAX_PACKED_SIDE * m} pixels a side the exported graphs "
                                 f"take; use at most {MAX_PACKED_SIDE * m}")

    def grid(self, height: int, width: int) -> tuple[int, int]:
        return height // self.multiple, width // self.multiple

    def sequence(self, height: int, width: int) -> tuple[int, int]:
        rows, cols = self.grid(height, width)
        return rows * cols, self.tokenizers["t5"].max_length

    def condition(self, prompts: list[str], height: int, width: int, guided: bool) -> tuple[dict[str, Any], dict]:
        run, asarray = self.backend.run, self.backend.asarray
        clip, t5 = self.tokenizers["clip"](prompts), self.tokenizers["t5"](prompts)
        pooled = run("clip", {"input_ids": asarray(clip.ids)})["pooled_projections"]
        text = run("t5", {"input_ids": asarray(t5.ids)})["encoder_hidden_states"]
        rows, cols = self.grid(height, width)
        cos, sin = flux_rope(t5.ids.shape[1], rows, cols, self.config["axes_dims_rope"], self.config["rope_theta"])
        inputs = {"encoder_hidden_states": text, "pooled_projections": pooled,
                  "rope_cos": asarray(cos), "rope_sin": asarray(sin)}
        return inputs, {"truncated": {"clip": clip.truncated, "t5": t5.truncated}}

    def noise_shape(self, images: int, height: int, width: int) -> tuple[int, ...]:
        rows, cols = self.grid(height, width)
        return images, self.latent["channels"], rows * 2, cols * 2

    def latents_from_noise(self, noise: np.ndarray) -> np.ndarray:
        return pack(noise)

    def decoder_latents(self, latents: np.ndarray, height: int, width: int) -> np.ndarray:
        return unpack(latents, *self.grid(height, width))

    def prediction(self, output):
        return output


def pack(latents: np.ndarray) -> np.ndarray:
    """[B, C, H, W] -> [B, (H/2)(W/2), 4C], the token layout of the transformer."""
    b, c, h, w = latents.shape
    x = latents.reshape(b, c, h // 2, 2, w // 2, 2).transpose(0, 2, 4, 1, 3, 5)
    return np.ascontiguousarray(x.reshape(b, (h // 2) * (w // 2), c * 4))


def unpack(tokens: np.ndarray, rows: int, cols: int) -> np.ndarray:
    b, n, c4 = tokens.shape
    x = tokens.reshape(b, rows, cols, c4 // 4, 2, 2).transpose(0, 3, 1, 4, 2, 5)
    return np.ascontiguousarray(x.reshape(b, c4 // 4, rows * 2, cols * 2))
