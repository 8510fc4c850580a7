"""8-bit Fashion-MNIST: the one-level VAE's gated MLP (784-300-300, mirrored) with a discretised
mixture of 5 logistics per pixel, on the 256 grey levels as they are (data.binarize=none), in bits/dim.

The best 8-bit model that trains in 10 minutes on the 2-core CPU here, as measured: the decoder's
output layer (300 -> 784 x 15) and the mixture's log-probabilities make an epoch about 6x the
Bernoulli default's (17 s here), so the schedule is short: 28 epochs, the KL warmed up over 2
of them, and a latent code of 64 dimensions (an 8-bit image holds about 8x the nats of a
binarised one).
Its figures are not comparable with binarised ones (docs/configs.md: which likelihood for which data).

    python scripts/train.py --config configs/fmnist_8bit.py --workdir runs/fmnist_8bit
    python scripts/evaluate.py --workdir runs/fmnist_8bit --iw_samples 1000
    python scripts/benchmark_codecs.py --eight_bit --workdir runs/fmnist_8bit --out docs/codecs_8bit
"""

from configs import default


def get_config():
    config = default.get_config()
    config.model.arch = "mlp"
    config.data.binarize = "none"
    config.model.likelihood = "logistic_mixture"
    config.model.mixture_components = 5
    config.model.latent_dim = 64
    config.train.num_epochs = 28
    config.train.kl_warmup_epochs = 2.0
    config.train.checkpoint_every_epochs = 2
    return config
