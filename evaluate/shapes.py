"""The shapes world: the procedural data flux-tiny and dit-tiny are trained on, and the judge that
scores images.

One flat shape on a light background, described by the prompt: size (optional), colour, shape and
place, as in "a small red circle at the top left" or "a blue square at the bottom right" (then the
size is small or large at random). The class-conditional dit-tiny draws classes instead of prompts:
a class is a colour, shape and place with the size left open (`CLASSES`, labelled "red circle at the
top left"). Images are rendered 4x larger and reduced (anti-aliased), with
a little jitter in position and size so that the model has to learn a distribution, not 180 pictures.
The class-conditional dit-tiny draws classes instead of prompts: a class is a colour, shape and place
with the size left open (`CLASSES`, labelled "red circle at the top left").

The judge reads an image back into the same four attributes with plain image statistics (no learned
weights): the foreground is every pixel far from the background colour, its mean colour names the
colour, the centre of its bounding box the place, its extent the size, and two blur-robust measures
the shape (how much narrower its top is than its bottom; how far it reaches along the diagonals). It
is exact on rendered images and on renders softened as a VAE softens them (tested), so its accuracy
on generated images measures the generator, not the judge.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import asdict, dataclass

import numpy as np

SIZE = 64
BACKGROUND = (236, 236, 232)
COLOURS = {
    "red": (220, 38, 38),
    "green": (22, 163, 74),
    "blue": (37, 99, 235),
    "yellow": (234, 196, 8),
    "purple": (147, 51, 234),
    "orange": (249, 115, 22),
}
SHAPES = ("circle", "square", "triangle")
PLACES = {  # centre of the shape, in pixels of a 64 x 64 image
    "at the top left": (17, 17),
    "at the top right": (47, 17),
    "at the bottom left": (17, 47),
    "at the bottom right": (47, 47),
    "in the centre": (32, 32),
}
SIZES = {"small": (6.0, 8.0), "large": (11.0, 13.0)}  # half-extent range in pixels
JITTER = 3.0  # pixels, uniform, each axis
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class Spec:
    size: str | None  # None: the prompt does not say
    colour: str
    shape: str
    place: str

    @property
    def prompt(self) -> str:
        size = f"{self.size} " if self.size else ""
        return f"a {size}{self.colour} {self.shape} {self.place}"

    def as_dict(self) -> dict:
        return asdict(self)


ALL_SPECS = tuple(Spec(*combo) for combo in itertools.product([*SIZES, None], COLOURS, SHAPES, PLACES))
PROMPTS = tuple(spec.prompt for spec in ALL_SPECS)

# The classes of dit-tiny, in this fixed order (class id = index): colour, then shape, then place, each
# in the order COLOURS, SHAPES and PLACES list them; the size is left open (either is right). 90 ids,
# 0..89 (DiT's null class for classifier-free guidance is 1000, outside them).
CLASSES = tuple(Spec(None, *combo) for combo in itertools.product(COLOURS, SHAPES, PLACES))
# Label texts: the prompt without its article ("red circle at the top left"). DiTPipeline reads commas
# in a label as separators between synonyms, so none may contain one.
CLASS_LABELS = {i: spec.prompt.removeprefix("a ") for i, spec in enumerate(CLASSES)}


def parse(prompt: str) -> Spec:
    """The attributes a prompt of this world asks for (ValueError for any other prompt)."""
    text = " ".join(prompt.lower().split())
    for spec in ALL_SPECS:
        if spec.prompt == text:
            return spec
    raise ValueError(f"{prompt!r} is not a shapes-world prompt (form: 'a small red circle at the top left')")


def eval_specs(count: int = 36, seed: int = 0) -> list[Spec]:
    """A fixed, balanced prompt set: every colour, shape, place and size equally often (as far as
    `count` allows), drawn without repetition."""
    return _balanced(ALL_SPECS, count, seed)


def class_eval_ids(count: int = 36, seed: int = 0) -> list[int]:
    """A fixed, balanced set of class ids (indices into `CLASSES`): every colour, shape and place
    equally often (as far as `count` allows), drawn without repetition."""
    return [CLASSES.index(s) for s in _balanced(CLASSES, count, seed)]


def _balanced(pool, count: int, seed: int) -> list[Spec]:
    rng = random.Random(seed)
    specs = list(pool)
    rng.shuffle(specs)
    # Interleave so that any prefix is balanced: sort by how often each attribute value has been used.
    chosen: list[Spec] = []
    used: dict[str, int] = {}
    while specs and len(chosen) < count:
        best = min(specs, key=lambda s: sum(used.get(v, 0) for v in (s.size, s.colour, s.shape, s.place)))
        specs.remove(best)
        chosen.append(best)
        for v in (best.size, best.colour, best.shape, best.place):
            used[v] = used.get(v, 0) + 1
    return chosen


def render(spec: Spec, rng: random.Random | None = None) -> np.ndarray:
    """A uint8 [64, 64, 3] image of `spec`; `rng` draws the jitter (None: no jitter, mid size)."""
    from PIL import Image, ImageDraw

    cx, cy = PLACES[spec.place]
    size = spec.size or (rng.choice(list(SIZES)) if rng else "large")
    lo, hi = SIZES[size]
    if rng is None:
        r = (lo + hi) / 2
    else:
        cx += rng.uniform(-JITTER, JITTER)
        cy += rng.uniform(-JITTER, JITTER)
        r = rng.uniform(lo, hi)
    s = _SUPERSAMPLE
    canvas = Image.new("RGB", (SIZE * s, SIZE * s), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    x, y, rr, fill = cx * s, cy * s, r * s, COLOURS[spec.colour]
    if spec.shape == "circle":
        draw.ellipse([x - rr, y - rr, x + rr, y + rr], fill=fill)
    elif spec.shape == "square":
        draw.rectangle([x - rr, y - rr, x + rr, y + rr], fill=fill)
    else:  # upward triangle, base and height 2r: it fills half its bounding box
        draw.polygon([(x, y - rr), (x + rr, y + rr), (x - rr, y + rr)], fill=fill)
    return np.asarray(canvas.resize((SIZE, SIZE), Image.Resampling.BOX), dtype=np.uint8)


@dataclass(frozen=True)
class Verdict:
    """What the judge saw, and whether it matches what was asked."""

    seen: Spec | None
    correct: bool
    attributes: dict  # attribute -> bool

    def as_dict(self) -> dict:
        return {"seen": self.seen.as_dict() if self.seen else None, "correct": self.correct,
                "attributes": self.attributes}


_FOREGROUND_DISTANCE = 60.0  # RGB distance from the background that counts as "shape"
_MIN_PIXELS = 12


def read(image) -> Spec | None:
    """The shape an image shows, or None when there is no clear single foreground."""
    img = np.asarray(image, dtype=np.float64)[..., :3]
    if img.shape[:2] != (SIZE, SIZE):
        from PIL import Image

        img = np.asarray(Image.fromarray(np.asarray(image, dtype=np.uint8)).resize((SIZE, SIZE)), dtype=np.float64)
    distance = np.linalg.norm(img - np.asarray(BACKGROUND, dtype=np.float64), axis=-1)
    mask = distance > _FOREGROUND_DISTANCE
    if mask.sum() < _MIN_PIXELS:
        return None
    blob = _largest_blob(mask)  # stray specks elsewhere do not count
    ys, xs = np.nonzero(blob & mask)
    # Colour: the palette entry nearest to the mean of the clearly-foreground pixels.
    core = blob & (distance > max(_FOREGROUND_DISTANCE, 0.6 * distance[blob].max()))
    mean = img[core].mean(axis=0)
    colour = min(COLOURS, key=lambda c: float(np.sum((mean - np.asarray(COLOURS[c])) ** 2)))
    # Place: the anchor nearest to the centre of the bounding box (robust to the triangle's mass
    # sitting low in its box).
    bx, by = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
    place = min(PLACES, key=lambda p: (PLACES[p][0] - bx) ** 2 + (PLACES[p][1] - by) ** 2)
    # Extent from anti-aliased coverage: each column (row) counts by the most any of its pixels is
    # covered, so the width and height are sub-pixel (2r: small 12-16 px, large 22-26 px).
    coverage = np.clip(distance / np.linalg.norm(np.asarray(COLOURS[colour]) - BACKGROUND), 0, 1) * blob
    if (coverage >= 0.5).sum() < 4:  # a faint smudge, no shape drawn
        return None
    width, height = float(coverage.max(axis=0).sum()), float(coverage.max(axis=1).sum())
    size = "small" if max(width, height) < 19 else "large"
    return Spec(size, colour, _shape(coverage), place)


# Shape thresholds, set between the classes over what a perfect generator could still produce:
# renders, renders softened by a Gaussian blur of 0.8 and 1.2 px, and renders passed through
# flux-tiny's own VAE (every generated image is decoded by it, and it rounds some circles towards
# squares): 1440 images, triangles' taper at most 0.43 and the others' at least 0.63; circles'
# diagonal ratio at most 1.19 and squares' at least 1.165 (3 of the 1440 on the wrong side).
_TAPER_TRIANGLE = 0.53
_DIAGONAL_SQUARE = 1.165


def _shape(coverage: np.ndarray) -> str:
    """Triangle, circle or square from two measures that blur barely moves:

    - taper: the mean covered width of the top third of rows over that of the bottom third
      (an apex-up triangle about 0.2-0.5, a circle or square about 1);
    - diagonal ratio: the extent of the half-covered pixels along the two diagonals over their
      extent along the axes (a square sqrt(2), a circle 1; blur rounds corners only a little).
    """
    rows = np.nonzero((coverage >= 0.5).any(axis=1))[0]
    widths = coverage.sum(axis=1)[rows.min():rows.max() + 1]
    third = max(1, len(widths) // 3)
    if widths[:third].mean() / max(widths[-third:].mean(), 1e-6) < _TAPER_TRIANGLE:
        return "triangle"
    ys, xs = np.nonzero(coverage >= 0.5)

    def extent(p):
        return float(p.max() - p.min() + 1)

    diagonal = (extent((xs + ys) / np.sqrt(2)) + extent((xs - ys) / np.sqrt(2))) / 2
    return "square" if diagonal / ((extent(xs) + extent(ys)) / 2) >= _DIAGONAL_SQUARE else "circle"
    return Spec(size, colour, shape, place)


def _largest_blob(mask: np.ndarray) -> np.ndarray:
    """The largest connected foreground blob, grown by one pixel so that its anti-aliased rim counts."""
    from scipy import ndimage

    labels, count = ndimage.label(mask)
    keep = mask
    if count > 1:
        sizes = ndimage.sum(mask, labels, index=np.arange(1, count + 1))
        keep = labels == (1 + int(np.argmax(sizes)))
    return ndimage.binary_dilation(keep, iterations=1)


def judge(image, prompt: str | Spec) -> Verdict:
    """Whether `image` shows what `prompt` asks for (a size the prompt leaves open is always right)."""
    want = prompt if isinstance(prompt, Spec) else parse(prompt)
    seen = read(image)
    attrs = {k: bool(seen is not None and getattr(want, k) in (None, getattr(seen, k)))
             for k in ("size", "colour", "shape", "place")}
    return Verdict(seen, all(attrs.values()), attrs)
