"""The KL split (vae/model/kl_split.py) against closed forms: a linear-Gaussian model whose aggregate
posterior is Gaussian, exact identities, the bounds of the mutual-information estimates, the
chunked log-sum-exp against a direct one, and a trained model whose two parts, each estimated on
its own, add up to its closed-form KL term."""

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

from tests.conftest import tiny_config
from vae.data.dataset import load_test_set
from vae.data.pixels import to_model_input
from vae.model import build, kl_split
from vae.model.priors import StandardNormal
from vae.train.trained import load_trained

PRIOR = StandardNormal()
FIXTURE = Path(__file__).parent / "data" / "workdir_v1"


class LinearGaussian:
    """x ~ N(0, I), q(z|x) = N(A x, diag s²): q(z) = N(0, C), C = A Aᵀ + diag s², so every part of
    the split against p(z) = N(0, I) has a closed form."""

    A = np.array([[1.0, 0.3, 0.0], [0.0, 0.8, 0.2], [0.5, 0.0, 0.6]])
    log_s2 = np.log(np.array([0.5, 0.3, 0.8]))

    def __init__(self, A=None, log_s2=None):
        self.A = self.A if A is None else A
        self.log_s2 = self.log_s2 if log_s2 is None else log_s2
        z = len(self.log_s2)
        C = self.A @ self.A.T + np.diag(np.exp(self.log_s2))
        log_det = np.linalg.slogdet(C)[1]
        self.exact = {
            "kl": 0.5 * (np.trace(C) - z - self.log_s2.sum()),
            "mutual_info": 0.5 * (log_det - self.log_s2.sum()),
            "marginal_kl": 0.5 * (np.trace(C) - z - log_det),
            "total_correlation": 0.5 * (np.log(np.diag(C)).sum() - log_det),
            "dimwise_kl": 0.5 * (np.diag(C) - 1.0 - np.log(np.diag(C))),
        }

    def posteriors(self, key, num):
        x_NxD = jax.random.normal(key, (num, self.A.shape[1]))
        mean_NxZ = (x_NxD @ self.A.T).astype(jnp.float32)
        return mean_NxZ, jnp.broadcast_to(self.log_s2, mean_NxZ.shape).astype(jnp.float32)


@jax.jit
def split_summary(key, mean_NxZ, log_var_NxZ):
    return kl_split.summarize(kl_split.kl_split_terms(
        key, mean_NxZ, log_var_NxZ, PRIOR.log_prob, num_samples=2, log_prior_per_dim=PRIOR.log_prob_per_dim))


def split_terms(key, mean_NxZ, log_var_NxZ, log_prior=PRIOR.log_prob, **options):
    """`kl_split.kl_split_terms` as one compiled program (op by op it compiles dozens)."""
    return jax.jit(lambda k, m, v: kl_split.kl_split_terms(k, m, v, log_prior, **options))(
        key, mean_NxZ, log_var_NxZ)


@pytest.mark.slow  # 6,400^2 pairs 4 times; quick: the estimates' bounds and limits below
def test_linear_gaussian_estimates_converge_to_closed_form():
    """The mean absolute error over 4 draws of the images shrinks as N grows (the images' own
    sampling error, about sqrt(Var / N), dominates the estimators' bias here)."""
    model = LinearGaussian()
    errors = {}
    for num in (100, 800, 6400):
        keys = jax.random.split(jax.random.key(num), 4)
        got = jax.vmap(lambda k, n=num: split_summary(k, *model.posteriors(jax.random.fold_in(k, 1), n)))(
            keys)
        errors[num] = {name: float(np.mean(np.abs(got[name] - value))) for name, value in model.exact.items()}
    for name in model.exact:
        assert errors[6400][name] < errors[800][name] < errors[100][name], (name, errors)
    # Measured: I 0.0135, KL(q(z) ‖ p(z)) 0.0097, TC 0.0033, per dimension 0.0027 nats.
    assert errors[6400]["mutual_info"] < 0.02
    for name in ("marginal_kl", "total_correlation", "dimwise_kl"):
        assert errors[6400][name] < 0.015, (name, errors[6400])


def test_mutual_info_estimates_bracket_the_true_information_and_stay_below_log_n():
    """A sharp code (I = 5.2 nats) on 64 images: the all-N estimate is below log 64 = 4.16 (biased
    low, InfoNCE), the leave-one-out one above the true I (biased high)."""
    model = LinearGaussian(A=3.0 * np.eye(2), log_s2=np.log(np.array([0.05, 0.05])))
    summaries = jax.vmap(lambda k: split_summary(k, *model.posteriors(jax.random.fold_in(k, 1), 64)))(
        jax.random.split(jax.random.key(0), 100))
    assert np.all(np.asarray(summaries["mutual_info"]) <= math.log(64) + 1e-5)
    lower, upper = float(summaries["mutual_info"].mean()), float(summaries["mutual_info_upper"].mean())
    assert lower < math.log(64) < model.exact["mutual_info"] < upper


def test_parts_add_up_exactly_on_the_same_draws():
    mean_NxZ, log_var_NxZ = LinearGaussian().posteriors(jax.random.key(3), 300)
    terms = split_terms(jax.random.key(4), mean_NxZ, log_var_NxZ, log_prior_per_dim=PRIOR.log_prob_per_dim,
                        chunk_rows=7)
    np.testing.assert_allclose(terms["mutual_info_R"] + terms["marginal_kl_R"], terms["kl_R"], atol=1e-4)
    np.testing.assert_allclose(terms["total_correlation_R"] + terms["dimwise_kl_RxZ"].sum(-1),
                               terms["marginal_kl_R"], atol=1e-4)


def test_identical_posteriors_carry_no_information():
    mean_NxZ = jnp.tile(jnp.array([[0.5, -1.0]]), (50, 1))
    log_var_NxZ = jnp.full((50, 2), -1.0)
    s = kl_split.summarize(split_terms(jax.random.key(0), mean_NxZ, log_var_NxZ))
    assert float(s["mutual_info"]) == pytest.approx(0.0, abs=1e-5)
    assert float(s["mutual_info_upper"]) == pytest.approx(0.0, abs=1e-5)
    assert float(s["total_correlation"]) == pytest.approx(0.0, abs=1e-5)
    assert float(s["marginal_kl"]) == pytest.approx(float(s["kl"]), abs=1e-5)


def test_separated_posteriors_reach_log_n():
    mean_NxZ = jnp.arange(40.0)[:, None] * jnp.array([[10.0, 0.0]])
    s = kl_split.summarize(split_terms(jax.random.key(0), mean_NxZ, jnp.full((40, 2), -2.0)))
    assert float(s["mutual_info"]) == pytest.approx(math.log(40), abs=1e-4)
    assert float(s["mutual_info"]) <= math.log(40) + 1e-6


def test_chunked_log_sum_exp_equals_the_direct_sum():
    key_m, key_v, key_z = jax.random.split(jax.random.key(5), 3)
    mean_NxZ = jax.random.normal(key_m, (37, 4))
    log_var_NxZ = 0.5 * jax.random.normal(key_v, (37, 4))
    z_RxZ = jax.random.normal(key_z, (53, 4))
    own_R = jnp.arange(53) % 37
    got = jax.jit(lambda *a: kl_split.aggregate_log_densities(*a, chunk_rows=8))(
        z_RxZ, own_R, mean_NxZ, log_var_NxZ)
    m, lv, z = (np.asarray(a, np.float64) for a in (mean_NxZ, log_var_NxZ, z_RxZ))
    per_dim_RxNxZ = -0.5 * (math.log(2 * math.pi) + lv + (z[:, None] - m) ** 2 / np.exp(lv))
    joint_RxN = per_dim_RxNxZ.sum(-1)
    np.testing.assert_allclose(got["joint_R"], logsumexp(joint_RxN, axis=1) - math.log(37), rtol=1e-5)
    np.testing.assert_allclose(got["marginal_RxZ"], logsumexp(per_dim_RxNxZ, axis=1) - math.log(37),
                               rtol=1e-5)
    others = joint_RxN.copy()
    others[np.arange(53), np.asarray(own_R)] = -np.inf
    np.testing.assert_allclose(got["leave_one_out_R"], logsumexp(others, axis=1) - math.log(36), rtol=1e-5)


def independent_parts(mean_NxZ, log_var_NxZ, log_prior, num_samples=8):
    """I from one set of draws, KL(q(z) ‖ p(z)) from another: neither is the other's remainder."""
    first, second = (kl_split.summarize(split_terms(jax.random.key(seed), mean_NxZ, log_var_NxZ, log_prior,
                                                    num_samples=num_samples)) for seed in (1, 2))
    total = float(first["mutual_info"] + second["marginal_kl"])
    std_error = math.hypot(float(first["mutual_info_std_error"]), float(second["marginal_kl_std_error"]))
    return float(first["mutual_info"]), float(second["marginal_kl"]), total, std_error


def test_trained_model_parts_add_up_to_its_closed_form_kl(fashion_mnist):
    """The committed workdir (a 2-d MLP VAE trained 2 epochs) on 2,000 test images."""
    config, model, _ = load_trained(FIXTURE)
    config.data.test_split = "test[:2000]"
    images, _ = load_test_set(config.data)
    mean_NxZ, log_var_NxZ = model.encode(to_model_input(images.reshape(len(images), -1), None))
    closed_form = float(jnp.mean(model.prior.kl(mean_NxZ, log_var_NxZ, None)[0]))
    mutual_info, marginal_kl, total, std_error = independent_parts(mean_NxZ, log_var_NxZ,
                                                                   model.prior.log_prob)
    print(f"trained: KL {closed_form:.4f} = I {mutual_info:.4f} + KL(q(z)‖p(z)) {marginal_kl:.4f} "
          f"-> {total:.4f} ± {std_error:.4f}")
    assert abs(total - closed_form) < 3 * std_error
    assert 0 < mutual_info <= math.log(2000) and marginal_kl > 0


def test_vampprior_parts_add_up_to_its_kl_term():
    """Against the VampPrior's own density: its KL term (no closed form) from many independent draws."""
    config = tiny_config(model__prior="vampprior", model__num_pseudo_inputs=20)
    model = build.build_model(config.model, (28, 28, 1), jax.random.key(0))
    x_NxD = jax.random.uniform(jax.random.key(1), (500, 784))
    mean_NxZ, log_var_NxZ = model.encode(x_NxD)

    def log_prior(z):
        return model.prior.log_prob(z, model.encode)

    _, _, total, std_error = independent_parts(mean_NxZ, log_var_NxZ, log_prior)
    kl_term = kl_split.summarize(split_terms(jax.random.key(3), mean_NxZ, log_var_NxZ, log_prior,
                                             num_samples=32))
    combined = math.hypot(std_error, float(kl_term["kl_std_error"]))
    assert abs(total - float(kl_term["kl"])) < 3 * combined


# --- The split in a run's metrics, eval.json and the figures ------------------------------------


def test_the_config_field_is_checked_and_old_configs_have_no_split():
    from vae.config import ConfigError, validate_config
    from vae.train.evaluate import kl_split_examples

    for bad in (1, -5, 2.5, "1000", True):
        config = tiny_config()
        with config.eval.ignore_type():
            config.eval.kl_split_examples = bad
        with pytest.raises(ConfigError, match="eval.kl_split_examples"):
            validate_config(config, 1)
    with pytest.raises(ConfigError, match="eval.kl_split_examples"):
        validate_config(tiny_config(eval__kl_split_examples=2), 4)  # fewer than the devices
    validate_config(tiny_config(eval__kl_split_examples=0), 4)
    old = tiny_config()
    del old.eval["kl_split_examples"]  # a config.json written before the field existed
    validate_config(old, 4)
    assert kl_split_examples(old) == 0 and kl_split_examples(tiny_config()) == 1000


def test_a_run_records_the_split_on_its_validation_split(tmp_path, fashion_mnist):
    from vae.analysis import plotting
    from vae.train import loop

    config = tiny_config(train__num_epochs=2, eval__kl_split_examples=200)
    config.data.validation_split = "train[1024:1280]"
    history = loop.train_and_evaluate(config, tmp_path, progress=False)
    for record in history:
        assert record["val/split_examples"] == 200 and "test/mutual_info" not in record
        assert 0 < record["val/mutual_info"] <= min(math.log(200), record["val/mutual_info_upper"])
        assert record["val/mutual_info"] + record["val/marginal_kl"] == pytest.approx(record["val/split_kl"],
                                                                                        abs=1e-3)
        assert record["val/total_correlation"] + record["val/dimwise_kl"] == pytest.approx(
            record["val/marginal_kl"], abs=1e-3)
        assert record["val/dimwise_kl"] == pytest.approx(sum(record["val/dimwise_kl_per_dim"]), abs=1e-3)
        # The KL term on 200 of the 256 images, against the one-sample estimate on all of them.
        assert record["val/split_kl"] == pytest.approx(record["val/kl"], rel=0.15)
        assert record["val/mutual_info_std_error"] > 0 and record["val/marginal_kl_std_error"] > 0
    assert len(plotting.plot_kl_split({"tiny": history}).axes) >= 1
    figure = plotting.plot_rate_distortion({"a": history, "b": history})
    assert any(ax.get_label() == "<colorbar>" for ax in figure.axes)  # coloured by I_q(x; z)
    off = loop.train_and_evaluate(tiny_config(train__num_epochs=1, eval__kl_split_examples=0),
                                      tmp_path / "off", progress=False)
    assert not any("mutual_info" in key for key in off[0])


def test_an_old_workdir_reports_the_split_of_its_test_images(tmp_path, fashion_mnist):
    import shutil

    from vae.analysis.iwae import evaluate_workdir

    old = Path(shutil.copytree(FIXTURE, tmp_path / "old"))
    result = evaluate_workdir(old, num_samples=2, max_examples=64, progress=False)
    assert result["test/split_examples"] == 64 and 0 < result["test/mutual_info"] <= math.log(64)
    assert result["test/mutual_info"] + result["test/marginal_kl"] == pytest.approx(result["test/split_kl"],
                                                                                    abs=1e-3)
