"""Sweeps: the cross product of `--sweep FIELD=V1,V2` lists, each member a run of its own, trained
by the one training loop (`vae.train.loop.train_members`): a group of members as one program.

    spec.py     the members of a sweep, their names, the sweep's files (sweep.json, the plan line)
    driver.py   trains them, each member into its own workdir, and draws the rate-distortion plot

May import vae.analysis (a sweep draws its rate-distortion picture) and everything below it;
nothing of vae.cli.
"""
