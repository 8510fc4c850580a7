"""The ladder (vae/model/ladder.py): each layer's KL against Monte Carlo, L = 1 as a one-level VAE, a
16-layer model's gradients at initialisation, the IWAE bound below the ELBO, sampling with per-layer
temperatures, every likelihood, exact bits-back round trips over all layers, the config checks, a
short run end to end (metrics per layer, plots, evaluation, compression) and the CIFAR-10 config on
a folder of 32x32 colour images."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from configs import cifar10_ladder, ladder_8bit
from configs import ladder as ladder_config
from tests.conftest import run_in_process, tiny_config
from vae import kl
from vae.analysis import iwae, plotting
from vae.coding import bbans
from vae.coding.host_model import host_model
from vae.coding.latent_code import LatentBins
from vae.config import ConfigError, validate_config, validate_image_shape
from vae.data import dataset
from vae.model import build, ladder, objectives
from vae.train import evaluate, loop
from vae.workdir import files

IMAGE_SHAPE = (28, 28, 1)


def ladder_model(seed=0, noise=0.0, image_shape=IMAGE_SHAPE, **overrides):
    """A small ladder; with `noise`, every parameter perturbed (so that each q differs from its p and
    each p from N(0, I), which they equal at initialisation)."""
    fields = {"model__arch": "ladder", "model__num_layers": 3, "model__hidden_dims": (32,)} | overrides
    config = tiny_config(**fields)
    model = build.build_model(config.model, image_shape, jax.random.key(seed))
    if noise:
        graphdef, state = nnx.split(model)
        leaves, tree = jax.tree.flatten(state)
        keys = jax.random.split(jax.random.key(seed + 100), len(leaves))
        leaves = [leaf + noise * jax.random.normal(k, leaf.shape) for leaf, k in zip(leaves, keys)]
        model = nnx.merge(graphdef, jax.tree.unflatten(tree, leaves))
    return model, config


def jitted(function):
    """`function` compiled once: a model's calls are many small operations, slow one by one."""
    return jax.jit(function)


def binary_images(n, seed=1):
    return jax.random.bernoulli(jax.random.key(seed), 0.3, (n, 784)).astype(jnp.float32)


def posterior_draw(model, x, key):
    """Every layer's latents drawn from q one layer at a time through the public layer-by-layer
    functions, top first, with each layer's closed-form KL (z_1 first)."""
    upper, kls = [], []
    for k in jax.random.split(key, model.num_layers):
        mean, log_var = model.posterior_below(x, upper)
        prior = model.prior_below(upper) if upper else (jnp.zeros_like(mean), jnp.zeros_like(mean))
        kls.append(kl.gaussian_kl(mean, log_var, *prior))
        upper.append(kl.sample_gaussian(k, mean, log_var))
    return upper, jnp.stack(kls[::-1], axis=-1)


@pytest.mark.slow  # a Monte Carlo check of the closed forms, over many draws
def test_each_layers_kl_is_the_monte_carlo_kl_between_its_q_and_p():
    model, _ = ladder_model(noise=0.1, model__latent_dims=(5, 3, 2))
    x = binary_images(1)

    @jax.jit
    def by_monte_carlo(key):
        """Each layer's (Monte Carlo KL, its standard error, closed-form KL), top first: layer i
        given a posterior draw of the i layers above it."""
        upper, closed_1xL = posterior_draw(model, x, key)
        layers = []
        for i in range(model.num_layers):
            mean, log_var = model.posterior_below(x, upper[:i])
            prior = model.prior_below(upper[:i]) if i else (0.0, 0.0)
            estimate, std_error = kl.monte_carlo_kl(
                jax.random.key(10 + i), lambda k, n, m=mean, v=log_var: kl.sample_gaussian(k, m, v, n),
                lambda z, m=mean, v=log_var: kl.gaussian_log_density(z, m, v),
                lambda z, p=prior: kl.gaussian_log_density(z, *p), 20_000)
            layers.append((estimate[0], std_error[0], closed_1xL[0, model.num_layers - 1 - i]))  # z_1 first
        return layers

    for estimate, std_error, closed in by_monte_carlo(jax.random.key(3)):
        assert float(closed) > 0.05  # q differs from p: the check has something to check
        assert abs(float(estimate - closed)) < 4 * float(std_error) + 1e-4

    # elbo_terms's per-layer KLs are those closed forms at a posterior draw of the layers above:
    # their averages over many draws agree with the layer-by-layer ones (z_1 first in both).
    keys = jax.random.split(jax.random.key(4), 1500)
    from_terms = jax.jit(jax.vmap(lambda k: model.elbo_terms(x, k)["kl_per_layer"][0]))(keys)
    by_layer = jax.jit(jax.vmap(lambda k: posterior_draw(model, x, k)[1][0]))(keys)
    difference = from_terms.mean(0) - by_layer.mean(0)
    error = jnp.sqrt((from_terms.var(0) + by_layer.var(0)) / len(keys))
    assert bool(jnp.all(jnp.abs(difference) < 4 * error + 1e-4)), (difference, error)
    terms = jitted(model.elbo_terms)(binary_images(4), jax.random.key(5))
    np.testing.assert_allclose(terms["kl_per_layer"].sum(-1), terms["kl"], rtol=1e-5)
    np.testing.assert_allclose(terms["kl_per_dim"][:, :5].sum(-1), terms["kl_per_layer"][:, 0], rtol=1e-5)


def test_one_layer_is_a_one_level_vae():
    model, _ = ladder_model(noise=0.05, model__num_layers=1)
    x = binary_images(6)
    key = jax.random.key(7)
    mean, log_var = model.encode(x)
    terms = jitted(model.elbo_terms)(x, key)
    # The KL is KL(q(z|x) ‖ N(0, I)) in closed form; the reconstruction is decode(z) at z ~ q(z|x).
    np.testing.assert_allclose(terms["kl"], kl.gaussian_kl(mean, log_var, 0.0, 0.0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(terms["kl_per_layer"][:, 0], terms["kl"], rtol=1e-6)
    np.testing.assert_allclose(terms["mean"], mean, rtol=1e-5, atol=1e-6)
    z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(jax.random.split(key, 1)[0], mean.shape)
    np.testing.assert_allclose(terms["rec"], -model.likelihood.log_prob(model.decode(z), x), rtol=1e-5)
    np.testing.assert_allclose(model.reconstruct(x), model.decode(mean), rtol=1e-5, atol=1e-5)
    # The importance weights are log p(x|z) + log N(z; 0, I) − log q(z|x) at those draws.
    w = jitted(lambda x, key: model.log_weights(x, key, 3))(x, key)
    z_KxBxZ = mean + jnp.exp(0.5 * log_var) * jax.random.normal(jax.random.split(key, 1)[0], (3, *mean.shape))
    direct = (model.likelihood.log_prob(model.decode(z_KxBxZ.reshape(18, -1)).reshape(3, 6, -1), x)
              + kl.gaussian_log_density(z_KxBxZ, 0.0, 0.0) - kl.gaussian_log_density(z_KxBxZ, mean, log_var))
    np.testing.assert_allclose(w["log_lik"] + w["log_ratio"], direct, rtol=1e-5)


@pytest.mark.slow  # sixteen layers compile a large program; one to four layers are quick-tested
@pytest.mark.parametrize("arch", ["ladder", "conv_ladder"])
def test_sixteen_layers_start_at_their_priors_with_finite_gradients(arch):
    model, _ = ladder_model(model__arch=arch, model__num_layers=16, model__hidden_dims=(64, 64),
                            model__conv_channels=(4, 4), model__latent_channels=1)
    x = binary_images(8)
    graphdef, params = nnx.split(model, nnx.Param)
    loss = lambda p: objectives.elbo_loss(nnx.merge(graphdef, p), x, jax.random.key(2), 1.0)[0]

    @jax.jit  # one compile of the 16 layers for the three checks
    def at_initialisation(params):
        model = nnx.merge(graphdef, params)
        kl_per_layer = model.elbo_terms(x, jax.random.key(1))["kl_per_layer"]
        value, grads = jax.value_and_grad(loss)(params)
        norms = [jnp.linalg.norm(g) for g in jax.tree.leaves(grads)]
        return kl_per_layer, value, jnp.stack(norms), model.reconstruct(x)

    kl_per_layer, value, norms, out = at_initialisation(params)
    np.testing.assert_array_equal(kl_per_layer, 0.0)  # every q starts as its p
    assert math.isfinite(float(value)) and bool(jnp.all(jnp.isfinite(norms)))
    # The 1/sqrt(L) scaling keeps the decoder output from growing with depth: its logits stay
    # near the initial output layer's scale.
    assert float(jnp.std(out)) < 10.0


def test_the_iwae_bound_is_below_the_negative_elbo_and_the_fast_path_is_the_generic_one():
    model, _ = ladder_model(noise=0.05)
    x = binary_images(4)
    keys = jax.random.split(jax.random.key(8), 400)
    neg_elbo = jax.jit(jax.vmap(lambda k: model.elbo_terms(x, k)))(keys)
    neg_elbo = (neg_elbo["rec"] + neg_elbo["kl"]).mean(0)
    nll = -jax.jit(lambda k: objectives.iwae_log_likelihood(model, x, k, 400))(jax.random.key(9))
    assert bool(jnp.all(nll < neg_elbo - 0.1)), (nll, neg_elbo)
    sample_keys = objectives.sample_keys(jax.random.key(10), jnp.arange(4), jnp.arange(5))
    fast_and_generic = jitted(lambda keys: (model.iwae_log_weights(x, keys),
                                            objectives.log_weights_by_key(model, x, keys)))
    np.testing.assert_allclose(*fast_and_generic(sample_keys), rtol=2e-5)


def test_sampling_shapes_and_per_layer_temperatures():
    model, _ = ladder_model(noise=0.05, model__latent_dims=(5, 3, 2))
    sample = jitted(lambda key, temperature: model.sample(key, 2, temperature))
    assert model.sample(jax.random.key(0), 7).shape == (7, 784)
    assert model.latent_dims == (5, 3, 2) and model.latent_dim == 2
    # Temperature 0: the prior means all the way down, from the top (N(0, I): 0) to z_1.
    def prior_means():
        upper = [jnp.zeros((2, 2))]
        while len(upper) < model.num_layers:
            upper.append(model.prior_below(upper)[0])
        return model.decode_layers(upper)

    cold = jitted(prior_means)()
    np.testing.assert_allclose(sample(jax.random.key(1), 0.0), cold, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sample(jax.random.key(1), [0.0, 0.0, 0.0]), cold, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jitted(model.decode)(jnp.zeros((2, 2))), cold, rtol=1e-5, atol=1e-5)
    # One temperature per layer, z_1 first: only the warm layers vary.
    top_only = sample(jax.random.key(1), [0.0, 0.0, 1.0])
    bottom_only = sample(jax.random.key(1), [1.0, 0.0, 0.0])
    assert not np.allclose(top_only, cold) and not np.allclose(bottom_only, cold)
    assert not np.allclose(top_only, bottom_only)
    with pytest.raises(ValueError, match="3 latent layers"):
        model.sample(jax.random.key(1), 2, [1.0, 1.0])


def test_a_layer_whose_posterior_is_its_prior_has_no_active_units():
    model, config = ladder_model(noise=0.1)
    bottom = model.blocks[-1].posterior_head.out  # z_1's head: a = b = 0, so q(z_1 | x, z_>1) = p(z_1 | z_>1)
    bottom.kernel[...] = jnp.zeros_like(bottom.kernel[...])
    bottom.bias[...] = jnp.zeros_like(bottom.bias[...])
    prior = model.blocks[-1].prior_head.out  # p(z_1 | z_>1)'s mean: 5 times as sensitive to the layers above
    prior.kernel[...] = prior.kernel[...].at[:, :4].multiply(5.0)
    x = binary_images(256)
    terms = jitted(model.elbo_terms)(x, jax.random.key(3))
    sizes = build.latent_sizes(config.model, IMAGE_SHAPE)
    summary = evaluate.summarize_eval(terms, 256, 784, 0.01, layer_sizes=sizes)
    np.testing.assert_array_equal(terms["kl_per_layer"][:, 0], 0.0)  # q = p exactly: no KL
    assert summary["test/active_units_per_layer"] == [0, 4, 4]
    np.testing.assert_array_equal(terms["mean"][:, :sizes[0]], 0.0)
    # The posterior mean itself (what was measured before) moves with x through the prior: by
    # Burda et al.'s Cov_x(E_q[z_1 | x, z_>1]) every unit of z_1 would count as active.
    posterior_mean_1 = jitted(lambda x: model.posterior_below(x, [model.encode(x)[0], model.posterior_below(
        x, [model.encode(x)[0]])[0]])[0])(x)
    assert int(np.sum(np.var(np.asarray(posterior_mean_1, np.float64), axis=0) > 0.01)) == sizes[0]
    # The top layer's measure is Burda et al.'s: its posterior mean (its prior is N(0, I)).
    np.testing.assert_allclose(terms["mean"][:, -sizes[-1]:], model.encode(x)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch, likelihood", [
    ("ladder", "bernoulli"), ("ladder", "logistic_mixture"), ("ladder", "categorical"),
    # the conv ladder slow (quick: its interface and shapes in tests/test_models.py)
    *(pytest.param("conv_ladder", likelihood, marks=pytest.mark.slow)
      for likelihood in ("logistic_mixture", "bernoulli", "categorical"))])
def test_every_likelihood(arch, likelihood):
    model, config = ladder_model(noise=0.02, model__arch=arch, model__likelihood=likelihood,
                                 model__mixture_components=2, model__conv_channels=(4, 4),
                                 model__latent_channels=1)
    x = binary_images(3) if likelihood == "bernoulli" else jnp.round(
        jax.random.uniform(jax.random.key(2), (3, 784)) * 255) / 255
    keys = objectives.sample_keys(jax.random.key(5), jnp.arange(3), jnp.arange(2))

    def outputs(x, key, keys):
        pixels = model.likelihood.mean(model.sample(key, 2))
        return (model.elbo_terms(x, key), pixels, model.iwae_log_weights(x, keys),
                objectives.log_weights_by_key(model, x, keys))

    terms, pixels, fast, generic = jitted(outputs)(x, jax.random.key(3), keys)
    sizes = build.latent_sizes(config.model, IMAGE_SHAPE)
    assert terms["kl_per_layer"].shape == (3, 3) and terms["mean"].shape == (3, sum(sizes))
    assert all(bool(jnp.all(jnp.isfinite(t))) for t in terms.values())
    assert pixels.shape == (2, 784) and bool(jnp.all((pixels >= 0) & (pixels <= 1)))
    np.testing.assert_allclose(fast, generic, rtol=2e-5)


@pytest.mark.parametrize("arch, merge", [("ladder", "residual"), ("ladder", "precision"),
                                         pytest.param("conv_ladder", "residual", marks=pytest.mark.slow)])
def test_bits_back_round_trip_over_four_layers_is_exact(arch, merge):
    model, _ = ladder_model(noise=0.05, model__arch=arch, model__num_layers=4, model__ladder_merge=merge,
                            model__latent_dims=(6, 4, 3, 2) if arch == "ladder" else (),
                            model__conv_channels=(2, 2), model__latent_channels=1)
    assert model.latent_dims == ((6, 4, 3, 2) if arch == "ladder" else (196, 196, 49, 49))
    rng = np.random.default_rng(0)
    symbols = (rng.uniform(size=(30, 784)) < rng.uniform(0.05, 0.6, size=(30, 1))).astype(np.int32)
    bins = LatentBins()
    host = host_model(model, 8)
    assert host.num_layers == 4 and host.layer_sizes == model.latent_dims[::-1]
    coded = bbans.encode(host, symbols, bins, "bernoulli")
    decoded, left = bbans.decode(host_model(model, 8), coded.words, len(symbols), coded.ramp, bins,
                                 "bernoulli")
    np.testing.assert_array_equal(decoded, symbols)
    assert left.size == 0  # the stack ends where it began
    # After the first image (coded without bits back) the stream costs the images' one-sample ELBO.
    # (The conv ladder's 490 latent units need about 6 bits each on the stack before an image can
    # pop them; 30 images do not get there: docs/ladder.md.)
    if arch == "ladder":
        coded_bits = 32 * len(coded.words) - coded.first_image_bits
        assert abs(coded_bits / coded.elbo_bits_N[1:].sum() - 1) < 0.02


def test_the_hvae_reports_its_two_layers():
    config = tiny_config(model__arch="hvae")
    model = build.build_model(config.model, IMAGE_SHAPE, jax.random.key(0))
    terms = jitted(model.elbo_terms)(binary_images(3), jax.random.key(1))
    z = config.model.latent_dim
    np.testing.assert_allclose(terms["kl_per_layer"][:, 0], terms["kl_per_dim"][:, :z].sum(-1), rtol=1e-5)
    np.testing.assert_allclose(terms["kl_per_layer"].sum(-1), terms["kl"], rtol=1e-5)
    assert model.latent_dims == (z, z) == build.latent_sizes(config.model, IMAGE_SHAPE)


@pytest.mark.parametrize("override, message", [
    ({"model__num_layers": 0}, "model.num_layers must be an integer >= 1"),
    ({"model__latent_dims": (4, 4)}, "one size >= 1 per latent layer (model.num_layers=3)"),
    ({"model__ladder_merge": "sum"}, "model.ladder_merge must be one of"),
    ({"model__bottleneck": 0.0}, "model.bottleneck must be a number in (0, 4]"),
    ({"model__arch": "conv_ladder", "model__latent_dims": (4, 4, 4)}, "set model.latent_dims=()"),
    ({"model__arch": "conv_ladder", "model__num_layers": 1}, "at least one latent layer at each of its 2"),
])
def test_bad_ladder_fields_are_refused_in_one_line(override, message):
    config = tiny_config(**({"model__arch": "ladder", "model__num_layers": 3} | override))
    with pytest.raises(ConfigError) as refused:
        validate_config(config, 1)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_the_configs_are_valid_and_sized_as_documented():
    for module in (ladder_config, ladder_8bit, cifar10_ladder):
        validate_config(module.get_config(), 1)
    config = cifar10_ladder.get_config()
    validate_image_shape(config, (32, 32, 3))
    sizes = (16 * 16 * 16,) * 5 + (8 * 8 * 16,) * 5 + (4 * 4 * 16,) * 6  # 5, 5 and 6 layers, finest first
    assert build.latent_sizes(config.model, (32, 32, 3)) == sizes


@pytest.fixture(scope="module")
def ladder_run(tmp_path_factory, fashion_mnist):
    """A 2-epoch run of a 3-layer ladder on a slice of Fashion-MNIST, with a validation split."""
    path = tmp_path_factory.mktemp("ladder_run")
    config = tiny_config(model__arch="ladder", model__num_layers=3, model__latent_dims=(4, 3, 2),
                         model__hidden_dims=(32,), data__train_split="train[:512]",
                         data__validation_split="train[512:640]", data__test_split="test[:64]",
                         eval__batch_size=64, eval__kl_split_examples=64)
    history = loop.train_and_evaluate(config, path, progress=False)
    return path, history


@pytest.mark.slow  # a training of its own; the per-layer records' keys are quick-tested on the HVAE
def test_a_short_run_records_where_the_bits_go(ladder_run, tmp_path):
    path, history = ladder_run
    last = history[-1]
    assert last["epoch"] == 2
    for split in ("test", "val"):
        per_layer = last[f"{split}/kl_per_layer"]
        assert len(per_layer) == 3 and abs(sum(per_layer) - last[f"{split}/kl"]) < 1e-3
        units = last[f"{split}/active_units_per_layer"]
        assert len(units) == 3 and sum(units) == last[f"{split}/active_units"]
        assert all(0 <= u <= size for u, size in zip(units, (4, 3, 2)))
    written = [json.loads(line) for line in (path / files.METRICS_FILE).read_text().splitlines()]
    assert [r["test/kl_per_layer"] for r in written if r["epoch"] == 2][-1] == last["test/kl_per_layer"]
    result = run_in_process("plot_kl.py", "--workdir", path, "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "kl_per_layer.png").stat().st_size > 10_000
    evaluation = iwae.evaluate_workdir(path, 8, max_examples=16, progress=False)
    assert len(evaluation["test/kl_per_layer"]) == 3 and len(evaluation["test/active_units_per_layer"]) == 3
    assert evaluation["test/nll"] <= evaluation["test/elbo"] + 1.0


@pytest.mark.slow  # the trained ladder's file; its bits-back round trip is quick-tested above
def test_a_short_run_compresses_and_decompresses_exactly(ladder_run, tmp_path):
    """scripts/compress.py and decompress.py with a ladder's workdir: bits-back over its three layers."""
    path, _ = ladder_run
    coded, out = tmp_path / "test.bbans", tmp_path / "test.npy"
    result = run_in_process("compress.py", "--workdir", path, "--out", coded, "--max-examples", 40,
                            "--block_size", 8, "--no-progress")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["images"] == 40 and abs(figures["overhead_vs_elbo"]) < 0.1
    result = run_in_process("decompress.py", "--workdir", path, coded, "--out", out, "--no-progress")
    assert result.returncode == 0, result.stderr
    expected, _ = dataset.load_test_set(files.read_config(path).data)
    np.testing.assert_array_equal(np.load(out), expected[:40])


def test_the_per_layer_plot_stacks_the_layers():
    records = [{"epoch": e, "test/kl": 6.0, "test/kl_per_layer": [1.0, 2.0, 3.0],
                "test/active_units_per_layer": [1, 2, 3]} for e in (1, 2, 3)]
    fig = plotting.plot_kl_per_layer({"a": records, "one layer": [{"epoch": 1, "test/kl": 2.0}]})
    stack_ax, bar_ax = fig.axes[:2]
    assert len(fig.axes) == 2  # the run without layers has no row
    assert [t.get_text() for t in bar_ax.get_xticklabels()] == ["z_1", "z_2", "z_3"]
    assert [p.get_height() for p in bar_ax.patches] == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="no run has a KL per layer"):
        plotting.plot_kl_per_layer({"one layer": [{"epoch": 1, "test/kl": 2.0}]})


# Slow, both: the conv ladder's training with a logistic mixture is quick-tested in test_every_likelihood,
# colour folders in tests/test_eight_bit.py; here the config file itself (a 40-second compile at 3 layers).
@pytest.mark.slow
@pytest.mark.parametrize("num_layers", [3, cifar10_ladder.NUM_LAYERS])
def test_the_cifar10_config_trains_a_step_on_a_folder_of_32x32_colour_images(tmp_path, num_layers):
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(24):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(images / f"{i:02d}.png")
    config = cifar10_ladder.get_config()
    config.data.name = f"folder:{images}"
    config.data.train_split, config.data.validation_split, config.data.test_split = "train", "", "test"
    config.data.folder_test_fraction = 0.25
    config.train.batch_size, config.train.num_epochs = 8, 1
    config.eval.batch_size, config.eval.kl_split_examples = 4, 0
    # The config's architecture at a sixteenth of its widths: the same resolutions, and its number of
    # layers (slow: compiling 16 conv layers on a CPU takes minutes) or one per resolution.
    config.model.conv_channels = tuple(c // 16 for c in config.model.conv_channels)
    config.model.num_layers = num_layers
    history = loop.train_and_evaluate(config, tmp_path / "run", progress=False, devices=jax.devices()[:1])
    last = history[-1]
    assert len(last["test/kl_per_layer"]) == num_layers
    assert last["step"] >= 1 and math.isfinite(last["train/elbo"]) and math.isfinite(last["test/elbo"])


def test_merges_start_q_at_or_near_p():
    p_mean, p_log_var = jnp.array([0.3, -1.0]), jnp.array([0.0, -2.0])
    zeros = jnp.zeros(2)
    np.testing.assert_array_equal(jnp.stack(ladder.merge("residual", p_mean, p_log_var, zeros, zeros)),
                                  jnp.stack([p_mean, p_log_var]))
    mean, log_var = ladder.merge("precision", p_mean, p_log_var, zeros, zeros)
    # The product of N(p_mean, σ_p²) and N(0, e^4): precisions add, means weighted by precision.
    precision = jnp.exp(-p_log_var) + math.exp(-ladder.BOTTOM_UP_LOG_VAR_START)
    np.testing.assert_allclose(log_var, -jnp.log(precision), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mean, p_mean * jnp.exp(-p_log_var) / precision, rtol=1e-5, atol=1e-6)
    assert float(jnp.max(jnp.abs(mean - p_mean))) < 0.02


@pytest.mark.slow  # a minute: a notebook kernel; the per-layer plot it shows is quick-tested above
def test_the_analysis_notebook_shows_a_ladders_layers(ladder_run):
    from tests.test_notebooks import execute, images, outputs

    path, _ = ladder_run
    notebook = execute("analyze_run.ipynb", {"VAE_WORKDIR": str(path), "VAE_IW_SAMPLES": "10",
                                             "VAE_IW_EXAMPLES": "32", "XLA_FLAGS": "",
                                             "TF_CPP_MIN_LOG_LEVEL": "3"})
    text = outputs(notebook)
    assert all(f"z_{layer}: KL" in text for layer in (1, 2, 3)) and "units active" in text
    assert images(notebook) >= 7  # the tiny run's five, the per-layer panel, the layers' samples
