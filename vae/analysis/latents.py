"""The latent code of images under a trained model: posterior means and log-variances, and a 2-D
view of them (the notebooks' scatter of the test set's codes)."""

import jax
import numpy as np

from vae.data import pixels
from vae.train import distributed


def encode_images(model, images_u8: np.ndarray, batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means and log-variances (N x Z each) of N x H x W x C uint8 images."""
    encode = jax.jit(lambda x_u8: model.encode(pixels.to_model_input(x_u8, None)))
    flat = distributed.flatten(images_u8)
    parts = [jax.device_get(encode(flat[i:i + batch_size])) for i in range(0, len(flat), batch_size)]
    return (np.concatenate([m for m, _ in parts]), np.concatenate([lv for _, lv in parts]))


def project_2d(points_NxZ: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The points themselves if Z = 2, else their first two principal components; and the share
    of variance each axis explains."""
    centred = points_NxZ - points_NxZ.mean(axis=0)
    if points_NxZ.shape[1] == 2:
        variance = centred.var(axis=0)
        return points_NxZ, variance / variance.sum()
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    explained = singular**2 / np.sum(singular**2)
    return centred @ vt[:2].T, explained[:2]
