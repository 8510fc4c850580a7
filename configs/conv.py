"""The convolutional VAE on Fashion-MNIST: two stride-2 convolutions each way."""

from configs import default


def get_config():
    config = default.get_config()
    config.model.arch = "conv"
    config.model.latent_dim = 32
    config.train.num_epochs = 180
    return config
