"""The config fields that more than one layer reads, each read and checked here once.

A folder's own fields (`data.image_size`, the split fractions, `data.channels`,
`data.background`, `data.tile_stride`, `data.crops_per_image`, `data.crop_seed`): read with the
defaults a config from before them gets, and checked, one `ConfigError` line per problem. The data
source builds its folder from them and `validate_config` refuses them before any compute, with the
same words. `HYPER_FIELDS`: the numbers of a run that change no shape, which a sweep may vary
inside one compiled program (`vae.train.state.Hyper` holds them). Imports nothing of the package,
so every layer may read it.
"""

from typing import NamedTuple


class ConfigError(ValueError):
    """A config value the user must change; the message names the field and what is allowed."""


CHANNELS = ("keep", "grey", "rgb")  # data.channels
DEFAULT_VALIDATION_FRACTION, DEFAULT_TEST_FRACTION = 0.0, 0.1  # configs/default.py's

# The config field of each number that changes no shape, in `vae.train.state.Hyper`'s order.
HYPER_FIELDS = {name: name if name == "seed" else f"train.{name}" for name in (
    "seed", "beta", "kl_warmup_epochs", "free_bits", "learning_rate", "ema_decay", "weight_decay",
    "grad_clip_norm", "skip_threshold")}


class FolderFields(NamedTuple):
    """A folder's fields of a data config, checked (`vae.data.folder.Folder` takes them as they are)."""

    image_size: tuple[int, ...]  # () keeps the images' size, else (H, W)
    validation_fraction: float
    test_fraction: float
    channels: str
    background: str
    tile_stride: tuple[int, ...]
    crops_per_image: int
    crop_seed: int


def is_int(value) -> bool:
    """An int, not a bool (which Python counts as one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def folder_fields(data_config) -> FolderFields:
    """The folder fields of `data_config`, checked; a config from before a field gets its default."""
    image_size = data_config.get("image_size", ())
    check_image_size(image_size)
    validation_fraction = data_config.get("folder_validation_fraction", DEFAULT_VALIDATION_FRACTION)
    test_fraction = data_config.get("folder_test_fraction", DEFAULT_TEST_FRACTION)
    check_fractions(validation_fraction, test_fraction)
    channels, background = data_config.get("channels", "keep"), data_config.get("background", "")
    check_channels(channels, "data.channels")
    check_background(background, "data.background")
    stride, crops, seed = _cutting(data_config)
    return FolderFields(tuple(image_size), validation_fraction, test_fraction, channels, background,
                        stride, crops, seed)


def _cutting(data_config) -> tuple[tuple[int, ...], int, int]:
    """data.tile_stride, data.crops_per_image and data.crop_seed, checked (with data.image_size,
    the size they cut)."""
    stride = data_config.get("tile_stride", ())
    crops, seed = data_config.get("crops_per_image", 0), data_config.get("crop_seed", 0)
    if not (isinstance(stride, tuple | list) and len(stride) in (0, 2) and all(
            is_int(n) and n >= 1 for n in stride)):
        raise ConfigError(f"data.tile_stride must be () (no tiles) or (rows, columns) between tiles' "
                          f"corners, each >= 1, e.g. --config.data.tile_stride=32,32; got {stride!r}")
    if not (is_int(crops) and crops >= 0):
        raise ConfigError(f"data.crops_per_image must be an integer >= 0 (0: no random crops), got {crops!r}")
    if not is_int(seed):
        raise ConfigError(f"data.crop_seed must be an integer, got {seed!r}")
    if stride and crops:
        raise ConfigError(f"data.tile_stride={tuple(stride)} and data.crops_per_image={crops} exclude each "
                          "other: train on tiles or on random crops, set the other to () or 0")
    if (stride or crops) and not data_config.get("image_size", ()):
        field = "data.tile_stride" if stride else "data.crops_per_image"
        raise ConfigError(f"{field} cuts images of data.image_size out of each photo: set its size too, "
                          "e.g. --config.data.image_size=32,32")
    return tuple(stride), crops, seed


def check_channels(channels, what: str) -> None:
    """keep, grey or rgb; `what` names the field or flag in the message."""
    if channels not in CHANNELS:
        raise ConfigError(f"{what} must be one of {', '.join(CHANNELS)} (keep the images' channels, convert "
                          f"every image to grey, or to colour), got {channels!r}")


def check_background(background, what: str) -> None:
    """A colour Pillow's ImageColor knows, or '' (transparent pixels refused)."""
    if background == "":
        return
    from PIL import ImageColor

    try:
        ImageColor.getrgb(background)
    except (ValueError, AttributeError, TypeError):
        raise ConfigError(f"{what} must be a colour (white, black, #rrggbb, rgb(r, g, b), any name "
                          f"Pillow's ImageColor knows) or '' to refuse transparent pixels, got {background!r}"
                          ) from None


def check_image_size(image_size) -> None:
    if not (isinstance(image_size, tuple | list) and len(image_size) in (0, 2) and all(
            is_int(n) and n >= 1 for n in image_size)):
        raise ConfigError(f"data.image_size must be () (keep the images' size) or (height, width) in "
                          f"pixels, e.g. --config.data.image_size=28,28; got {image_size!r}")


def check_fractions(validation_fraction, test_fraction) -> None:
    for field, value in (("folder_validation_fraction", validation_fraction),
                         ("folder_test_fraction", test_fraction)):
        if not (isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1):
            raise ConfigError(f"data.{field} must be a number in [0, 1), got {value!r}")
    if validation_fraction + test_fraction >= 1:
        raise ConfigError(
            f"data.folder_validation_fraction + data.folder_test_fraction must be < 1 (the rest "
            f"trains), got {validation_fraction} + {test_fraction}")
