"""A set of images whose order does not matter, coded without paying for their order: bits back on
which image is coded next (Severo et al., "Compressing multisets with large alphabets", 2021).

N images in a given order cost their code lengths plus the order's log2(N!) bits, which a set does
not need. Before each block the encoder pops, from the stack, which of the images not yet coded
come next: a draw without replacement, each distinct image with probability (its copies left) /
(images left), so the pops take log2(N!/Π copies!) bits off the stack in all. The decoder pops
the images, then pushes those choices back (it knows each from the images decoded since: they are
the ones the encoder had left), and ends with the stack the encoder started from. The file shrinks
by those bits, about log2(N!) for N distinct images (docs/compression.md has what it saves).

The images come back in coding order, which is not the caller's; `canonical_order` sorts them by
their bytes, the order the file's checksum is computed in. The first image of a file is not chosen
(the stack is empty then; `first_image`), which gives up log2(N) bits.

Imports nothing of the package.
"""

import bisect
import math

import constriction
import numpy as np


def image_key(symbols_D: np.ndarray) -> bytes:
    """An image's key: the bytes of its int32 symbols (their order is the canonical order)."""
    return np.ascontiguousarray(symbols_D, np.int32).tobytes()


def canonical_order(symbols_NxD: np.ndarray) -> np.ndarray:
    """The permutation that sorts the images by their keys, ties kept in place."""
    keys = [image_key(row) for row in symbols_NxD]
    return np.array(sorted(range(len(keys)), key=keys.__getitem__), np.int64)


def first_image(symbols_NxD: np.ndarray) -> int:
    """The row of the image a set's file codes first, with no bits to take back yet: the one of
    the most ink (the largest sum of symbols; the first such row), so that the stack holds enough
    bits for the first draw. Any image would decode; this one keeps the first blocks off the
    stack's bottom."""
    return int(np.argmax(symbols_NxD.astype(np.int64).sum(axis=1)))


def order_bits(symbols_NxD: np.ndarray) -> float:
    """The bits a set of these images does not pay for its order: log2((N−1)!/Π copies!) over the
    images after the first (which is not chosen)."""
    _, copies = np.unique(np.ascontiguousarray(symbols_NxD[1:], np.int32), axis=0, return_counts=True)
    return (math.lgamma(len(symbols_NxD)) - sum(math.lgamma(c + 1) for c in copies)) / math.log(2)


class Remaining:
    """A multiset of images (their int32 symbols' bytes), sorted, copies side by side; the choice
    of one coded on an ANS stack under (its copies) / (all), exactly, with uniform codes only: a
    position j among all n is popped (log2 n bits), and which of the m copies of its image j is
    pushed back (log2 m bits), so the choice costs log2(n / m)."""

    def __init__(self):
        self.items: list[bytes] = []

    def _copies(self, key: bytes) -> tuple[int, int]:
        """(the first position of the key's copies, how many there are)."""
        first = bisect.bisect_left(self.items, key)
        return first, bisect.bisect_right(self.items, key) - first

    def add(self, key: bytes) -> None:
        bisect.insort(self.items, key)

    def pop(self, coder) -> bytes:
        """Draws one image off the stack (without replacement) and removes it: its key."""
        n = len(self.items)
        j = int(coder.decode(constriction.stream.model.Uniform(n))) if n > 1 else 0
        key = self.items[j]
        first, m = self._copies(key)
        if m > 1:  # which copy it was is not the image's: given back
            coder.encode_reverse(np.array([j - first], np.int32), constriction.stream.model.Uniform(m))
        del self.items[first]
        return key

    def push(self, coder, key: bytes) -> None:
        """Undoes `pop` of `key`: adds it back, pops which copy it was, pushes its position."""
        self.add(key)
        n = len(self.items)
        first, m = self._copies(key)
        copy = int(coder.decode(constriction.stream.model.Uniform(m))) if m > 1 else 0
        if n > 1:
            coder.encode_reverse(np.array([first + copy], np.int32), constriction.stream.model.Uniform(n))

    @property
    def total(self) -> int:
        return len(self.items)


class Chooser:
    """The encoder's side: which rows of the images come next, popped from the stack."""

    def __init__(self, symbols_NxD: np.ndarray, rows):
        self.remaining = Remaining()
        self.rows_of: dict[bytes, list[int]] = {}
        for row in rows:
            image = image_key(symbols_NxD[row])
            self.remaining.add(image)
            self.rows_of.setdefault(image, []).append(int(row))

    def take(self, coder, count: int) -> np.ndarray:
        """The rows of the next `count` images, in the order their choices were popped."""
        return np.array([self.rows_of[self.remaining.pop(coder)].pop() for _ in range(count)], np.int64)

    def give_back(self, coder, rows: np.ndarray, symbols_NxD: np.ndarray) -> None:
        """Undoes `take`: pushes the choices back, last first."""
        for row in reversed(rows.tolist()):
            image = image_key(symbols_NxD[row])
            self.remaining.push(coder, image)
            self.rows_of[image].append(row)


def push_choices(coder, seen: Remaining, block_symbols_bxD: np.ndarray) -> None:
    """The decoder's side, after popping a block: pushes back the choices of its images (the
    encoder popped them first row first, so they go back last row first), each among the images
    decoded so far (`seen`, which this adds them to): the images the encoder had left."""
    for row in reversed(range(len(block_symbols_bxD))):
        seen.push(coder, image_key(block_symbols_bxD[row]))
