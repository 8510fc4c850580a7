"""Test set-up: 4 fake CPU devices (set before jax starts) and shared small runs."""

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One persistent JAX compilation cache for the whole suite, its xdist workers and the scripts it
# launches: many tests compile the same small programs in fresh processes. Keyed by JAX on the
# program, flags and versions, so it only saves time; `make clean` removes it with .pytest_cache.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(REPO, ".pytest_cache", "jax_compilation_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402

from configs import mlp_small  # noqa: E402
from vae.data import source as data_source  # noqa: E402


def real_data_available() -> bool:
    try:
        data_source.check_prepared("fashion_mnist", None)
        return True
    except data_source.DataError:
        return False


@pytest.fixture(scope="session")
def fashion_mnist():
    """Skips (or, under `make test`, fails) when the real Fashion-MNIST is not prepared."""
    if not real_data_available():
        message = "Fashion-MNIST is not prepared: run `make data`"
        if os.environ.get("VAE_REQUIRE_REAL_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return "fashion_mnist"


def tiny_config(**overrides):
    """configs/mlp_small.py on small slices of Fashion-MNIST: seconds per epoch on a CPU."""
    config = mlp_small.get_config()
    config.data.train_split = "train[:1024]"
    config.data.test_split = "test[:256]"
    config.model.hidden_dims = (64,)
    config.model.latent_dim = 4
    config.model.conv_channels = (8, 16)
    config.train.batch_size = 64
    config.train.num_epochs = 2
    config.eval.batch_size = 128
    for dotted, value in overrides.items():
        node = config
        *parents, leaf = dotted.split("__")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config
