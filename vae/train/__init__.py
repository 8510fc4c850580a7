"""How a run is trained, resumed and read back.

    state.py          TrainState, Hyper (the numbers that change no shape), the optimizer, the keys
    step.py           THE train step: one pure function of (state, batch, key, hyper)
    epoch.py          the epoch built from the step, compiled in this one place (one scan or one
                      program per step, `compile_loop`)
    feed.py           an epoch's batch order, and where its batches come from (the device, or the
                      host per process)
    evaluate.py       the ELBO and its parts on the validation and test splits, and the KL split
    pictures.py       the prior samples and reconstructions TensorBoard shows, one compiled program
    run_dir.py        one run's workdir while it trains: metrics, checkpoints, model selection
    loop.py           THE loop over epochs of one run (`train_and_evaluate`), its per-epoch pieces and
                      the set-up it starts from (`build`: optimizer, initial state, feed, compiled
                      epoch, evaluators; the sweep and the benchmarks build through it too)
    trained.py        a trained run read back from its workdir
    distributed.py    many processes (jax.distributed), the mesh and global arrays

May import vae.config, vae.workdir, vae.data, vae.model and vae.kl; nothing above (analysis, sweep, cli).

The package is also the API's training call, `vae.train(config, workdir)` (`_Train.__call__`).
"""

import sys
import types


class _Train(types.ModuleType):
    """This package's module type: the package, callable as `vae.train(config, workdir)`."""

    def __call__(self, config, workdir, *, restart: bool = False, progress: bool = True) -> list[dict]:
        """Trains `config` (an ml_collections ConfigDict, or the path of a config file) into `workdir`,
        resuming it where it has checkpoints (`restart`: start afresh), as scripts/train.py does;
        returns the metrics, one record per epoch. The config is checked first: a bad field is a
        `vae.config.ConfigError` before any compute."""
        from vae.config import load_config
        from vae.train import loop

        if isinstance(config, str) or hasattr(config, "__fspath__"):
            config = load_config(config)
        return loop.train_and_evaluate(config, workdir, restart=restart, progress=progress)


sys.modules[__name__].__class__ = _Train
