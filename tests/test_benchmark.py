"""The benchmark harness: matmul FLOPs counted on traced programs against hand counts, the kernel
profile's grouping, and one JSON for several configs (no time is asserted: CI machines vary)."""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import harness, profiling
from configs import mlp_small
from tests.conftest import REPO, tiny_config, train_tiny_8bit
from vae.train import feed, state, step


def test_matmul_flops_are_counted_on_the_jaxpr():
    a, b = jnp.ones((8, 5)), jnp.ones((5, 3))
    assert profiling.matmul_flops(jnp.matmul, a, b) == 2 * 8 * 5 * 3
    batched = jnp.ones((4, 8, 5))
    assert profiling.matmul_flops(lambda x: jnp.einsum("bij,jk->bik", x, b), batched) == 2 * 4 * 8 * 5 * 3
    # A scan multiplies its body's count by its length; gradients count the backward matmuls.
    assert profiling.matmul_flops(lambda x: jax.lax.scan(lambda c, _: (c @ jnp.ones((5, 5)), None), x,
                                                         None, length=7)[0], a) == 7 * 2 * 8 * 5 * 5
    assert profiling.matmul_flops(jax.grad(lambda w: jnp.sum(a @ w)), b) == 2 * (2 * 8 * 5 * 3)
    image = jnp.ones((2, 6, 6, 3))
    kernel = jnp.ones((3, 3, 3, 4))
    conv = lambda x: jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert profiling.matmul_flops(conv, image) == 2 * (2 * 6 * 6 * 4) * (3 * 3 * 3)


def test_flops_of_the_small_mlp():
    flops = harness.flops(mlp_small.get_config(), (28, 28, 1), iw_samples=1000)
    assert flops["shapes"]["iw_chunk"] == 32  # evaluate.py's CPU default: 32 images x 32 samples
    encoder, decoder = 784 * 400 + 400 * 40, 20 * 400 + 400 * 784
    assert flops["iwae_decoder_per_sample"] == 2 * decoder
    assert flops["elbo_eval_per_image"] == 2 * (encoder + decoder)
    # Backward: weight gradients of every layer, input gradients of all but the first.
    assert flops["train_per_image"] == 2 * (3 * (encoder + decoder) - 784 * 400)
    # The IWAE also runs the encoder once per image and chunk of 32 samples.
    assert flops["iwae_per_sample"] == pytest.approx(2 * (decoder + encoder / 32))


def test_a_vampprior_is_counted_at_the_batch_size_that_runs():
    """Its K pseudo-inputs pass the encoder once per batch: K / batch encoder passes per image."""
    config = mlp_small.get_config()
    config.model.prior, config.model.num_pseudo_inputs = "vampprior", 50
    per_batch = {}
    for batch in (10, 100):
        config.train.batch_size = config.eval.batch_size = batch
        per_batch[batch] = harness.flops(config, (28, 28, 1), iw_samples=100)
    encoder = 2 * (784 * 400 + 400 * 40)
    plain = harness.flops(mlp_small.get_config(), (28, 28, 1), iw_samples=100)["elbo_eval_per_image"]
    for batch, flops in per_batch.items():
        assert flops["elbo_eval_per_image"] - plain == pytest.approx(encoder * 50 / batch + 2 * 2 * 20 * 50)
    assert per_batch[10]["train_per_image"] > per_batch[100]["train_per_image"]


def test_the_profile_groups_kernels_by_what_they_compute():
    config = tiny_config()
    tx = state.make_optimizer(config.train, 1)
    graphdef, train_state = state.init_state(config, (28, 28, 1), tx)
    train_step = step.make_train_step(graphdef, config, 1, dynamic=True)
    hyper = state.hyperparameters(config)
    jitted = jax.jit(lambda s, x_u8: train_step(s, x_u8, step.step_key(hyper.seed, s.step), hyper))
    x = jnp.zeros((64, 784), jnp.uint8)
    compiled = jitted.lower(train_state, x).compile()
    parts = set(profiling.kernel_parts(compiled.as_text()).values())
    assert {"matmuls", "random bits", "optimizer update", "other elementwise"} <= parts
    seconds = profiling.profile(lambda: jax.block_until_ready(compiled(train_state, x)), compiled.as_text())
    assert set(profiling.PARTS) <= set(seconds) and seconds["matmuls"] > 0


@pytest.mark.parametrize("source", ["device", "host"])
def test_the_harness_starts_from_what_a_training_starts_from(source):
    """The benchmark's programs are built as a training builds them: the decoder's output bias at
    the training set's pixel means, and the feed train.batch_source names."""
    config = tiny_config(train__batch_source=source, model__init_output_bias=True)
    rng = np.random.default_rng(0)
    on_D = np.linspace(0.02, 0.98, 784)  # pixels on from rarely to nearly always: means far from 1/2
    train_u8 = ((rng.random((256, 784)) < on_D) * 255).astype(np.uint8).reshape(256, 28, 28, 1)
    test_u8 = train_u8[:128]
    trainer = harness.Trainer(config, train_u8, test_u8, dynamic=True, devices=jax.devices()[:1])
    pixel_means = train_u8.reshape(256, -1).mean(axis=0) / 255.0
    _, expected = state.init_state(config, (28, 28, 1), state.make_optimizer(config.train, 4), pixel_means)
    got, want = jax.tree.leaves(trainer.state.params), jax.tree.leaves(expected.params)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert isinstance(trainer.source, feed.HostBatches if source == "host" else feed.DeviceBatches)
    trainer.run_epoch()  # and it trains from there
    assert int(trainer.state.step) == 256 // config.train.batch_size


@pytest.mark.slow  # a minute of timed runs; the FLOP counts and the profile's grouping are quick tests above
@pytest.mark.parametrize("with_torch", [False, True])
def test_benchmark_smoke(tmp_path, with_torch):
    if with_torch:
        pytest.importorskip("torch")
    out = tmp_path / "bench.json"
    args = [sys.executable, "scripts/benchmark.py", "--synthetic", "--train-images", "1024",
            "--epochs", "2", "--step-samples", "3", "--iw-samples", "8", "--iw-images", "4",
            "--eval-repeats", "1", "--iw-repeats", "1", "--set", "model.hidden_dims=(32,)",
            "--config", "configs/mlp_small.py", "--out", str(out)]
    # Several batch sizes with the PyTorch reference; several configs and the profile without it.
    batch_sizes = [64, 128] if with_torch else [64]
    args += ["--batch-sizes", ",".join(map(str, batch_sizes))]
    if with_torch:
        args.append("--torch")
    else:
        args += ["--config", "configs/paper_hvae.py", "--profile"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS="")
    result = subprocess.run(args, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "training (median)" in result.stdout
    report = json.loads(out.read_text())
    assert report["machine"]["cores"] >= 1 and "jax" in report["machine"]["versions"]
    assert report["matmul_ceiling"]["gflops"] > 0.1 and report["matmul_ceiling_at_end"]["gflops"] > 0.1
    assert [c["config_file"] for c in report["configs"]] == (
        ["configs/mlp_small.py"] if with_torch else ["configs/mlp_small.py", "configs/paper_hvae.py"])
    for entry in report["configs"]:
        assert entry["matmul_flops"]["iwae_decoder_per_sample"] > 0
        assert [run["batch_size"] for run in entry["runs"]] == batch_sizes
        for run in entry["runs"]:
            for figure in ("train", "elbo_eval", "iwae"):
                assert run[figure]["images_per_sec"] > 0 and 0 < run[figure]["share_of_ceiling"] < 2
            assert run["compile_sec"] > 0 and run["step_time_ms"]["p50"] <= run["step_time_ms"]["p99"]
    assert report["memory"]["host_peak_rss_mb"] > 10
    if with_torch:
        torch = report["configs"][0]["runs"][0]["torch"]
        assert torch["idiomatic_images_per_sec"] > 0 and torch["jax_over_tuned"] > 0
    else:
        profile = report["configs"][1]["runs"][0]["profile"]
        step_parts, iwae_parts = profile["train_step"]["parts"], profile["iwae_sample"]["parts"]
        assert step_parts["matmuls"]["wall_ms"] > 0 and 0 < step_parts["matmuls"]["rate_share_of_ceiling"]
        assert iwae_parts["matmuls"]["wall_us"] > 0
        assert sum(part["share_of_time"] for part in step_parts.values()) == pytest.approx(1.0)
    # The speed table is written from this JSON: the page, and the README's marked section only.
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\nbefore\n<!-- speed-table:begin -->\nold figures\n"
                      "<!-- speed-table:end -->\nafter\n")
    page = tmp_path / "benchmarks.md"
    done = subprocess.run([sys.executable, "scripts/speed_table.py", str(out), "--out", str(page),
                           "--readme", str(readme)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    text, table = readme.read_text(), page.read_text()
    assert "old figures" not in text and text.startswith("# x\n\nbefore\n") and text.endswith("after\n")
    first = report["configs"][0]["runs"][0]
    rate = first["train"]["images_per_sec"]
    assert f"{rate:,.0f}" in text and f"{rate:,.0f}" in table and "configs/mlp_small.py" in table
    assert ("PyTorch, tuned" in table) == with_torch


def test_the_coding_parts_of_an_8bit_model_are_timed_and_a_binarised_one_refused(tmp_path, tiny_run, capsys):
    """benchmarks/coding_parts.py on a one-epoch 8-bit run: one figure per part, in ns a sub-pixel
    (no time asserted), the sums of encoding and decoding; a binarised run is refused in one line."""
    from benchmarks import coding_parts

    run = train_tiny_8bit(tmp_path / "eight_bit", "train[:64]")
    coding_parts.main(["--workdir", str(run), "--repeats", "1", "--block_size", "3"])
    out = capsys.readouterr().out
    assert "K = 2, block of 3 (2352 sub-pixels)" in out
    figures = dict(part.rsplit(" ", 1) for part in out.splitlines()[1].strip().split(", "))
    assert set(figures) == {"parameters", "q(z|x)", "rounds' probabilities", "pushes", "first round",
                            "3 later rounds", "4 pops"}
    assert all(int(v) > 0 for v in figures.values())
    assert re.search(r"encoding \d+, decoding \d+", out)
    with pytest.raises(SystemExit, match="a bernoulli model; this benchmark times the 8-bit pixel code"):
        coding_parts.main(["--workdir", str(tiny_run), "--repeats", "1"])
