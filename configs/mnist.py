"""The one-level VAE of configs/vae.py on MNIST (needs the network once: `make data DATASET=mnist`)."""

from configs import default


def get_config():
    config = default.get_config()
    config.model.arch = "mlp"
    config.train.num_epochs = 180
    config.data.name = "mnist"
    return config
