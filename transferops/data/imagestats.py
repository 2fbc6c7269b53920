"""Simple statistics of an image as it arrived, before any model transform.

The evaluation stage stores them for the reference set and the service logs
them for each prediction, through the same function, so monitoring compares
like with like: a darker camera, a lower resolution or an out-of-focus lens
moves these numbers before it moves anything else.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

STAT_NAMES = ("width", "height", "brightness", "contrast", "sharpness")


def image_statistics(image: Image.Image, scale: float = 1.0) -> np.ndarray:
    """``STAT_NAMES`` of one image, as float32.

    ``scale``: the image was shrunk by this factor (``pictures.shrink``); width
    and height are reported at the size it arrived in.

    brightness and contrast are the mean and standard deviation of the grey
    levels (0-255); sharpness is the variance of the 4-neighbour Laplacian of
    the grey image (blur lowers it; 0 for images under 3x3 px).
    """
    grey = np.asarray(image.convert("L"), dtype=np.float32)
    if grey.shape[0] >= 3 and grey.shape[1] >= 3:
        laplacian = (
            grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:]
        ) - 4 * grey[1:-1, 1:-1]
        sharpness = float(laplacian.var())
    else:
        sharpness = 0.0
    width, height = round(image.width * scale), round(image.height * scale)
    return np.array([width, height, grey.mean(), grey.std(), sharpness], dtype=np.float32)
