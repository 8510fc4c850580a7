"""What a researcher changes: the networks, likelihoods p(x|z), priors p(z), the VAE, the
two-level HVAE and the deep ladder, and the objectives they are trained with.

    networks.py     dense, gated and convolutional building blocks, encoders and decoders
    likelihoods.py  p(x|z) from the decoder's output (the logistic mixture's IWAE loop runs on
                    CPU as a compiled kernel: `vae.native.mixture`)
    priors.py       p(z): the standard normal, the VampPrior
    stages.py       p(x|z) decoded in S stages over the image's 2x2 sub-grids, each seeing the
                    earlier stages' pixels (wraps any likelihood: `model.decoder_stages`)
    vae.py          the one-level VAE; hvae.py the two-level HVAE (same interface)
    ladder.py       the ladder: L latent layers over one top-down state (same interface);
                    ladder_cells.py its gated dense and convolutional residual cells
    objectives.py   the β-ELBO (warm-up, free bits), the IWAE objective and the IWAE estimate
    kl_split.py     the KL term split by the aggregate posterior: I_q(x; z) + KL(q(z) ‖ p(z)), the
                    total correlation, per-dimension marginal KLs (estimators of posteriors' arrays)
    build.py        the model a config describes

Everything here is a pure function of arrays or a Flax module holding parameters; keys are
passed in. Imports nothing of the package but `vae.kl` and `vae.native` (one operation of arrays).
"""
