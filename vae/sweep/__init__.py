"""Sweeps: the cross product of `--sweep FIELD=V1,V2` lists, each member a run of its own, whose
workdir is exactly a single run's; members that differ only in `Hyper` numbers train as one program.

    spec.py     the members of a sweep, their names and groups, the sweep's files (sweep.json, the plan line)
    program.py  a group as one program: the one-run epoch body (`vae.train.epoch`) wrapped for K
                members, their states as one carry, and the group's epochs (active, frozen, the shared step)
    driver.py   trains them (`train_members`), each member into its own workdir, and draws the
                rate-distortion plot

May import vae.analysis (a sweep draws its rate-distortion picture) and everything below it;
nothing of vae.cli.
"""
