"""A run's config: loading a config file, overriding its fields, and checking them before any compute.

    load.py    a config file's `get_config()`, typed `FIELD=VALUE` overrides, each field's comment
               (`FieldError`); imports nothing of the package
    schema.py  the fields more than one layer reads: a folder's own fields, read and checked
               (`folder_fields`), the numbers a sweep may vary in one program (`HYPER_FIELDS`), and
               `ConfigError`; imports nothing of the package, so the data source reads it too
    checks.py  every field checked before any compute (`validate_config`, `validate_image_shape`);
               the allowed names come from vae.model and vae.data, imported inside the checks, so
               importing this package loads no JAX or Flax

load.py and schema.py sit at the bottom of the layers; checks.py may import vae.data and vae.model
(inside the checks); nothing imports above (workdir, train, sweep, cli).
"""

from vae.config.checks import validate_config, validate_image_shape
from vae.config.load import (
    FieldError,
    field_comments,
    get_field,
    leaves,
    load_config,
    override,
    parse_value,
    set_field,
)
from vae.config.schema import HYPER_FIELDS, ConfigError

__all__ = ["HYPER_FIELDS", "ConfigError", "FieldError", "field_comments", "get_field", "leaves",
           "load_config", "override", "parse_value", "set_field", "validate_config", "validate_image_shape"]
