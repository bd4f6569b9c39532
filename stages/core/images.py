"""Images named in params: `skimage:<name>` (skimage.data), `matplotlib:<file>` (matplotlib's sample data) or a
file path; the VLM questions' images and the init images of image-to-image and inpainting."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stages.core.errors import BuildError, user_input


def load_image(spec: str, key: str = "validate.vlm.images") -> np.ndarray:
    """An RGB uint8 [H, W, 3] array: `skimage:<name>` (skimage.data), `matplotlib:<file>` (matplotlib's sample
    data) or a file path."""
    from PIL import Image

    kind, _, name = spec.partition(":")
    if kind == "skimage":
        from skimage import data

        if not callable(getattr(data, name, None)):
            raise BuildError(f"{key}: skimage.data has no image '{name}'")
        image = Image.fromarray(getattr(data, name)())
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
