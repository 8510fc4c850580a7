"""Images of any size cut into the model's tiles, and each image's size and channels on the stack.

An image of h x w pixels and c channels (c = 1, or the model's C) is cut into ceil(h / H) x
ceil(w / W) tiles of the model's H x W x C: its whole tiles row by row, then its edge tiles row
by row (so that most blocks of tiles have no copies, and code at full speed). An edge tile is
filled out by repeating the image's last row and column (edge replication), and a grey image on
a colour model by repeating its one channel in the others: every sub-pixel of a tile that is not
the image's own is a copy of one that is (`Tiling.sources`). The model's q(z|x) sees the whole tile; the
pixel code pushes and pops only the tile's own sub-pixels (`Tiling.masks`), and decoding, once it
has popped them, makes the copies again (`fill`) before it recomputes q(z|x) to push the bits
back. So the copies cost nothing in the file.

The sizes and channels are coded on the stack above the pixels (and below the names): per
image, one symbol saying whether it has the size and channels of the image before it (nearly
free for a folder of one size), else its height and width (each the length of its binary digits,
then its digits after the leading one) and whether it is grey.
"""

import dataclasses
import functools

import constriction
import numpy as np

from vae.coding.errors import CodingError

MAX_SIDE = 1 << 16  # an image's height and width are at most this many pixels
_SAME = constriction.stream.model.Categorical(np.array([1.0 / 64, 63.0 / 64]), perfect=False)  # 1: same
_BITS = constriction.stream.model.Uniform(17)  # the number of binary digits of a side, 1..17
_GREY = constriction.stream.model.Uniform(2)


class ShapeError(CodingError):
    """An image the tiles cannot hold, or a decoded shape that cannot be one (a damaged file)."""


@dataclasses.dataclass(frozen=True)
class Tiling:
    """The tiles of images of the given shapes (h, w, c) in the model's tile shape (H, W, C)."""

    shapes: tuple[tuple[int, int, int], ...]
    tile_shape: tuple[int, int, int]

    def grid(self, index: int) -> tuple[int, int]:
        """The image's tiles down and across."""
        h, w, _ = self.shapes[index]
        return -(-h // self.tile_shape[0]), -(-w // self.tile_shape[1])

    @functools.cached_property
    def counts(self) -> np.ndarray:
        return np.array([np.prod(self.grid(i)) for i in range(len(self.shapes))], np.int64)

    @property
    def num_tiles(self) -> int:
        return int(self.counts.sum())

    @property
    def num_sub_pixels(self) -> int:
        """The images' own sub-pixels: what the file codes."""
        return int(sum(h * w * c for h, w, c in self.shapes))

    def _own(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The image's tiles' rows and columns of its own, down and across."""
        big_h, big_w, _ = self.tile_shape
        h, w, _ = self.shapes[index]
        down, across = self.grid(index)
        rows, cols = h - big_h * np.arange(down), w - big_w * np.arange(across)
        return np.minimum(big_h, rows), np.minimum(big_w, cols)

    def order(self, index: int) -> np.ndarray:
        """The image's tiles (their row-major indices) in the order they are coded: the whole
        ones first."""
        rows, cols = self._own(index)
        whole = ((rows == self.tile_shape[0])[:, None] & (cols == self.tile_shape[1])[None, :]).reshape(-1)
        if self.shapes[index][2] != self.tile_shape[2]:
            whole[:] = False
        return np.concatenate([np.flatnonzero(whole), np.flatnonzero(~whole)])

    def _edges(self):
        """Per tile, in coding order: (rows, columns, channels) of the image's own in it."""
        out = []
        for i, (_, _, c) in enumerate(self.shapes):
            rows, cols = self._own(i)
            edges = [(int(r), int(k), c) for r in rows for k in cols]
            out += [edges[t] for t in self.order(i)]
        return out

    @functools.cached_property
    def kinds(self) -> tuple[np.ndarray, list]:
        """(each tile's kind, N; the kinds: (rows, columns, channels) of its own)."""
        edges = self._edges()
        distinct = sorted(set(edges))
        index = {edge: i for i, edge in enumerate(distinct)}
        return np.array([index[e] for e in edges], np.int64), distinct

    def sources(self, first: int, last: int) -> np.ndarray | None:
        """For tiles first..last-1, b x D: each sub-pixel's source, the index of the sub-pixel of
        the tile it is a copy of (its own index where it is the image's own); None where every
        sub-pixel of these tiles is the image's own."""
        kind_N, kinds = self.kinds
        tables = [_source(edge, self.tile_shape) for edge in kinds]
        chosen = kind_N[first:last]
        if all(tables[k] is None for k in np.unique(chosen)):
            return None
        d = int(np.prod(self.tile_shape))
        identity = np.arange(d, dtype=np.int32)
        return np.stack([identity if tables[k] is None else tables[k] for k in chosen])


@functools.cache
def _source(edge: tuple[int, int, int], tile_shape: tuple[int, int, int]) -> np.ndarray | None:
    rows, cols, channels = edge
    big_h, big_w, big_c = tile_shape
    if (rows, cols, channels) == (big_h, big_w, big_c):
        return None
    y = np.minimum(np.arange(big_h), rows - 1)[:, None, None]
    x = np.minimum(np.arange(big_w), cols - 1)[None, :, None]
    ch = (np.arange(big_c) if channels == big_c else np.zeros(big_c, np.int64))[None, None, :]
    return ((y * big_w + x) * big_c + ch).reshape(-1).astype(np.int32)


def own(sources_bxD: np.ndarray | None) -> np.ndarray | None:
    """Which sub-pixels are the images' own (b x D bool), None where all are."""
    if sources_bxD is None:
        return None
    return sources_bxD == np.arange(sources_bxD.shape[1], dtype=np.int32)


def fill(symbols_bxD: np.ndarray, sources_bxD: np.ndarray | None) -> np.ndarray:
    """The tiles with every copy made again from the sub-pixel it copies."""
    if sources_bxD is None:
        return symbols_bxD
    return np.take_along_axis(symbols_bxD, sources_bxD, axis=1)


def check_image(image: np.ndarray, tile_shape: tuple[int, int, int], what: str) -> np.ndarray:
    """The image as h x w x c uint8 (a 2-D one as grey); ShapeError for one the tiles cannot hold."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    c = tile_shape[2]
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in {1, c} or image.size == 0:
        kinds = "h x w (grey)" + (f" or h x w x {c}" if c > 1 else "")
        raise ShapeError(f"{what} is a {image.dtype} array of shape {image.shape}; this model codes uint8 "
                         f"images {kinds}")
    if max(image.shape[:2]) > MAX_SIDE:
        raise ShapeError(f"{what} is {image.shape[0]}x{image.shape[1]}: the file records sides of at most "
                         f"{MAX_SIDE:,} pixels; cut it into smaller images")
    return image


def cut(images: list[np.ndarray], tiling: Tiling) -> np.ndarray:
    """N x H x W x C uint8: every image's tiles, the images in order, each image's in `order`,
    edge tiles filled out by edge replication, grey repeated into every channel."""
    big_h, big_w, big_c = tiling.tile_shape
    out = np.empty((tiling.num_tiles, big_h, big_w, big_c), np.uint8)
    start = 0
    for i, image in enumerate(images):
        h, w, _ = tiling.shapes[i]
        down, across = tiling.grid(i)
        padded = np.pad(image, ((0, down * big_h - h), (0, across * big_w - w), (0, 0)), mode="edge")
        padded = np.broadcast_to(padded, (*padded.shape[:2], big_c))
        tiles = padded.reshape(down, big_h, across, big_w, big_c).transpose(0, 2, 1, 3, 4)
        out[start:start + down * across] = tiles.reshape(-1, big_h, big_w, big_c)[tiling.order(i)]
        start += down * across
    return out


def join(tiles_NxHxWxC: np.ndarray, tiling: Tiling) -> list[np.ndarray]:
    """Undoes `cut`: each image, h x w x c."""
    big_h, big_w, big_c = tiling.tile_shape
    images, start = [], 0
    for i, (h, w, c) in enumerate(tiling.shapes):
        down, across = tiling.grid(i)
        row_major = np.empty((down * across, big_h, big_w, big_c), np.uint8)
        row_major[tiling.order(i)] = tiles_NxHxWxC[start:start + down * across]
        tiles = row_major.reshape(down, across, big_h, big_w, big_c)
        image = tiles.transpose(0, 2, 1, 3, 4).reshape(down * big_h, across * big_w, big_c)
        images.append(np.ascontiguousarray(image[:h, :w, :c]))
        start += down * across
    return images


def record(shapes) -> bytes:
    """The shapes' bytes, for the file's checksum."""
    return np.asarray(shapes, "<u4").tobytes()


def _push_side(coder, side: int) -> None:
    bits = side.bit_length()
    if bits > 1:
        coder.encode_reverse(np.array([side - (1 << (bits - 1))], np.int32),
                             constriction.stream.model.Uniform(1 << (bits - 1)))
    coder.encode_reverse(np.array([bits - 1], np.int32), _BITS)


def _pop_side(coder) -> int:
    bits = int(coder.decode(_BITS, 1)[0]) + 1
    if bits == 1:
        return 1
    return (1 << (bits - 1)) + int(coder.decode(constriction.stream.model.Uniform(1 << (bits - 1)), 1)[0])


def push(coder, shapes, channels: int) -> None:
    """Pushes each image's (h, w, c) so that `pop` gives them back in order; c is 1 or `channels`."""
    for i in reversed(range(len(shapes))):
        h, w, c = shapes[i]
        same = i > 0 and tuple(shapes[i - 1]) == (h, w, c)
        if not same:
            if channels > 1:
                coder.encode_reverse(np.array([int(c == 1)], np.int32), _GREY)
            _push_side(coder, w)
            _push_side(coder, h)
        if i > 0:
            coder.encode_reverse(np.array([int(same)], np.int32), _SAME)


def pop(coder, count: int, channels: int) -> list[tuple[int, int, int]]:
    """`count` shapes off the stack; ShapeError for sides no file records (a damaged file)."""
    shapes = []
    for i in range(count):
        if i > 0 and int(coder.decode(_SAME, 1)[0]):
            shapes.append(shapes[-1])
            continue
        h = _pop_side(coder)
        w = _pop_side(coder)
        c = (1 if int(coder.decode(_GREY, 1)[0]) else channels) if channels > 1 else 1
        if max(h, w) > MAX_SIDE:
            raise ShapeError("its images' sizes do not decode to sizes a file records")
        shapes.append((h, w, c))
    return shapes
