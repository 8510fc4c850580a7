"""Config checks that run before any compute: one clear message per problem, naming the field.

The names a field may take come from where they are implemented (the architectures, likelihoods
and priors from `vae.model.build`, the objectives from `vae.model.objectives`, the binarisations
from `vae.data.pixels`), imported inside the checks so that importing `vae.config` to load a config
file loads no JAX or Flax. A folder's own fields are read and checked by `vae.config.schema`, as the
folder source reads them.
"""

import math

import ml_collections

from vae.config import schema
from vae.config.schema import ConfigError, is_int

OPTIMIZERS = ("adam", "adamw")
LR_SCHEDULES = ("constant", "cosine", "warmup_cosine")
EPOCH_LOOPS = ("auto", "scan", "steps")
BATCH_SOURCES = ("auto", "device", "host")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _is_number(value) -> bool:
    """A finite int or float (not a bool): inf or nan here would only fail after compute."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Raises ConfigError for the first value that cannot give a sound run."""
    from vae.data import folder, pixels
    from vae.model import build, objectives

    _require(is_int(config.seed), f"seed must be an integer, got {config.seed!r}")

    d = config.data
    _require(isinstance(d.name, str) and d.name != "",
             "data.name must name a TFDS data set or a folder of images (folder:PATH)")
    _require(d.binarize in pixels.BINARIZE_MODES,
             f"data.binarize must be one of {pixels.BINARIZE_MODES}, got {d.binarize!r}")
    _require(is_int(d.test_binarize_seed), "data.test_binarize_seed must be an integer")
    _require(isinstance(d.validation_split, str),
             f"data.validation_split must be a TFDS split string or '', got {d.validation_split!r}")
    _require(not (d.get("tile_stride", ()) or d.get("crops_per_image", 0)) or folder.is_folder(d.name),
             f"data.tile_stride and data.crops_per_image cut the images of a folder (data.name=folder:PATH); "
             f"a TFDS data set is used whole: leave them () and 0 for {d.name}")
    fields = schema.folder_fields(d)  # their defaults where a config predates them
    image_size, channels, background = fields.image_size, fields.channels, fields.background
    _require(not image_size or folder.is_folder(d.name),
             f"data.image_size resizes the images of a folder (data.name=folder:PATH); a TFDS data set "
             f"keeps its own size: leave data.image_size=() for {d.name}")
    _require((channels, background) == ("keep", "") or folder.is_folder(d.name),
             f"data.channels and data.background convert the images of a folder (data.name=folder:PATH); "
             f"a TFDS data set keeps its own: leave data.channels=keep and data.background='' for {d.name}")

    m = config.model
    _require(m.arch in build.ARCHS, f"model.arch must be one of {build.ARCHS}, got {m.arch!r}")
    _require(m.likelihood in build.LIKELIHOODS,
             f"model.likelihood must be one of {build.LIKELIHOODS}, got {m.likelihood!r}")
    _require(is_int(m.mixture_components) and m.mixture_components >= 1,
             f"model.mixture_components must be an integer >= 1, got {m.mixture_components!r}")
    stages = m.get("decoder_stages", 1)
    _require(is_int(stages) and stages in build.DECODER_STAGES,
             f"model.decoder_stages must be one of {build.DECODER_STAGES}, got {stages!r}")
    eight_bit = m.likelihood in build.EIGHT_BIT_LIKELIHOODS
    _require(eight_bit or d.binarize != "none",
             f"model.likelihood={m.likelihood} models binarised pixels, but data.binarize=none keeps "
             f"the 8-bit levels: use model.likelihood=logistic_mixture (or categorical), or "
             f"data.binarize=dynamic")
    _require(not eight_bit or d.binarize == "none",
             f"model.likelihood={m.likelihood} models the 256 levels of 8-bit pixels, but "
             f"data.binarize={d.binarize} binarises them: set data.binarize=none")
    _require(is_int(m.latent_dim) and m.latent_dim >= 1,
             f"model.latent_dim must be an integer >= 1, got {m.latent_dim!r}")
    _require(m.activation in build.ACTIVATIONS,
             f"model.activation must be one of {build.ACTIVATIONS}, got {m.activation!r}")
    _require(m.kernel_init in build.KERNEL_INITS,
             f"model.kernel_init must be one of {build.KERNEL_INITS}, got {m.kernel_init!r}")
    clip = m.log_var_clip
    _require(isinstance(clip, tuple | list) and (len(clip) == 0 or (
        len(clip) == 2 and all(_is_number(c) for c in clip) and clip[0] < clip[1])),
             f"model.log_var_clip must be () or (lo, hi) with lo < hi, got {clip!r}")
    _require(m.prior in build.PRIORS, f"model.prior must be one of {build.PRIORS}, got {m.prior!r}")
    _require(is_int(m.num_pseudo_inputs) and m.num_pseudo_inputs >= 1,
             f"model.num_pseudo_inputs must be an integer >= 1, got {m.num_pseudo_inputs!r}")
    _require(_is_number(m.pseudo_input_mean) and _is_number(m.pseudo_input_std) and m.pseudo_input_std >= 0,
             "model.pseudo_input_mean must be a finite number and model.pseudo_input_std one >= 0")
    _require(isinstance(m.init_output_bias, bool), "model.init_output_bias must be True or False")
    for field in ("hidden_dims", "conv_channels"):
        dims = m[field]
        _require(isinstance(dims, tuple | list) and len(dims) >= 1
                 and all(is_int(h) and h >= 1 for h in dims),
                 f"model.{field} must be a non-empty tuple of positive integers, got {dims!r}")
    _validate_ladder(m)

    t = config.train
    _require(is_int(t.num_epochs) and t.num_epochs >= 0,
             f"train.num_epochs must be an integer >= 0, got {t.num_epochs!r}")
    _require(is_int(t.batch_size) and t.batch_size >= 1,
             f"train.batch_size must be an integer >= 1, got {t.batch_size!r}")
    _require(t.batch_size % num_devices == 0,
             f"train.batch_size={t.batch_size} must be divisible by the number of devices "
             f"({num_devices}); pick a multiple of {num_devices}")
    _require(t.optimizer in OPTIMIZERS, f"train.optimizer must be one of {OPTIMIZERS}, got {t.optimizer!r}")
    _require(_is_number(t.learning_rate) and t.learning_rate > 0,
             f"train.learning_rate must be a finite number > 0, got {t.learning_rate!r}")
    _require(t.lr_schedule in LR_SCHEDULES,
             f"train.lr_schedule must be one of {LR_SCHEDULES}, got {t.lr_schedule!r}")
    _require(_is_number(t.final_lr_fraction) and 0 <= t.final_lr_fraction <= 1,
             f"train.final_lr_fraction must be a number in [0, 1], got {t.final_lr_fraction!r}")
    _require(isinstance(t.normalize_grads, bool), "train.normalize_grads must be True or False")
    _require(_is_number(t.ema_decay) and 0 <= t.ema_decay < 1,
             f"train.ema_decay must be a number in [0, 1), got {t.ema_decay!r}")
    _require(t.objective in objectives.OBJECTIVES,
             f"train.objective must be one of {objectives.OBJECTIVES}, got {t.objective!r}")
    _require(is_int(t.num_samples) and t.num_samples >= 1,
             f"train.num_samples must be an integer >= 1, got {t.num_samples!r}")
    _require(t.objective == "iwae" or t.num_samples == 1,
             f"train.num_samples={t.num_samples} needs train.objective=iwae (the ELBO uses one sample)")
    _require(is_int(t.early_stopping_patience) and t.early_stopping_patience >= 0,
             f"train.early_stopping_patience must be an integer >= 0, got {t.early_stopping_patience!r}")
    _require(t.early_stopping_patience == 0 or d.validation_split,
             "train.early_stopping_patience needs a validation split: set data.validation_split "
             "(e.g. train_split='train[:50000]', validation_split='train[50000:]')")
    for field in ("warmup_epochs", "weight_decay", "grad_clip_norm", "skip_threshold", "beta",
                  "kl_warmup_epochs", "free_bits"):
        _require(_is_number(t[field]) and t[field] >= 0,
                 f"train.{field} must be a finite number >= 0, got {t[field]!r}")
    if t.free_bits > 0:
        _require(t.objective == "elbo" and m.prior == "standard_normal",
                 "train.free_bits needs the ELBO objective and a factorised prior (standard_normal): "
                 "the VampPrior's KL has no per-dimension split")
    _require(t.epoch_loop in EPOCH_LOOPS,
             f"train.epoch_loop must be one of {EPOCH_LOOPS}, got {t.epoch_loop!r}")
    _require(t.batch_source in BATCH_SOURCES,
             f"train.batch_source must be one of {BATCH_SOURCES}, got {t.batch_source!r}")
    _require(is_int(t.checkpoint_every_epochs) and t.checkpoint_every_epochs >= 1,
             "train.checkpoint_every_epochs must be an integer >= 1")
    _require(is_int(t.keep_checkpoints) and t.keep_checkpoints >= 1,
             "train.keep_checkpoints must be an integer >= 1")

    e = config.eval
    _require(is_int(e.batch_size) and e.batch_size >= 1 and e.batch_size % num_devices == 0,
             f"eval.batch_size must be a positive multiple of the device count ({num_devices}), "
             f"got {e.batch_size!r}")
    _require(is_int(e.every_epochs) and e.every_epochs >= 1, "eval.every_epochs must be an integer >= 1")
    _require(_is_number(e.active_unit_threshold) and e.active_unit_threshold >= 0,
             "eval.active_unit_threshold must be >= 0")
    split_examples = e.get("kl_split_examples", 0)
    _require(is_int(split_examples) and (split_examples == 0 or split_examples >= max(2, num_devices)),
             f"eval.kl_split_examples must be 0 (no KL split) or an integer >= 2 and >= the device count "
             f"({num_devices}), got {split_examples!r}")


def _validate_ladder(m: ml_collections.ConfigDict) -> None:
    """The ladders' fields (checked whatever the arch, so a bad value never waits for arch=ladder)."""
    from vae.model import build

    _require(is_int(m.num_layers) and m.num_layers >= 1,
             f"model.num_layers must be an integer >= 1, got {m.num_layers!r}")
    dims = m.latent_dims
    _require(isinstance(dims, tuple | list) and (len(dims) == 0 or (
        len(dims) == m.num_layers and all(is_int(d) and d >= 1 for d in dims))),
             f"model.latent_dims must be () (every layer of model.latent_dim units) or one size >= 1 per "
             f"latent layer (model.num_layers={m.num_layers}), z_1 first; got {dims!r}")
    _require(m.ladder_merge in build.LADDER_MERGES,
             f"model.ladder_merge must be one of {build.LADDER_MERGES}, got {m.ladder_merge!r}")
    _require(_is_number(m.bottleneck) and 0 < m.bottleneck <= 4,
             f"model.bottleneck must be a number in (0, 4] (a cell's width over the state's), got "
             f"{m.bottleneck!r}")
    _require(is_int(m.latent_channels) and m.latent_channels >= 1,
             f"model.latent_channels must be an integer >= 1, got {m.latent_channels!r}")
    if m.arch == "conv_ladder":
        _require(len(dims) == 0,
                 f"model.latent_dims sizes the layers of arch=ladder; conv_ladder's layers are maps of "
                 f"model.latent_channels channels: set model.latent_dims=() (got {dims!r})")
        stages = len(m.conv_channels)
        _require(m.num_layers >= stages,
                 f"model.num_layers={m.num_layers}: conv_ladder puts at least one latent layer at each of "
                 f"its {stages} resolutions (model.conv_channels): set num_layers >= {stages} or give "
                 f"fewer conv_channels")


def validate_image_shape(config: ml_collections.ConfigDict, image_shape) -> None:
    """Checks that the architecture fits the data set's images."""
    from vae.model import build

    problem = build.image_shape_problem(config.model, image_shape)
    _require(problem is None, f"{problem} ({config.data.name})")
