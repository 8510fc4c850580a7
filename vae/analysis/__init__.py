"""What is read from trained runs: the IWAE estimate of log p(x), pictures of what a model
generates, figures of the KL term across epochs, and the results table.

    iwae.py      the test-set likelihood of a workdir (importance-weighted bound, ELBO, bits/dim)
    sampling.py  prior samples, reconstructions, interpolations, traversals, manifolds
    latents.py   the posterior means of images and their 2-D view
    plotting.py  matplotlib figures from images and metric records
    results.py   the table of evaluated runs against the published figures

May import every layer below it (train, workdir, data, model, kl); nothing of vae.sweep or vae.cli.
"""
