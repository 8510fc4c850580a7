"""Images as one picture: a batch tiled into a grid, for TensorBoard and the scripts' PNGs."""

import math

import numpy as np


def image_grid(images: np.ndarray, ncols: int, pad: int = 1) -> np.ndarray:
    """N x H x W x C images in [0, 1] tiled row-major into one (rows·H) x (ncols·W) image."""
    n, h, w, c = images.shape
    nrows = math.ceil(n / ncols)
    grid = np.ones((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), dtype=np.float32)
    for i, image in enumerate(images):
        r, col = divmod(i, ncols)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[top:top + h, left:left + w] = image
    return grid[..., 0] if c == 1 else grid
