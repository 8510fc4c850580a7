"""A run's config: loading a config file, overriding its fields, and checking them before any compute.

    load.py    a config file's `get_config()`, typed `FIELD=VALUE` overrides, each field's comment
               (`FieldError`); imports nothing of the package
    checks.py  every field checked before any compute (`validate_config`, `validate_image_shape`,
               `ConfigError`); the allowed names come from vae.model and vae.data, imported inside
               the checks, so importing this package loads no JAX or Flax

May import vae.data and vae.model (inside the checks); nothing above (workdir, train, sweep, cli).
"""

from vae.config.checks import ConfigError, validate_config, validate_image_shape
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

__all__ = ["ConfigError", "FieldError", "field_comments", "get_field", "leaves", "load_config", "override",
           "parse_value", "set_field", "validate_config", "validate_image_shape"]
