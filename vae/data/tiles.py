"""Photos of any size cut into images of one size, none resized: tiles on a grid, or random crops.

- **Tiles** (`data.tile_stride`): every tile of `tile` (H, W) pixels whose top-left corner lies
  on a grid of `stride` (SH, SW); the grid is centred on the photo, so the pixels it leaves out
  (fewer than a stride) are split between opposite edges, the top and left getting the smaller
  half.
- **Evaluation tiles**: the same grid with the stride equal to the tile: non-overlapping tiles
  covering the centre of the photo; a photo less than two tiles high and wide gives its centre
  crop.
- **Random crops** (`data.crops_per_image`): that many crops per photo, each corner uniform over
  the photo, drawn from a generator seeded with (seed, epoch): the same crops for the same epoch
  on every run and process, other crops every epoch.

Imports nothing of the package.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def grid_starts(length: int, size: int, stride: int) -> np.ndarray:
    """The first pixel of each window of `size` on a grid of `stride` centred in `length` pixels."""
    count = (length - size) // stride + 1
    offset = (length - size - (count - 1) * stride) // 2
    return offset + stride * np.arange(count)


def grid_positions(shape_hw, tile_hw, stride_hw) -> np.ndarray:
    """P x 2 (top, left) corners of a photo's tiles, row by row."""
    tops = grid_starts(shape_hw[0], tile_hw[0], stride_hw[0])
    lefts = grid_starts(shape_hw[1], tile_hw[1], stride_hw[1])
    return np.stack(np.meshgrid(tops, lefts, indexing="ij"), axis=-1).reshape(-1, 2)


def cut(photo_HxWxC: np.ndarray, positions_Px2: np.ndarray, tile_hw) -> np.ndarray:
    """P x h x w x C: the windows of `tile_hw` at `positions` (top, left), copied."""
    windows = sliding_window_view(photo_HxWxC, tuple(tile_hw), axis=(0, 1))  # H' x W' x C x h x w
    return np.ascontiguousarray(np.moveaxis(windows[positions_Px2[:, 0], positions_Px2[:, 1]], 1, -1))


def _stacked(photos, positions, tile_hw) -> tuple[np.ndarray, np.ndarray]:
    images = [cut(photo, where, tile_hw) for photo, where in zip(photos, positions)]
    owners = np.repeat(np.arange(len(photos)), [len(where) for where in positions])
    channels = photos[0].shape[2] if photos else 1
    empty = np.zeros((0, *tile_hw, channels), np.uint8)
    return (np.concatenate(images) if images else empty), owners


def tiles(photos, tile_hw, stride_hw) -> tuple[np.ndarray, np.ndarray]:
    """Every photo's tiles (N x h x w x C, photo by photo) and the index of each tile's photo."""
    return _stacked(photos, [grid_positions(p.shape, tile_hw, stride_hw) for p in photos], tile_hw)


def eval_tiles(photos, tile_hw) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping tiles covering each photo's centre (a centre crop at least) and their photos."""
    return tiles(photos, tile_hw, tile_hw)


def crop_positions(shapes_hw, tile_hw, count: int, seed: int, epoch: int) -> list[np.ndarray]:
    """`count` random (top, left) corners per photo, a function of (seed, epoch) alone."""
    rng = np.random.default_rng([seed, epoch])
    return [np.stack([rng.integers(0, h - tile_hw[0] + 1, count), rng.integers(0, w - tile_hw[1] + 1, count)],
                     axis=-1) for h, w in shapes_hw]


def random_crops(photos, tile_hw, count: int, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` random crops of each photo for `epoch` (N x h x w x C, photo by photo) and their photos."""
    positions = crop_positions([p.shape[:2] for p in photos], tile_hw, count, seed, epoch)
    return _stacked(photos, positions, tile_hw)
