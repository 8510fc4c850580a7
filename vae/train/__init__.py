"""How a run is trained, resumed and read back.

    state.py          TrainState, Hyper (the numbers that change no shape), the optimizer, the keys
    step.py           THE train step: one pure function of (state, batch, key, hyper)
    epoch.py          the epoch of K >= 1 members built from the step, compiled in this one place
                      (one scan or one program per step, `compile_loop`; a single run is K = 1)
    feed.py           where an epoch's batches come from (the device, or the host per process)
    evaluate.py       the ELBO and its parts on the validation and test splits, and the KL split
    run.py            one run's workdir while it trains: metrics, checkpoints, model selection
    loop.py           THE loop over epochs, for a single run (`train_and_evaluate`) and a sweep
    trained.py        a trained run read back from its workdir
    config_checks.py  every config field checked before any compute
    distributed.py    many processes (jax.distributed), the mesh and global arrays

May import vae.workdir, vae.data, vae.model and vae.kl; nothing above (analysis, sweep, cli).
"""
