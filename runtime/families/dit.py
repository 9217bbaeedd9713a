"""DiT on the runtime side: class-conditional generation at the model's one size, latents kept
[B, C, h, w] (the graphs patchify), class labels as the conditioning, the unconditional (null) class
for classifier-free guidance, and the learned-sigma output split (diffusers' DiTPipeline layout)."""

from __future__ import annotations

import difflib
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import UsageError


class DitFamily:
    name = "dit"
    conditioning = "class"

    def __init__(self, directory: Path, manifest: dict, backend):
        self.backend, self.config, self.latent = backend, manifest["model"]["config"], manifest["latent"]
        classes = manifest["classes"]
        self.count, self.null_class = classes["count"], classes.get("null_class")
        self.labels = {int(k): v for k, v in classes.get("labels", {}).items()}
        self.names: dict[str, set[int]] = {}  # every synonym (comma-separated in a label), lower case -> ids
        for i, label in self.labels.items():
            for name in label.split(","):
                if name.strip():
                    self.names.setdefault(name.strip().lower(), set()).add(i)
        self.size = self.config["sample_size"] * self.latent["vae_scale_factor"]

    def conditions(self, prompt, class_labels) -> list[int]:
        if prompt is not None:
            raise UsageError("this model is class-conditional (DiT): it takes class labels, not a prompt; pass "
                             "--class with an id or a name (e.g. --class 207) instead of --prompt")
        labels = list(class_labels) if isinstance(class_labels, (list, tuple)) else [class_labels]
        labels = [] if class_labels is None else labels
        if not labels:
            raise UsageError("no class given; this model is class-conditional: pass --class with an id or a name "
                             "(Pipeline(...)(class_labels=[...]))")
        return [self.class_id(c) for c in labels]

    def class_id(self, label: int | str) -> int:
        if isinstance(label, str) and label.strip().isdigit():
            label = int(label.strip())
        if isinstance(label, Integral) and not isinstance(label, bool):
            label = int(label)
            if not 0 <= label < self.count or (self.labels and label not in self.labels):
                span = f"one of the {len(self.labels)} labelled ids" if self.labels else f"0 to {self.count - 1}"
                raise UsageError(f"class {label} is not a class of this model; use {span}")
            return label
        if not isinstance(label, str):
            raise UsageError(f"a class is an id or a name, not {type(label).__name__}")
        ids = self.names.get(label.strip().lower())
        if not ids:
            close = difflib.get_close_matches(label.strip().lower(), list(self.names), n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise UsageError(f"no class is named {label.strip()[:80]!r} in this model{hint} (give an id, or a name "
                             "from the model's labels)")
        if len(ids) > 1:
            raise UsageError(f"{label.strip()!r} names several classes ({', '.join(map(str, sorted(ids)))}); "
                             "give the id")
        return next(iter(ids))

    @property
    def first_class(self) -> int:
        return min(self.labels) if self.labels else 0

    def check(self, height: int, width: int) -> None:
        if (height, width) != (self.size, self.size):
            raise UsageError(f"this DiT generates {self.size}x{self.size} images only (got {height}x{width}); leave "
                             "--height and --width out")

    def check_unguided(self, guidance_scale: float) -> None:
        if guidance_scale > 1:
            raise UsageError(f"guidance scale {guidance_scale} needs classifier-free guidance, but this model has no "
                             "unconditional class (it was trained without label dropout); use --guidance 1 or leave "
                             "it out")

    def sequence(self, height: int, width: int) -> tuple[int, int]:
        side = self.config["sample_size"] // self.config["patch_size"]
        return side * side, 0

    def condition(self, labels: list[int], height: int, width: int, guided: bool) -> tuple[dict[str, Any], dict]:
        """Guided: the conditional rows, then as many of the null class (the order guidance.combine reads)."""
        rows = labels + [self.null_class] * len(labels) if guided else labels
        return {"class_labels": self.backend.asarray(np.array(rows, np.int64))}, {}

    def noise_shape(self, images: int, height: int, width: int) -> tuple[int, ...]:
        s = self.config["sample_size"]
        return images, self.latent["channels"], s, s

    def latents_from_noise(self, noise: np.ndarray) -> np.ndarray:
        return noise

    def decoder_latents(self, latents: np.ndarray, height: int, width: int) -> np.ndarray:
        return latents

    def prediction(self, output):
        """The first latent-channels of the output: a learned-sigma model's variance half is not used."""
        return output[:, : self.latent["channels"]]
