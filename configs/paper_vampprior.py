"""The published VAE with a VampPrior of 500 pseudo-inputs (Tomczak & Welling, 2018; Norouzi et
al., 2020: test NLL 227.35 ± 0.05 nats), trained exactly as `paper_vae`."""

from configs import paper_vae


def get_config():
    config = paper_vae.get_config()
    config.model.prior = "vampprior"
    config.model.num_pseudo_inputs = 500
    return config
