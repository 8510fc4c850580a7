"""Decoder stages (`model.decoder_stages`, vae/model/stages.py): p(x|z) = Π_s p(x_s | x_<s, z) over
the image's 2x2 sub-grids, for every likelihood and architecture; teacher forcing against stage-by-
stage evaluation, stage-by-stage sampling, the config's refusals, and a tiny training run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.conftest import tiny_config
from vae.analysis import iwae, sampling
from vae.coding import bbans, codec
from vae.coding.host_model import host_model
from vae.coding.latent_code import LatentBins
from vae.config import ConfigError, validate_config
from vae.model import build, stages
from vae.train import loop, trained
from vae.workdir import files

SHAPE = (8, 12, 1)  # small images keep the tests quick; even sides, multiples of 4 for the conv models
D = 8 * 12


def model_of(likelihood: str, arch: str, num_stages: int, seed: int = 0):
    """A small model with random stage heads (their last layer starts at zero: made non-zero here,
    so that the heads change what they read)."""
    config = tiny_config(model__arch=arch, model__likelihood=likelihood, model__decoder_stages=num_stages,
                         model__mixture_components=2, model__conv_channels=(4, 8), model__num_layers=2)
    model = build.build_model(config.model, SHAPE, jax.random.key(seed))
    if num_stages > 1:
        for i, head in enumerate(model.likelihood.heads):
            kernel = head.write.kernel
            kernel[...] = 0.3 * jax.random.normal(jax.random.key(100 + i), kernel.shape)
    return model


def images(likelihood: str, n: int = 3, seed: int = 1) -> jax.Array:
    """n flat images in the likelihood's pixel values (0/1, or level / 255)."""
    u = jax.random.uniform(jax.random.key(seed), (n, D))
    return (u > 0.5).astype(jnp.float32) if likelihood == "bernoulli" else jnp.round(u * 255) / 255


LIKELIHOODS = ("bernoulli", "logistic_mixture", "categorical")


@nnx.jit
def draw_and_mean(model, key, out):
    """The likelihood's stage-by-stage draw and mean picture of decoder outputs, compiled once per model."""
    return model.likelihood.sample(key, out), model.likelihood.mean(out)


def test_the_stages_split_the_2x2_sub_grids():
    rows, cols = np.meshgrid(np.arange(6), np.arange(8), indexing="ij")
    checkerboard = stages.stage_of_subpixel(2, (6, 8, 1)).reshape(6, 8)
    np.testing.assert_array_equal(checkerboard, (rows + cols) % 2)
    four = stages.stage_of_subpixel(4, (6, 8, 3)).reshape(6, 8, 3)
    np.testing.assert_array_equal(four, np.repeat((2 * (rows % 2) + cols % 2)[..., None], 3, axis=-1))
    np.testing.assert_array_equal(stages.stage_of_subpixel(1, (6, 8, 1)), 0)
    x = jax.random.normal(jax.random.key(0), (2, 6, 8, 3))
    blocks = stages.space_to_depth(x)
    assert blocks.shape == (2, 3, 4, 12)
    np.testing.assert_array_equal(blocks[:, :, :, 3:6], x[:, 0::2, 1::2])  # sub-grid 1: even rows, odd cols
    np.testing.assert_array_equal(stages.depth_to_space(blocks), x)


def test_patches_make_a_3x3_convolution():
    x = jax.random.normal(jax.random.key(0), (2, 5, 6, 3))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
    expected = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(stages.patches_3x3(x) @ kernel.reshape(-1, 4), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
# The hierarchy's cases are slow (make test-slow): the mlp's cover the stages' code, which wraps any
# decoder's output in one place; the hierarchy's decoder is checked quickly by the ladder's case below.
@pytest.mark.parametrize("arch", ["mlp", pytest.param("hvae", marks=pytest.mark.slow)])
@pytest.mark.parametrize("num_stages", [2, 4])
def test_teacher_forcing_is_the_sum_of_the_stages(likelihood, arch, num_stages):
    model = model_of(likelihood, arch, num_stages)
    x = images(likelihood)
    out = model.reconstruct(x)
    assert out.shape == (3, D * model.likelihood.outputs_per_pixel)
    log_p = model.likelihood.log_prob(out, x)
    per_stage = model.likelihood.stage_log_probs(out, x)
    assert log_p.shape == (3,) and per_stage.shape == (3, num_stages)
    np.testing.assert_allclose(log_p, per_stage.sum(-1), rtol=2e-6)
    # and the stages are not the factorised likelihood's: the heads change what they score
    assert np.all(np.abs(log_p - model.likelihood.base.log_prob(out, x)) > 1e-2)
    # the IWAE loop's form, K x B rows against the images broadcast
    out_KxBxP = jnp.stack([out, out[::-1]])
    grouped = model.likelihood.log_prob_grouped(out_KxBxP, x[None])
    np.testing.assert_allclose(grouped[0], log_p, rtol=2e-5)
    np.testing.assert_allclose(model.likelihood.log_prob(out_KxBxP, x[None]), grouped, rtol=2e-5)
    terms = model.elbo_terms(x, jax.random.key(3))
    assert terms["rec"].shape == (3,) and np.all(np.isfinite(terms["rec"]))


# conv_hvae and conv_ladder are slow (make test-slow): conv and ladder cover their decoders' kinds.
@pytest.mark.parametrize("arch", ["conv", pytest.param("conv_hvae", marks=pytest.mark.slow), "ladder",
                                  pytest.param("conv_ladder", marks=pytest.mark.slow)])
def test_every_architecture_decodes_in_stages(arch):
    model = model_of("bernoulli", arch, 4)
    x = images("bernoulli")
    out = model.reconstruct(x)
    np.testing.assert_allclose(model.likelihood.log_prob(out, x),
                               model.likelihood.stage_log_probs(out, x).sum(-1), rtol=2e-6)
    weights = model.iwae_log_weights(x, jax.random.split(jax.random.key(0), 6).reshape(2, 3))
    assert weights.shape == (2, 3) and np.all(np.isfinite(weights))


@pytest.mark.parametrize("num_stages", [2, 4])
def test_a_stage_reads_only_the_pixels_of_earlier_stages(num_stages):
    model = model_of("bernoulli", "mlp", num_stages)
    x = images("bernoulli")
    out = model.reconstruct(x)
    stage_P = stages.stage_of_subpixel(num_stages, SHAPE)
    params = model.likelihood.parameters(out, x)
    np.testing.assert_array_equal(params[:, stage_P == 0], out[:, stage_P == 0])  # stage 1 sees z alone
    for stage in range(num_stages):
        flipped = jnp.where(stage_P >= stage, 1.0 - x, x)
        changed = model.likelihood.parameters(out, flipped)
        np.testing.assert_array_equal(changed[:, stage_P <= stage], params[:, stage_P <= stage])
        if stage + 1 < num_stages:  # the next stage does read them
            assert np.all(np.abs(changed - params)[:, stage_P == stage + 1].max(-1) > 1e-3)


def test_an_untrained_staged_model_is_the_factorised_one():
    factorised, staged = model_of("logistic_mixture", "hvae", 1), build.build_model(
        tiny_config(model__arch="hvae", model__likelihood="logistic_mixture", model__decoder_stages=4,
                    model__mixture_components=2).model, SHAPE, jax.random.key(0))
    x = images("logistic_mixture")
    out = factorised.reconstruct(x)
    np.testing.assert_array_equal(staged.reconstruct(x), out)
    np.testing.assert_array_equal(staged.likelihood.log_prob(out, x), factorised.likelihood.log_prob(out, x))
    np.testing.assert_array_equal(staged.likelihood.mean(out), factorised.likelihood.mean(out))


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_sampling_is_deterministic_and_stage_by_stage(likelihood):
    num_stages = 4
    model = model_of(likelihood, "mlp", num_stages)
    out = model.sample(jax.random.key(5), 6)
    key = jax.random.key(7)
    drawn, means = draw_and_mean(model, key, out)
    assert drawn.shape == means.shape == (6, D)
    np.testing.assert_array_equal(draw_and_mean(model, key, out)[0], drawn)
    assert not np.array_equal(draw_and_mean(model, jax.random.key(8), out)[0], drawn)
    stage_D = stages.stage_of_subpixel(num_stages, SHAPE)
    first = model.likelihood.base.sample(jax.random.split(key, num_stages)[0], out)
    np.testing.assert_array_equal(drawn[:, stage_D == 0], first[:, stage_D == 0])  # stage 1: z alone
    for i, head in enumerate(model.likelihood.heads):  # head i decodes stage i + 1
        kernel = head.write.kernel
        kernel[...] = kernel[...] + jax.random.normal(jax.random.key(200 + i), kernel.shape)
        stage = i + 1
        redrawn, remeans = draw_and_mean(model, key, out)
        np.testing.assert_array_equal(redrawn[:, stage_D < stage], drawn[:, stage_D < stage])
        np.testing.assert_array_equal(remeans[:, stage_D < stage], means[:, stage_D < stage])
        assert not np.array_equal(redrawn[:, stage_D == stage], drawn[:, stage_D == stage])
        assert np.abs(remeans - means)[:, stage_D == stage].max() > 1e-3
        drawn, means = redrawn, remeans


def test_the_config_refuses_what_the_stages_cannot_do():
    refusal = r"model.decoder_stages must be one of \(1, 2, 4\), got 3"
    with pytest.raises(ConfigError, match=refusal):
        validate_config(tiny_config(model__decoder_stages=3), 1)
    validate_config(tiny_config(model__decoder_stages=4), 1)
    config = tiny_config(model__decoder_stages=2)
    assert "height and width must be even; the images are 27x28" in build.image_shape_problem(config.model,
                                                                                               (27, 28, 1))
    assert build.image_shape_problem(config.model, SHAPE) is None


def test_an_old_config_without_the_field_reads_as_one_stage():
    assert files._ADDED_FIELDS["model.decoder_stages"] == 1
    config = tiny_config()
    del config.model["decoder_stages"]
    model = build.build_model(config.model, SHAPE, jax.random.key(0))
    assert not isinstance(model.likelihood, stages.StagedLikelihood)


def test_a_tiny_staged_run_trains_evaluates_and_samples(tmp_path, fashion_mnist):
    config = tiny_config(model__decoder_stages=4, data__train_split="train[:512]",
                         data__test_split="test[:128]")
    records = loop.train_and_evaluate(config, tmp_path, progress=False)
    assert records[-1]["test/elbo"] < records[0]["test/elbo"] < 600
    _, model, _ = trained.load_trained(tmp_path)
    assert isinstance(model.likelihood, stages.StagedLikelihood) and model.likelihood.stages == 4
    assert all(np.abs(head.write.kernel[...]).max() > 0 for head in model.likelihood.heads)  # they learnt
    test_u8 = np.asarray(jax.random.bernoulli(jax.random.key(0), 0.3, (8, 28, 28, 1)), np.uint8) * 255
    log_px = iwae.iwae_log_likelihoods(model, test_u8, jax.random.key(1), 4, progress=False)
    assert log_px.shape == (8,) and np.all(np.isfinite(log_px))
    pictures = sampling.prior_samples(model, jax.random.key(2), 5, draw_key=jax.random.key(3))
    assert pictures.shape == (5, 28, 28, 1) and set(np.unique(pictures)) <= {0.0, 1.0}
    np.testing.assert_array_equal(
        sampling.prior_samples(model, jax.random.key(2), 5, draw_key=jax.random.key(3)), pictures)


def symbols_of(likelihood: str, n: int, seed: int = 1) -> np.ndarray:
    """n images' symbols (0/1, or the levels 0..255) with local structure the heads can read."""
    x = np.asarray(images(likelihood, n, seed))
    return (x * (1 if likelihood == "bernoulli" else 255)).round().astype(np.int32)


@pytest.mark.parametrize("likelihood, num_stages", [("bernoulli", 4), ("logistic_mixture", 2),
                                                     ("logistic_mixture", 4), ("categorical", 4)])
def test_a_staged_decoder_codes_losslessly_at_its_own_likelihood(likelihood, num_stages):
    """Bits-back coding of a staged p(x|z): the pixels pushed stage by stage with the heads on the
    earlier stages' true pixels, popped stage by stage with the heads run on what was popped; the
    images come back exactly, and the pixels' bits are the staged −log2 p(x|z) (not the factorised
    one's: the heads change them)."""
    model = model_of(likelihood, "mlp", num_stages)
    symbols = symbols_of(likelihood, 9)
    host = host_model(model, 4)
    assert host.num_stages == num_stages
    coded = bbans.encode(host, symbols, LatentBins(), bottom=7)
    decoded, left = bbans.decode(host, coded.words, len(symbols), coded.ramp, LatentBins())
    np.testing.assert_array_equal(decoded, symbols)
    assert left.tolist() == [7]
    # the first image's pixel bits, at the bins of q's means, against the staged likelihood there
    block = bbans._Block(host, LatentBins())
    mean, _ = host.posterior(0, symbols[:1], [])
    z = block.bins.values(block.bins.nearest(mean))
    out = np.asarray(model.decode(jnp.asarray(z, jnp.float32)))
    x = jnp.asarray(symbols[:1] / (1.0 if likelihood == "bernoulli" else 255.0), jnp.float32)
    staged_bits = -float(model.likelihood.log_prob(out, x)[0]) / np.log(2)
    factorised_bits = -float(model.likelihood.base.log_prob(out, x)[0]) / np.log(2)
    assert abs(coded.pixel_bits_N[0] - staged_bits) < 1e-3 * staged_bits + 0.05
    assert abs(staged_bits - factorised_bits) > 1.0


def test_a_staged_decoder_codes_photos_of_any_size(tmp_path):
    """Tiles with copies at their edges: the heads read a copy as 0 on both sides (its source may
    be in a later stage), so odd-sized images come back exactly through the codec's files."""
    model = model_of("logistic_mixture", "mlp", 4)
    config = tiny_config(model__likelihood="logistic_mixture", model__decoder_stages=4,
                         model__mixture_components=2, data__binarize="none")
    loaded = codec.Loaded(tmp_path, config, model, 0, "logistic_mixture", codec.model_hash(config, model))
    rng = np.random.default_rng(0)
    photos = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(13, 29, 1), (8, 12, 1), (5, 7, 1)]]
    data, _ = codec.compress(loaded, photos, block_size=4, progress=False)
    back, _ = codec.decode(codec.open_loaded(loaded, data, "the photos"), progress=False)
    for photo, decoded in zip(photos, back):
        np.testing.assert_array_equal(decoded.reshape(photo.shape), photo)
