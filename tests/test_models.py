"""Models: shapes and finiteness of every architecture and prior, the reparameterisation, gated
layers, the output-bias initialisation, parameter counts and determinism."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.conftest import tiny_config
from vae.model import build, networks
from vae.train import evaluate

IMAGE_SHAPE = (28, 28, 1)
VARIANTS = [(arch, prior) for arch in build.ARCHS for prior in ("standard_normal", "vampprior")]


def make_model(arch="mlp", prior="standard_normal", **overrides):
    overrides = {"model__num_layers": 3} | overrides  # the ladders: 3 latent layers
    config = tiny_config(model__arch=arch, model__prior=prior, model__num_pseudo_inputs=7, **overrides)
    return build.build_model(config.model, IMAGE_SHAPE, jax.random.key(0)), config


def model_shapes(model_config, **fields):
    """The model `model_config` (with `fields` changed) describes, its parameters' shapes only:
    traced, never initialised (initialising runs every initialiser as a program of its own)."""
    model_config = model_config.copy_and_resolve_references()
    for name, value in fields.items():
        model_config[name] = value
    return nnx.eval_shape(lambda: build.build_model(model_config, IMAGE_SHAPE, jax.random.key(0)))


def parameter_count(model) -> int:
    return sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def binary_images(n, seed=1):
    return jax.random.bernoulli(jax.random.key(seed), 0.3, (n, 784)).astype(jnp.float32)


def interface_outputs(model, x):
    """What every method of the model's interface returns for x, computed in one compiled
    program (called op by op, they compile a hundred small programs)."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def outputs(state, x):
        m = nnx.merge(graphdef, state)
        return {"encode": m.encode(x), "terms": m.elbo_terms(x, jax.random.key(2)),
                "log_weights": m.log_weights(x, jax.random.key(3), 6), "decode": m.decode(m.encode(x)[0]),
                "reconstruct": m.reconstruct(x), "reconstruct_drawn": m.reconstruct(x, jax.random.key(4)),
                "sample": m.sample(jax.random.key(5), 7)}

    return outputs(state, x)


@pytest.mark.parametrize("arch,prior", VARIANTS)
def test_every_model_has_the_interface_with_the_right_shapes(arch, prior):
    model, config = make_model(arch, prior)
    z_dim = model.latent_dim  # the top layer's
    x = binary_images(5)
    out = interface_outputs(model, x)
    mean, log_var = out["encode"]
    assert mean.shape == log_var.shape == (5, z_dim)
    terms = out["terms"]
    assert terms["rec"].shape == terms["kl"].shape == (5,)
    code_units = sum(build.latent_sizes(config.model, IMAGE_SHAPE))  # z_1's units first, the top's last
    assert sum(model.latent_dims) == code_units and model.latent_dims[-1] == z_dim
    assert z_dim == config.model.latent_dim or arch == "conv_ladder"  # its layers are maps
    assert terms["mean"].shape == (5, code_units)
    if prior == "standard_normal":
        assert terms["kl_per_dim"].shape == (5, code_units)
        np.testing.assert_allclose(terms["kl_per_dim"].sum(-1), terms["kl"], rtol=1e-5)
        assert bool(jnp.all(terms["kl"] >= 0))
    else:
        assert "kl_per_dim" not in terms  # the mixture prior does not factorise
    w = out["log_weights"]
    assert w["log_lik"].shape == w["log_ratio"].shape == (6, 5)
    assert bool(jnp.all(w["log_lik"] <= 0))  # a Bernoulli log-likelihood
    assert out["decode"].shape == (5, 784)
    assert out["reconstruct"].shape == out["reconstruct_drawn"].shape == (5, 784)
    assert out["sample"].shape == (7, 784)
    assert model.image_shape == IMAGE_SHAPE
    for array in (*terms.values(), *w.values()):
        assert bool(jnp.all(jnp.isfinite(array)))


def test_reparameterised_sample_is_mean_plus_scaled_noise():
    model, _ = make_model()
    x = jnp.ones((3, 784)) * 0.5
    key = jax.random.key(4)
    _, mean, log_var, z = model(x, key)
    eps = jax.random.normal(key, mean.shape)
    np.testing.assert_allclose(z, mean + jnp.exp(0.5 * log_var) * eps, rtol=1e-6)


def test_elbo_terms_are_the_bernoulli_nll_and_the_closed_form_kl():
    model, _ = make_model()
    x, key = binary_images(4), jax.random.key(6)
    logits, mean, log_var, _ = model(x, key)
    terms = model.elbo_terms(x, key)
    p = jax.nn.sigmoid(logits)
    rec = -jnp.sum(x * jnp.log(p) + (1 - x) * jnp.log1p(-p), axis=-1)
    kl = 0.5 * jnp.sum(mean**2 + jnp.exp(log_var) - 1 - log_var, axis=-1)
    np.testing.assert_allclose(terms["rec"], rec, rtol=1e-4)
    np.testing.assert_allclose(terms["kl"], kl, rtol=1e-4)


def test_gradients_flow_through_the_sample():
    model, _ = make_model()
    x = jnp.ones((2, 784)) * 0.5
    graphdef, params = nnx.split(model)
    grads = jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p)(x, jax.random.key(0))[3]))(params)
    encoder_grad = grads["encoder"]["head"]["linear"]["kernel"][...]
    assert float(jnp.abs(encoder_grad).sum()) > 0


def test_gated_dense_is_a_linear_map_times_a_sigmoid_gate():
    layer = networks.GatedDense(3, 2, kernel_init=nnx.initializers.he_normal(), rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (4, 3))
    w, b = layer.linear.kernel[...], layer.linear.bias[...]
    h, g = x @ w[:, :2] + b[:2], x @ w[:, 2:] + b[2:]
    np.testing.assert_allclose(layer(x), h / (1 + np.exp(-g)), rtol=1e-5)


def test_log_variances_are_clipped():
    model, _ = make_model(model__log_var_clip=(-6.0, 2.0))
    head = model.encoder.head
    head.linear.bias[...] = jnp.full_like(head.linear.bias[...], 50.0)  # pushes every output up
    _, log_var = model.encode(binary_images(3))
    np.testing.assert_array_equal(log_var, 2.0)


@pytest.mark.parametrize("arch", ["mlp", "hvae", "conv", "conv_hvae", "ladder", "conv_ladder"])
def test_output_bias_starts_at_the_logits_of_the_pixel_means(arch):
    config = tiny_config(model__arch=arch, model__init_output_bias=True)
    means = np.linspace(0.0, 1.0, 784)
    model = build.build_model(config.model, IMAGE_SHAPE, jax.random.key(0), pixel_means=means)
    bias = np.asarray(model.output_bias[...])
    p = np.clip(means, 1e-3, 1 - 1e-3)
    if arch.startswith("conv"):  # per channel of the last convolution: the mean intensity
        np.testing.assert_allclose(bias, math.log(0.5 / 0.5), atol=1e-6)
    else:
        np.testing.assert_allclose(bias, np.log(p / (1 - p)), rtol=1e-4, atol=1e-5)


def test_same_key_same_model_and_samples():
    a, _ = make_model()
    b, _ = make_model()
    np.testing.assert_array_equal(a.sample(jax.random.key(9), 4), b.sample(jax.random.key(9), 4))
    assert not np.array_equal(a.sample(jax.random.key(9), 4), a.sample(jax.random.key(10), 4))


@pytest.mark.parametrize("arch", ["mlp", "hvae", "ladder"])
def test_temperature_zero_decodes_the_prior_mean(arch):
    model, config = make_model(arch)
    z_cold = model.decode(jnp.zeros((1, config.model.latent_dim)))
    np.testing.assert_allclose(model.sample(jax.random.key(0), 1, temperature=0.0), z_cold, rtol=1e-5)


def test_parameter_counts_match_the_architectures():
    config = tiny_config().model
    mlp = model_shapes(config, hidden_dims=(400,), latent_dim=20)
    assert parameter_count(mlp) == (784 * 400 + 400) + (400 * 40 + 40) + (20 * 400 + 400) + (400 * 784 + 784)

    # The published gated VAE: 784-300-300-40 and mirrored, each gated layer two linear maps.
    gated_vae = dict(hidden_dims=(300, 300), latent_dim=40, activation="gated")
    gated = lambda a, b: 2 * (a * b + b)
    expected = (gated(784, 300) + gated(300, 300) + (300 * 80 + 80)
                + gated(40, 300) + gated(300, 300) + (300 * 784 + 784))
    assert parameter_count(model_shapes(config, **gated_vae)) == expected

    # With a VampPrior the pseudo-inputs add K x D parameters.
    vampprior = model_shapes(config, **gated_vae, prior="vampprior", num_pseudo_inputs=500)
    assert parameter_count(vampprior) == expected + 500 * 784


def test_hvae_has_the_published_structure():
    model = model_shapes(tiny_config().model, arch="hvae", activation="gated", hidden_dims=(300, 300),
                         latent_dim=40)
    kernel = lambda layer: layer.linear.kernel.shape
    assert kernel(model.q_z1.body.a) == (784, 600) and kernel(model.q_z1.body.b) == (40, 600)
    assert [kernel(layer) for layer in model.q_z1.body.joint.layers] == [(600, 600)]
    assert [kernel(layer) for layer in model.p_z1.body.layers] == [(40, 600), (300, 600)]
    assert [kernel(layer) for layer in model.p_x.body.joint.layers] == [(600, 600)]
    assert model.p_x.head.kernel.shape == (300, 784)


def test_conv_hvae_has_the_published_structure():
    """Gated convolutions 1-32 (7x7), 32-32 (3x3, stride 2), 32-64 (5x5), 64-64 (3x3, stride 2),
    64-6 (3x3) read x into 6 x 7 x 7 = 294 features; the decoder ends in four gated 3x3
    convolutions of 64 channels and a 1x1 convolution at 28 x 28."""
    config = tiny_config(model__arch="conv_hvae", model__conv_channels=(32, 64), model__latent_dim=40,
                         model__hidden_dims=(300, 300)).model
    model = model_shapes(config)
    kernels = [layer.conv.kernel.shape for layer in model.q_z2.body.layers]
    assert kernels == [(7, 7, 1, 64), (3, 3, 32, 64), (5, 5, 32, 128), (3, 3, 64, 128), (3, 3, 64, 12)]
    assert model.q_z2.body.out_dim == 294 and model.q_z2.head.linear.kernel.shape == (294, 80)
    assert model.q_z1.body.b.linear.kernel.shape == (40, 2 * 294)  # z2 joins x at 294 features
    assert [layer.conv.kernel.shape for layer in model.p_x.head.layers] == [(3, 3, 1, 128)] + [
        (3, 3, 64, 128)] * 3
    assert model.p_x.head.out.kernel.shape == (1, 1, 64, 1)
    # Built for real and decoding, in one compiled program.
    logits = jax.jit(lambda key: build.build_model(config, IMAGE_SHAPE, key).decode(jnp.zeros((2, 40))))(
        jax.random.key(0))
    assert logits.shape == (2, 784) and bool(jnp.all(jnp.isfinite(logits)))


def test_unknown_architecture_and_prior_are_rejected():
    with pytest.raises(ValueError, match="model.arch"):
        make_model("transformer")
    with pytest.raises(ValueError, match="model.prior"):
        make_model("mlp", "laplace")


def test_depth_to_space_places_channel_groups_in_2x2_blocks():
    h = jnp.arange(1 * 1 * 1 * 8, dtype=jnp.float32).reshape(1, 1, 1, 8)  # one pixel, 4 x 2 channels
    out = networks.depth_to_space(h)
    assert out.shape == (1, 2, 2, 2)
    np.testing.assert_array_equal(out[0, :, :, 0], [[0, 2], [4, 6]])
    np.testing.assert_array_equal(out[0, :, :, 1], [[1, 3], [5, 7]])


def test_an_hvae_z1_whose_posterior_is_its_prior_has_no_active_units():
    """q(z1 | x, z2) = p(z1 | z2): z1 carries nothing about x beyond z2, so none of its units is
    active, though its posterior mean moves with x through z2 (Burda et al.'s measure on
    E_q[z1 | x] alone would count every unit)."""
    model, config = make_model("hvae")
    model.q_z1_from_features = lambda features, z2: model.p_z1(z2)  # q = p for z1
    size = config.model.latent_dim
    prior = model.p_z1.head.linear  # p(z1 | z2)'s mean: 5 times as sensitive to z2
    prior.kernel[...] = prior.kernel[...].at[:, :size].multiply(5.0)
    x = binary_images(256)
    terms = model.elbo_terms(x, jax.random.key(3))
    summary = evaluate.summarize_eval(terms, 256, 784, 0.01, layer_sizes=(size, size))
    np.testing.assert_allclose(terms["kl_per_layer"][:, 0], 0.0, atol=1e-5)  # q = p: no KL
    np.testing.assert_array_equal(terms["mean"][:, :size], 0.0)
    assert summary["test/active_units_per_layer"][0] == 0
    mean2 = model.encode(x)[0]
    posterior_mean1 = np.asarray(model.p_z1(mean2)[0], np.float64)
    assert int(np.sum(np.var(posterior_mean1, axis=0) > 0.01)) == size  # the old measure: all active
    np.testing.assert_allclose(terms["mean"][:, size:], mean2, rtol=1e-5, atol=1e-6)  # z2: Burda's
