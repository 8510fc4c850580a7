"""The KL notebook's coding tools (kl_divergence.ipynb, section 8): the file sizes behind entropy,
cross-entropy and KL, first of i.i.d. messages from a categorical distribution coded with ANS,
then of each test image coded by a trained VAE (bits-back, `vae.coding`).

Coding N symbols drawn from P with a code built for Q costs about N · H(P, Q) bits, N · H(P) of
them for a code built for P: the extra N · KL(P‖Q) bits are real bits in a real file. A notebook
tool, not the library's: the notebook imports it from its own folder.
"""

from pathlib import Path

import constriction
import numpy as np

from vae.coding import bbans, codec, pixel_code
from vae.coding.host_model import host_model
from vae.coding.latent_code import LatentBins
from vae.data import dataset
from vae.train import trained


def information_bits(symbols_N: np.ndarray, probabilities_K: np.ndarray) -> float:
    """The ideal code length −Σ log2 q(x_i) of the symbols under `probabilities` (bits)."""
    q = np.asarray(probabilities_K, np.float64) / np.sum(probabilities_K)
    return float(-np.sum(np.log2(q[np.asarray(symbols_N)])))


# The stack starts from its smallest regular state (2^32: the words 0, 1). An empty coder's state
# is 0, where a symbol whose interval starts at 0 is pushed for free (a million dogs under any Q
# would cost 0 bits): real, but a degenerate case that would hide what the code costs.
START_WORDS = (0, 1)


def ans_file_bits(symbols_N: np.ndarray, probabilities_K: np.ndarray) -> int:
    """The size in bits (whole 32-bit words, the two start words included) of an ANS stack
    holding the symbols, each coded under `probabilities` (constriction's Categorical; a zero
    probability is raised to the coder's smallest, 2^-24, so every symbol stays codable).
    Checked to decode back."""
    model = constriction.stream.model.Categorical(np.asarray(probabilities_K, np.float64), perfect=False)
    symbols = np.asarray(symbols_N, np.int32)
    coder = constriction.stream.stack.AnsCoder(np.array(START_WORDS, np.uint32))
    coder.encode_reverse(symbols, model)
    decoded = constriction.stream.stack.AnsCoder(coder.get_compressed()).decode(model, len(symbols))
    if not np.array_equal(decoded, symbols):
        raise AssertionError("the ANS stack did not decode back to the symbols")
    return coder.num_bits()


def image_code_lengths(workdir: str | Path, *, max_examples: int | None = None,
                       bins: LatentBins | None = None, epoch: int | None = None,
                       checkpoint: str = "best") -> dict[str, np.ndarray]:
    """Each test image's code on one stack with one image per block (per-image figures; a file
    codes blocks of many), in bits per image:

        code       the stack's growth while the image is coded: pixels + latents − bits_back
        bits_back  what the pop of z under q(z|x) took off the stack (0 for the first image,
                   coded without bits back)
        pixels     what pushing x under p(x|z) added; latents: what pushing z under p(z) added
        rate       latents − bits_back: what the code pays for z after the bits back, a
                   one-sample estimate of the KL term
        elbo, kl   the -ELBO at the coded latents (−log2 p(x|z) + the closed-form KL) and the KL
    """
    bins = bins or LatentBins()
    config, model, _ = trained.load_trained(workdir, epoch, checkpoint)
    family = codec.check_codable(config, model)
    images, _ = dataset.load_test_set(config.data)
    images = images[:max_examples] if max_examples else images
    scale = pixel_code.pixel_scale(images, family)
    symbols = pixel_code.to_symbols(images, scale)
    coded = bbans.encode(host_model(model, 1), symbols, bins)
    popped, between, end = coded.steps_bits_Bx3.T
    start = np.concatenate([[0], end[:-1]])
    bits_back = np.where(np.arange(len(end)) == 0, 0, start - popped)
    latents = end - between
    return {"code": end - start, "bits_back": bits_back, "pixels": between - popped, "latents": latents,
            "rate": latents - bits_back, "elbo": coded.elbo_bits_N, "kl": coded.kl_bits_N}
