"""CIFAR-10 (32x32 colour, 8-bit) for one GPU: the convolutional ladder (vae/model/ladder.py) with
a discretised mixture of 10 logistics per sub-pixel, in bits/dim.

Three resolutions (16x16, 8x8, 4x4 with 128, 256 and 256 channels: a third to two thirds of
VDVAE's 384; cells a quarter of that, as VDVAE's), NUM_LAYERS latent layers of 16-channel maps
spread over them (5, 5 and 6, the extra one at 4x4), the published 45k/5k split of the training
set, batch 64, Adam 1e-3 with a cosine decay, the KL warmed up over 10 epochs, gradients clipped at
norm 200 (VDVAE skips updates above a threshold for the same spikes), an EMA of the parameters.
Not trained here beyond one step (no GPU; 7 images/s on this CPU: docs/ladder.md). CIFAR-10 must
first be prepared where a network is (`python scripts/prepare_data.py --dataset cifar10`, then copy
~/tensorflow_datasets/cifar10 here).

    python scripts/train.py --config configs/cifar10_ladder.py --workdir runs/cifar10_ladder
"""

from configs import cifar10

NUM_LAYERS = 16


def get_config():
    config = cifar10.get_config()
    config.model.arch = "conv_ladder"
    config.model.conv_channels = (128, 256, 256)
    config.model.num_layers = NUM_LAYERS
    config.model.latent_channels = 16
    config.model.bottleneck = 0.25
    config.train.batch_size = 64
    config.train.learning_rate = 1e-3
    config.train.grad_clip_norm = 200.0
    config.train.ema_decay = 0.9995
    config.eval.batch_size = 250
    return config
