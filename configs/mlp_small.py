"""The classic small VAE: MLP 784-400-20-400-784 with ReLU, Adam 1e-3, batch 128, 50 epochs, no
validation split. Benchmarks and the comparison with PyTorch use it."""

from configs import default


def get_config():
    config = default.get_config()
    config.data.validation_split = ""
    config.model.arch = "mlp"
    config.model.hidden_dims = (400,)
    config.model.latent_dim = 20
    config.model.activation = "relu"
    config.train.batch_size = 128
    config.train.num_epochs = 50
    return config
