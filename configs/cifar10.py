"""CIFAR-10 (32x32 colour, 8-bit) for a GPU: the convolutional VAE with a discretised mixture of
10 logistics per sub-pixel (PixelCNN++'s K), in bits/dim.

Three stride-2 convolutions each way (32x32 -> 4x4, channels 64-128-256), a 128-d code, the
published 45k/5k split of the training set for model selection, batch 128, Adam 2e-3 with a
cosine decay, the KL warmed up over 10 epochs, a parameter EMA, 200 epochs. Colour channels are
modelled independently given z (vae/model/likelihoods.py says why). CIFAR-10 must first be
prepared where a network is (`python scripts/prepare_data.py --dataset cifar10`, then copy
~/tensorflow_datasets/cifar10 here); docs/configs.md gives its cost per epoch measured on a 2-core CPU.

    python scripts/train.py --config configs/cifar10.py --workdir runs/cifar10
"""

from configs import default


def get_config():
    config = default.get_config()
    config.data.name = "cifar10"
    config.data.train_split = "train[:45000]"
    config.data.validation_split = "train[45000:]"
    config.data.binarize = "none"
    config.model.arch = "conv"
    config.model.likelihood = "logistic_mixture"
    config.model.mixture_components = 10
    config.model.conv_channels = (64, 128, 256)
    config.model.latent_dim = 128
    config.train.batch_size = 128
    config.train.learning_rate = 2e-3
    config.train.num_epochs = 200
    config.train.kl_warmup_epochs = 10.0
    config.train.ema_decay = 0.999
    config.eval.batch_size = 500
    return config
