"""The published ConvHVAE (Tomczak & Welling, 2018; Norouzi et al., 2020: test NLL 225.38 ± 0.08
nats): the two-level HVAE with gated convolutions reading x and refining the decoder's output at
full resolution (`vae.networks.conv_hvae_networks`), trained exactly as `paper_vae`.

Too slow for a CPU (docs/results.md, the paper protocol); on a GPU:
    python scripts/train.py --config configs/paper_conv_hvae.py --workdir runs/paper_conv_hvae
"""

from configs import paper_hvae


def get_config():
    config = paper_hvae.get_config()
    config.model.arch = "conv_hvae"
    config.model.conv_channels = (32, 64)
    config.model.hidden_dims = (300, 300)
    return config
