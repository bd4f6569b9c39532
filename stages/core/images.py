"""Images named in params: `skimage:<name>` (skimage.data), `matplotlib:<file>` (matplotlib's sample data) or a
file path; the VLM questions' images and the init images of image-to-image and inpainting."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stages.core.errors import BuildError, user_input


def load_image(spec: str, key: str = "validate.vlm.images") -> np.ndarray:
    """An RGB uint8 [H, W, 3] array: `skimage:<name>` (skimage.data), `matplotlib:<file>` (matplotlib's sample
    data), `shapes:<split>:<index>` (a scene of the shapes world, stages/core/shapes.py) or a file path."""
    from PIL import Image

    kind, _, name = spec.partition(":")
    if kind == "skimage":
        from skimage import data

        if not callable(getattr(data, name, None)):
            raise BuildError(f"{key}: skimage.data has no image '{name}'")
        image = Image.fromarray(getattr(data, name)())
    elif kind == "shapes":
        return shapes_image(name, key)
    elif kind == "matplotlib":
        from matplotlib import cbook

        try:
            image = Image.open(cbook.get_sample_data(name))
        except (FileNotFoundError, ValueError) as e:
            raise BuildError(f"{key}: matplotlib has no sample image '{name}'") from e
    else:
        if not Path(spec).is_file():
            raise BuildError(f"{key}: image file not found: {spec}")
        with user_input(f"{key}: {spec}"):
            image = Image.open(spec)
            image.load()
    return np.asarray(image.convert("RGB"))


def shapes_image(name: str, key: str, size: int = 256) -> np.ndarray:
    from stages.core import shapes

    split, _, index = name.partition(":")
    if split not in shapes.SPLIT_SEEDS or not index.isdigit():
        raise BuildError(f"{key}: shapes:{name}: expected shapes:<{'|'.join(shapes.SPLIT_SEEDS)}>:<index>")
    return shapes.render(shapes.scenes(split, int(index) + 1)[int(index)], size)
