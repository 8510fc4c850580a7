"""Which uint8 arrays a likelihood codes, the symbols its pixels become, and their ANS model.

A likelihood names the discrete family it codes a pixel with (`likelihood.coding_family`):

- "bernoulli" (binarised pixels): an array of uint8 whose values are all in {0, 1} or all in
  {0, 255} (how the data pipeline stores binarised images); each pixel is the symbol 0 or 1, and
  the file records which of 1 and 255 stands for "on", so decompression returns the same array.
  An array of zeros only is taken as 0/1.

- "categorical" (8-bit pixels): any uint8 array; each sub-pixel is the symbol 0..255, its value
  itself (the pixel scale is 1), coded with its B x D x 256 level probabilities.
"""

import constriction
import numpy as np

from vae.coding.errors import CodingError

FAMILIES = ("bernoulli", "categorical")


class PixelError(CodingError):
    """An image array the likelihood cannot code."""


def check_family(family: str) -> None:
    if family not in FAMILIES:
        raise PixelError(f"this model's likelihood codes pixels as {family!r}; the codec knows {FAMILIES}")


def pixel_scale(images: np.ndarray, family: str) -> int:
    """The value that stands for symbol 1 (1 or 255; 1 for 8-bit pixels, each value its own
    symbol): PixelError for values the family cannot code."""
    check_family(family)
    if images.dtype != np.uint8:
        raise PixelError(f"the images must be uint8, got {images.dtype}")
    if family == "categorical":
        return 1
    values = np.unique(images)
    if set(values.tolist()) <= {0, 1}:
        return 1
    if set(values.tolist()) <= {0, 255}:
        return 255
    bad = values[(values != 0) & (values != 1) & (values != 255)]
    example = int(bad[0]) if bad.size else "both 1 and 255"
    raise PixelError(f"a Bernoulli model codes binarised pixels, all 0/1 or all 0/255; these images have "
                     f"{len(values)} distinct values (e.g. {example}): binarise them first")


def to_symbols(images: np.ndarray, scale: int) -> np.ndarray:
    """N x D int32 symbols (0 or 1; 0..255 for 8-bit pixels) of N images."""
    return (images.reshape(images.shape[0], -1) // scale).astype(np.int32)


def from_symbols(symbols_NxD: np.ndarray, scale: int, shape: tuple[int, ...]) -> np.ndarray:
    """The uint8 array of the symbols, in the shape that was compressed."""
    return (symbols_NxD.astype(np.uint8) * np.uint8(scale)).reshape(shape)


def model_input(symbols_bxD: np.ndarray, family: str) -> np.ndarray:
    """The model's input x in [0, 1] (float64): a Bernoulli symbol as 0 or 1, a level as v / 255."""
    x = symbols_bxD.astype(np.float64)
    return x / 255.0 if family == "categorical" else x


def ans_model(family: str):
    """The constriction model family for the pixels, its parameters given at each call."""
    check_family(family)
    if family == "categorical":
        return constriction.stream.model.Categorical(perfect=False)
    return constriction.stream.model.Bernoulli(perfect=False)


def ans_parameters(probabilities: np.ndarray, family: str) -> tuple[np.ndarray, ...]:
    """The per-symbol parameters constriction reads, float64: P(on), flat (Bernoulli); or each
    symbol's 256 level probabilities, one row per symbol (categorical)."""
    probabilities = np.ascontiguousarray(probabilities, np.float64)
    if family == "categorical":
        return (probabilities.reshape(-1, probabilities.shape[-1]),)
    return (probabilities.reshape(-1),)
