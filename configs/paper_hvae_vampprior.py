"""The published two-level HVAE with a VampPrior on z2 (Tomczak & Welling, 2018; Norouzi et al.,
2020: test NLL 226.72 ± 0.08 nats)."""

from configs import paper_hvae


def get_config():
    config = paper_hvae.get_config()
    config.model.prior = "vampprior"
    config.model.num_pseudo_inputs = 500
    return config
