"""A trained VAE from one's own code: `vae.load(workdir)` gives a `Model` whose methods take and
return numpy arrays.

    import vae
    m = vae.load("runs/default")
    mean, log_var = m.encode(x)        # q(z|x) of uint8 images N x H x W (x C)
    images = m.decode(mean)            # the likelihood's mean of every pixel, in [0, 1]
    log_p = m.log_likelihood(x, k=1000)  # nats per image, the importance-weighted bound
    data = m.compress(x); x == m.decompress(data)   # x: an array, or a list of images of any size

Images go in as the run's data set stores them: uint8, N x H x W or N x H x W x C of the model's
shape. A model of binarised pixels (the Bernoulli likelihood) takes binarised images, all 0/255 or
all 0/1 (`Model.binarize` draws them as every evaluation does); an 8-bit model takes any values.
Likelihood figures are in nats per image, as log-densities (higher is better): `elbo` is the ELBO
itself, so a run's metrics' `test/elbo` (a loss) is minus its mean. Every method compiles its
program on its first call for a batch shape and reuses it after. Seeds make the keys of
`vae.threefry` (the bits of `jax.random.key(seed)`, as every key of a run).

The top layer of the package, beside the scripts' plumbing: it may import every other layer.
"""

import dataclasses
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from vae import threefry
from vae.analysis import iwae, sampling
from vae.coding import codec
from vae.coding.errors import CodingError
from vae.data import pixels
from vae.train import trained

BATCH = 500  # images per compiled call: the last batch is padded, so one program serves every size


class InputError(ValueError):
    """Images a model cannot take; the message says what it needs."""


def load(workdir: str | Path, *, checkpoint: str = "best", epoch: int | None = None) -> "Model":
    """The trained model of `workdir` (the best checkpoint by default; 'latest', or one of the latest
    by `epoch`), with the evaluated parameters (the moving average where the run keeps one)."""
    config, model, restored_epoch = trained.load_trained(workdir, epoch, checkpoint)
    return Model(Path(workdir), config, model, restored_epoch)


@dataclasses.dataclass
class Model:
    """A trained VAE and the workdir it came from. `model` is the Flax NNX module itself, for what
    the methods below do not cover."""

    workdir: Path
    config: object
    model: nnx.Module
    epoch: int

    def __post_init__(self):
        self._graphdef, self._params = nnx.split(self.model)
        self._compiled = {}
        self._codec = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """H, W, C of the images the model takes and makes."""
        return tuple(self.model.image_shape)

    @property
    def binarised(self) -> bool:
        """Whether the model's pixels are binary (the Bernoulli likelihood)."""
        return self.config.model.likelihood == "bernoulli"

    # --- images in, numbers out ---------------------------------------------------------------

    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The mean and log-variance of q(z|x), each N x Z (for a hierarchy, its top layer's)."""
        return self._map("encode", lambda m, x: m.encode(x), self._inputs(images))

    def reconstruct(self, images: np.ndarray) -> np.ndarray:
        """The likelihood's mean of every pixel, in [0, 1], decoded from the posterior mean of each
        image: N x H x W x C."""
        return self._images(self._map("reconstruct", lambda m, x: m.likelihood.mean(m.reconstruct(x)),
                                      self._inputs(images)))

    def elbo(self, images: np.ndarray, *, seed: int = 0) -> np.ndarray:
        """The ELBO of each image, log p(x|z) − KL(q(z|x) ‖ p(z)) at one draw z ~ q(z|x), in nats (a
        lower bound of `log_likelihood`): N."""
        x = self._inputs(images)
        keys = jax.random.split(threefry.key(seed), x.shape[0])

        def negative_elbo(m, x, keys):
            terms = jax.vmap(lambda xi, k: m.elbo_terms(xi[None], k))(x, keys)
            return (terms["rec"] + terms["kl"])[:, 0]

        return -self._map("elbo", negative_elbo, x, keys)

    def log_likelihood(self, images: np.ndarray, k: int = 1000, *, seed: int = 0) -> np.ndarray:
        """log p(x) of each image by the importance-weighted bound with k samples (Burda et al.,
        2015), in nats: N. It tightens towards log p(x) as k grows; k = 1 is the ELBO."""
        x = self._checked(images)
        return iwae.iwae_log_likelihoods(self.model, x, threefry.key(seed), k, progress=False)

    # --- numbers in, images out ---------------------------------------------------------------

    def decode(self, z: np.ndarray) -> np.ndarray:
        """The likelihood's mean of every pixel, in [0, 1], of codes z (N x Z; a hierarchy's top
        layer, the layers below at their prior means): N x H x W x C."""
        z = np.asarray(z, np.float32)
        if z.ndim != 2 or z.shape[1] != self.model.latent_dim:
            raise InputError(f"z has shape {z.shape}; this model decodes N x {self.model.latent_dim} codes")
        return self._images(self._map("decode", lambda m, z: m.likelihood.mean(m.decode(z)), z))

    def sample(self, num: int, *, seed: int = 0, temperature: float = 1.0, draw: bool = False) -> np.ndarray:
        """num images from the model: codes z ~ p(z) (the prior's spread scaled by `temperature`),
        decoded to the likelihood's mean of every pixel in [0, 1], or with `draw` to pixels drawn
        from p(x|z) (binary for a binarised model, 256 levels for an 8-bit one, scaled to [0, 1]):
        N x H x W x C."""
        key, draw_key = jax.random.split(threefry.key(seed))
        return sampling.prior_samples(self.model, key, num, temperature, draw_key if draw else None)

    # --- files ------------------------------------------------------------------------------------

    def compress(self, images: np.ndarray | list, *, unordered: bool = False) -> bytes:
        """The images as one bits-back file (what scripts/compress.py writes): about their negative
        ELBO in bits, exactly decodable by `decompress` with this model. `images`: an array of the
        model's shape, or a list of uint8 images of their own sizes (h x w, or h x w x c with c 1
        or the model's channels), each coded at its size as the model's tiles. `unordered`: an array
        of images whose order does not matter, coded as a set (about log2(N!) bits less; `decompress`
        returns them sorted by their bytes)."""
        loaded = self._loaded()
        given = [np.asarray(image) for image in images] if isinstance(images, list) else self._checked(images)
        try:
            data, _ = codec.compress(loaded, given, progress=False, unordered=unordered)
        except CodingError as e:
            raise InputError(str(e)) from None
        return data

    def decompress(self, data: bytes) -> np.ndarray | list:
        """The uint8 array a file of `compress` holds, exactly as it was compressed; of a list, the
        list of images, each h x w x c (images all of the model's shape: their N x H x W x C array)."""
        images, _ = codec.decode(codec.open_loaded(self._loaded(), data, "the data"), progress=False)
        return images

    def binarize(self, images: np.ndarray, *, seed: int = 0) -> np.ndarray:
        """uint8 grey-level images binarised as every evaluation binarises a test set: each pixel
        1 with probability intensity / 255, drawn once from `seed`; 0/255 uint8."""
        return pixels.binarize_static(np.asarray(images, np.uint8), seed)

    # --- the plumbing ---------------------------------------------------------------------------

    def _checked(self, images) -> np.ndarray:
        """N x H x W x C uint8 images of the model's shape, binarised where the model is."""
        given = np.asarray(images)
        h, w, c = self.image_shape
        images = given[..., None] if given.ndim == 3 and c == 1 else given
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (h, w, c) or not len(images):
            grey = f" (or N x {h} x {w})" if c == 1 else ""
            raise InputError(f"images of shape {given.shape} and dtype {given.dtype}; this model takes uint8 "
                             f"N x {h} x {w} x {c}{grey} arrays, N >= 1")
        if self.binarised:
            values = set(np.unique(images).tolist())
            if not (values <= {0, 1} or values <= {0, 255}):
                raise InputError("this model's pixels are binarised: pass images of 0 and 255 (or 0 and 1), "
                                 "e.g. model.binarize(images)")
            if values <= {0, 1}:
                images = images * np.uint8(255)
        return images

    def _inputs(self, images) -> np.ndarray:
        """The model's float input, N x D (x / 255: a binarised pixel as 0 or 1)."""
        x = self._checked(images)
        return (x.reshape(x.shape[0], -1).astype(np.float32) / np.float32(255.0))

    def _images(self, flat: np.ndarray) -> np.ndarray:
        return flat.reshape(-1, *self.image_shape)

    def _map(self, name: str, fn, *arrays):
        """fn(model, *batch) over the rows of `arrays` in batches of BATCH, compiled once."""
        if name not in self._compiled:
            graphdef = self._graphdef
            self._compiled[name] = jax.jit(lambda params, *batch: fn(nnx.merge(graphdef, params), *batch))
        count = len(arrays[0])
        size = min(BATCH, count)
        parts = []
        for start in range(0, count, size):
            batch = [a[start:start + size] for a in arrays]
            short = size - len(batch[0])
            if short:  # the last batch padded with its first row, so one program serves it
                rows = np.concatenate([np.arange(size - short), np.zeros(short, np.int64)])
                batch = [b[rows] for b in batch]
            out = self._compiled[name](self._params, *batch)
            kept = size - short
            parts.append(jax.tree.map(lambda o, kept=kept: np.asarray(o)[:kept], out))
        return jax.tree.map(lambda *p: np.concatenate(p), *parts)

    def _loaded(self) -> codec.Loaded:
        if self._codec is None:
            try:
                self._codec = codec.as_loaded(self.workdir, self.config, self.model, self.epoch)
            except CodingError as e:  # a model the codec cannot use (its prior or likelihood)
                raise InputError(str(e)) from None
        return self._codec
