"""vae: a JAX/Flax NNX variational autoencoder for research, built around the KL term.

The Python API, for one's own code (docs/api.md):

    import vae
    m = vae.load("runs/default")         # a trained workdir's model: encode, decode, sample, ...
    vae.train(config, "runs/mine")       # a config (a ConfigDict or a config file's path) trained

Importing `vae` imports no JAX: each name loads what it needs when it is first used. The layers
below are described in each sub-package's docstring and checked by import-linter (pyproject.toml).
"""

import importlib


def load(workdir, *, checkpoint: str = "best", epoch: int | None = None):
    """The trained model of `workdir` as a `vae.api.Model` (the best checkpoint by default)."""
    from vae import api

    return api.load(workdir, checkpoint=checkpoint, epoch=epoch)


def __getattr__(name: str):
    if name == "train":  # the sub-package, which is also callable: vae.train(config, workdir)
        return importlib.import_module("vae.train")
    raise AttributeError(f"module 'vae' has no attribute {name!r}")
