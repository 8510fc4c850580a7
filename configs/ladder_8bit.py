"""The ladder on 8-bit Fashion-MNIST (data.binarize=none): a discretised mixture of 5 logistics per
pixel over the 256 grey levels, in bits/dim, for lossless compression (bits-back coding over all
its layers: scripts/compress.py). Its figures are not comparable with binarised ones.

    python scripts/train.py --config configs/ladder_8bit.py --workdir runs/ladder_8bit
    python scripts/compress.py --workdir runs/ladder_8bit --out runs/ladder_8bit/test.vae

docs/ladder.md has the short runs that chose the cells and sizes and what an epoch costs.
"""

from configs import ladder


def get_config():
    config = ladder.get_config()
    config.data.binarize = "none"
    config.model.likelihood = "logistic_mixture"
    config.model.mixture_components = 5
    config.train.kl_warmup_epochs = 2.0
    config.train.num_epochs = 200
    config.train.checkpoint_every_epochs = 2
    return config
