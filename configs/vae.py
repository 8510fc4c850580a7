"""The one-level VAE (784-300-300-40 gated MLP, mirrored; one Gaussian latent layer under N(0, I))
with the default recipe, 180 epochs: about as long as the default's 100 HVAE epochs here.

    make train CONFIG=configs/vae.py WORKDIR=runs/vae

The one-level variants (vae_long.py, fmnist_8bit.py, mnist.py) set the same `model.arch`.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.model.arch = "mlp"
    config.train.num_epochs = 180
    return config
