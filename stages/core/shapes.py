"""A captioned world small enough to learn in minutes on a CPU: one coloured shape on a light background.

The image families have no real offline weights; models trained on this world (stages/core/world_models.py) have
metrics that can fail: a CLIP that tells "a red circle" from "a blue square", a Stable Diffusion that draws the
caption it is given. Training and held-out scenes come from disjoint random streams, so no held-out image is
ever trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLOURS = {"red": (215, 40, 40), "green": (40, 165, 60), "blue": (45, 75, 215), "yellow": (225, 195, 35)}
SHAPES = ("circle", "square", "triangle")
BACKGROUND = (235, 235, 235)
CAPTIONS = [f"a {colour} {shape}" for colour in COLOURS for shape in SHAPES]
SPLIT_SEEDS = {"train": 0, "heldout": 1_000_003}  # disjoint streams: held-out scenes are never trained on


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    cx: float  # centre and half-size, fractions of the image side
    cy: float
    half: float

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape}"


def scene(rng: np.random.Generator, caption_index: int | None = None) -> Scene:
    index = int(rng.integers(len(CAPTIONS))) if caption_index is None else caption_index
    colour, shape = list(COLOURS)[index // len(SHAPES)], SHAPES[index % len(SHAPES)]
    half = float(rng.uniform(0.22, 0.32))
    cx, cy = (float(rng.uniform(half + 0.04, 1 - half - 0.04)) for _ in range(2))
    return Scene(colour, shape, cx, cy, half)


def render(s: Scene, size: int) -> np.ndarray:
    """An RGB uint8 [size, size, 3] image of the scene."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    x0, y0, x1, y1 = ((s.cx - s.half) * size, (s.cy - s.half) * size, (s.cx + s.half) * size, (s.cy + s.half) * size)
    fill = COLOURS[s.colour]
    if s.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif s.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    return np.asarray(image)


def scenes(split: str, count: int, balanced: bool = True) -> list[Scene]:
    """`count` scenes of a split; balanced: the captions in turn (every caption equally often)."""
    rng = np.random.default_rng(SPLIT_SEEDS[split])
    return [scene(rng, i % len(CAPTIONS) if balanced else None) for i in range(count)]
