"""Sweeps: K configs trained at once, the members of a group as one compiled program.

    spec.py     the members of a `--sweep FIELD=V1,V2`, their groups, the sweep's files
    program.py  one epoch of a group's members (vmapped or unrolled over their stacked states)
    driver.py   trains the groups, each member into its own workdir, as a single run would

May import vae.analysis (a sweep draws its rate-distortion picture) and everything below it;
nothing of vae.cli.
"""
