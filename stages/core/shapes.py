"""A captioned world small enough to learn in minutes on a CPU: one coloured shape on a light background.

The image families have no real offline weights; models trained on this world (stages/core/world_models.py) have
metrics that can fail: a CLIP that tells "a red circle" from "a blue square", a Stable Diffusion that draws the
caption it is given. Scenes sit on a grid and every grid cell belongs to one split, so no held-out image is ever
trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLOURS = {"red": (215, 40, 40), "green": (40, 165, 60), "blue": (45, 75, 215), "yellow": (225, 195, 35)}
SHAPES = ("circle", "square", "triangle")
BACKGROUND = (235, 235, 235)
CAPTIONS = [f"a {colour} {shape}" for colour in COLOURS for shape in SHAPES]
SPLIT_SEEDS = {"train": 0, "heldout": 1_000_003}  # disjoint streams: held-out scenes are never trained on
QUESTIONS = {"What colour is the shape?": "colour", "What shape is it?": "shape"}  # question -> the scene's answer


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

    def answer(self, question: str) -> str:
        """The true answer to one of QUESTIONS."""
        return getattr(self, QUESTIONS[question])


GRID = 32  # positions and sizes in whole cells of a 32 x 32 grid: exact pixels at 32 and 64 px


def scene(rng: np.random.Generator, caption_index: int) -> Scene:
    colour, shape = list(COLOURS)[caption_index // len(SHAPES)], SHAPES[caption_index % len(SHAPES)]
    half = int(rng.integers(7, 11))
    cx, cy = (int(rng.integers(half + 1, GRID - half)) for _ in range(2))
    return Scene(colour, shape, cx / GRID, cy / GRID, half / GRID)


def split_of(s: Scene) -> str:
    """Every scene belongs to one split by its grid cell (one in five held out): no held-out image, at any of the
    sizes used, is ever trained on."""
    cells = round(s.cx * GRID) * 7 + round(s.cy * GRID) * 13 + round(s.half * GRID) * 5
    return "heldout" if (cells + CAPTIONS.index(s.caption)) % 5 == 0 else "train"


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


def scenes(split: str, count: int) -> list[Scene]:
    """`count` scenes of a split, the captions in turn (every caption equally often)."""
    rng = np.random.default_rng(SPLIT_SEEDS[split])
    chosen = []
    while len(chosen) < count:
        candidate = scene(rng, len(chosen) % len(CAPTIONS))
        if split_of(candidate) == split:
            chosen.append(candidate)
    return chosen
