"""What TensorBoard shows of a model while it trains: prior samples and test images beside their
reconstructions, as the likelihood's means, computed here by one compiled program and handed to
`vae.workdir.tensorboard.Board` as numpy arrays (the workdir layer only writes them)."""

from collections.abc import Callable

import jax
import numpy as np
from flax import nnx

from vae.workdir.tensorboard import Pictures

NUM_SAMPLES = 64
NUM_RECONSTRUCTIONS = 16
SAMPLE_SEED = 0  # the same prior draws every epoch, so the grids show the model change


def make_pictures(graphdef, test_images_u8: np.ndarray) -> Callable[[nnx.State], Pictures]:
    """params -> the board's `Pictures` of the model with those parameters: NUM_SAMPLES prior samples
    and the first NUM_RECONSTRUCTIONS test images with their reconstructions. One program, compiled
    on the first call and shared by every run that trains with `graphdef` (the model run op by op
    would dispatch every operation of both grids from Python)."""
    inputs = test_images_u8[:NUM_RECONSTRUCTIONS].astype(np.float32) / 255.0
    flat_BxD = inputs.reshape(len(inputs), -1)

    @jax.jit
    def means(params, x_BxD):
        model = nnx.merge(graphdef, params)
        samples = model.likelihood.mean(model.sample(jax.random.key(SAMPLE_SEED), NUM_SAMPLES))
        return samples, model.likelihood.mean(model.reconstruct(x_BxD))

    def pictures(params: nnx.State) -> Pictures:
        samples, reconstructions = jax.device_get(means(jax.device_get(params), flat_BxD))
        return Pictures(prior_samples=samples.reshape(-1, *inputs.shape[1:]), test_inputs=inputs,
                        test_reconstructions=reconstructions.reshape(inputs.shape))

    return pictures
