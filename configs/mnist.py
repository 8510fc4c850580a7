"""The default MLP VAE on MNIST (needs the network once: `make data DATASET=mnist`)."""

from configs import default


def get_config():
    config = default.get_config()
    config.data.name = "mnist"
    return config
