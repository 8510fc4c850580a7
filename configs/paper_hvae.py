"""The published two-level HVAE (Tomczak & Welling, 2018; Norouzi et al., 2020: test NLL 227.37
nats): z1 and z2 of 40 units, gated layers of 300, trained exactly as `paper_vae`."""

from configs import paper_vae


def get_config():
    config = paper_vae.get_config()
    config.model.arch = "hvae"
    return config
