"""The one registry of architectures (`vae.model.build.ARCHITECTURES`): every `model.arch` it holds
builds, passes the config checks and is described by the results table, and nothing else does."""

import jax
import pytest

from tests.conftest import run_in_process, tiny_config
from vae.analysis import results
from vae.config import ConfigError, validate_config, validate_image_shape
from vae.model import build
from vae.train import epoch
from vae.workdir import files

IMAGE_SHAPE = (28, 28, 1)


def evaluated_workdir(path, config):
    """A workdir as training and scripts/evaluate.py write it (their own writers), without the
    training: config.json, one epoch's metrics, an evaluation."""
    path.mkdir(parents=True)
    files.write_config(path, config, IMAGE_SHAPE)
    files.append_metrics(path, {"epoch": 1, "step": 16, "train/elbo": 300.0, "wall_time_sec": 12.0,
                                "test/elbo": 310.0})
    files.save_evaluation(path, {"epoch": 1, "checkpoint": "latest", "iw_samples": 10, "num_examples": 32,
                                 "test/nll": 305.0, "test/nll_std_error": 1.5, "test/elbo": 310.0,
                                 "test/active_units": 3})
    return path


@pytest.mark.parametrize("arch", build.ARCHS)
def test_every_architecture_builds_is_checked_and_is_described(arch, tmp_path):
    config = tiny_config(model__arch=arch)
    validate_config(config, jax.device_count())
    model = build.build_model(config.model, IMAGE_SHAPE, jax.random.key(0))
    assert model.image_shape == IMAGE_SHAPE
    assert epoch.epoch_loop(config) == ("steps" if build.ARCHITECTURES[arch].convolutional else "scan")
    workdir = evaluated_workdir(tmp_path / arch, config)
    table = run_in_process("results.py", workdir)
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if line.startswith(f"| {arch} |"))
    assert f"{build.ARCHITECTURES[arch].title} " in row and "**305.00** ± 1.50 (k=10)" in row


def test_an_architecture_outside_the_registry_is_refused_everywhere(tmp_path):
    config = tiny_config(model__arch="resnet")
    with pytest.raises(ConfigError, match="model.arch must be one of"):
        validate_config(config, 1)
    with pytest.raises(ValueError, match="model.arch must be one of"):
        build.build_model(config.model, IMAGE_SHAPE, jax.random.key(0))
    record = {"model": dict(tiny_config().model.to_dict(), arch="resnet"), "train": {"objective": "elbo"},
              "data": {}}
    assert results.describe_model(record).startswith("model.arch=resnet, N(0, I)")  # an old workdir reads


def test_a_convolutional_architecture_names_the_image_sizes_it_needs():
    config = tiny_config(model__arch="conv", model__conv_channels=(8, 16, 32))
    with pytest.raises(ConfigError, match="multiples of 8; the images are 28x28"):
        validate_image_shape(config, IMAGE_SHAPE)
