"""Start-up and exit: what the scripts skip to start and end sooner still leaves everything done.

`cli.run_script` ends the process without the interpreter's teardown; the image shape recorded in
config.json lets a trained run be read back without the data set; a command imports only what it
uses (orbax where checkpoints are read or written, TFDS where TFDS data is read, flax where a model
is built, JAX not at all for reading metrics).
"""

import importlib
import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO, copy_run

from vae import cli
from vae.train import trained
from vae.workdir import files


def _script(tmp_path, body: str) -> subprocess.CompletedProcess:
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(body))
    return subprocess.run([sys.executable, str(path)], capture_output=True, text=True, cwd=REPO, timeout=60,
                          env=dict(os.environ, PYTHONPATH=REPO))


def test_the_user_errors_the_cli_reports_in_one_line_are_their_modules_exceptions():
    # The table names modules as strings (cli imports none of them): a renamed module drops out silently.
    for module, name in cli._USER_ERRORS.items():
        assert issubclass(getattr(importlib.import_module(module), name), Exception), (module, name)


def test_run_script_exits_with_the_status_after_threads_atexit_and_buffered_output(tmp_path):
    done = tmp_path / "thread_done"
    result = _script(tmp_path, f"""
        import atexit, sys, threading, time
        from vae import cli

        def main(code):
            atexit.register(lambda: print("atexit ran", file=sys.stderr))
            def late():
                time.sleep(0.3)
                open({str(done)!r}, "w").write("yes")
            threading.Thread(target=late).start()  # not a daemon: a normal exit waits for it
            sys.stdout.write("no newline, still buffered")
            return code

        cli.run_script(main, 3)
        """)
    assert result.returncode == 3, result.stderr
    assert result.stdout == "no newline, still buffered"
    assert "atexit ran" in result.stderr
    assert done.read_text() == "yes"


@pytest.mark.parametrize("exit_call, code, message", [("sys.exit()", 0, ""), ("sys.exit(2)", 2, ""),
                                                      ("sys.exit('bad input')", 1, "bad input")])
def test_run_script_takes_sys_exit_statuses(tmp_path, exit_call, code, message):
    result = _script(tmp_path, f"""
        import sys
        from vae import cli

        def main():
            {exit_call}

        cli.run_script(main)
        """)
    assert result.returncode == code
    assert message in result.stderr


def test_an_exception_still_ends_with_its_traceback(tmp_path):
    result = _script(tmp_path, """
        from vae import cli

        def main():
            raise RuntimeError("a bug")

        cli.run_script(main)
        """)
    assert result.returncode == 1
    assert "RuntimeError: a bug" in result.stderr and "Traceback" in result.stderr


def test_training_records_the_image_shape_and_reading_the_run_needs_no_data(tiny_run, tmp_path):
    assert files.read_image_shape(tiny_run) == (28, 28, 1)
    run = copy_run(tiny_run, tmp_path / "run")
    record = json.loads((run / files.CONFIG_FILE).read_text())
    record["data"]["data_dir"] = str(tmp_path / "no_data_here")  # the data set is gone
    (run / files.CONFIG_FILE).write_text(json.dumps(record))
    config, model, epoch = trained.load_trained(run)
    assert epoch == 2 and model.image_shape == (28, 28, 1)
    assert config.data.data_dir == str(tmp_path / "no_data_here")


def test_a_workdir_without_the_record_reads_the_shape_from_the_data_set(tiny_run, tmp_path, fashion_mnist):
    run = copy_run(tiny_run, tmp_path / "run")
    record = json.loads((run / files.CONFIG_FILE).read_text())
    del record["run"]["image_shape"]  # as every workdir written before it
    (run / files.CONFIG_FILE).write_text(json.dumps(record))
    assert files.read_image_shape(run) is None
    _, model, _ = trained.load_trained(run)
    assert model.image_shape == (28, 28, 1)


# The packages a command imports only where it uses them.
HEAVY = ("jax", "flax", "orbax.checkpoint", "tensorflow_datasets", "tensorboardX", "matplotlib")


def _loaded_after(tmp_path, body: str) -> set[str]:
    """Which of HEAVY a fresh interpreter has loaded after running `body`."""
    result = _script(tmp_path, body + f"""
        print("LOADED", *sorted(m for m in {HEAVY!r} if m in sys.modules))
        """)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split("LOADED")[-1].split())


def test_reading_a_workdir_imports_no_jax_flax_orbax_or_tfds(tiny_run, tmp_path):
    loaded = _loaded_after(tmp_path, f"""
        import sys
        from pathlib import Path
        from vae.workdir import checkpoints, faults, files

        run = Path({str(tiny_run)!r})
        assert files.read_config(run).model.latent_dim == 2 and len(files.read_metrics(run)) == 2
        assert files.read_image_shape(run) == (28, 28, 1)
        assert checkpoints.latest_checkpoint(run) == 2 and checkpoints.has_checkpoints(run)
        assert faults.write_fault(OSError(28, "No space left on device")) is not None
        """)
    assert loaded == set()


def test_plot_kl_imports_matplotlib_and_no_jax(tiny_run, tmp_path):
    loaded = _loaded_after(tmp_path, f"""
        import runpy, sys
        script = runpy.run_path({str(REPO)!r} + "/scripts/plot_kl.py", run_name="plot_kl")
        assert script["main"](["--workdir", {str(tiny_run)!r}, "--out", {str(tmp_path)!r}]) == 0
        """)
    assert loaded == {"matplotlib"} and (tmp_path / "kl_curves.png").is_file()


def test_sample_py_reads_no_data_set_and_writes_no_tensorboard(tiny_run, tmp_path):
    """Prior samples of a trained run: the model is built (flax) and restored (orbax); the data set
    and TensorBoard's writer are not touched."""
    loaded = _loaded_after(tmp_path, f"""
        import runpy, sys
        script = runpy.run_path({str(REPO)!r} + "/scripts/sample.py", run_name="sample")
        assert script["main"](["--workdir", {str(tiny_run)!r}, "--out", {str(tmp_path)!r}, "--num", "4"]) == 0
        """)
    assert loaded == {"jax", "flax", "orbax.checkpoint", "matplotlib"}
    assert (tmp_path / "prior.png").is_file()


def test_loading_and_overriding_a_config_imports_no_jax_or_flax(tmp_path):
    """`vae.config` loads a config file without JAX: its checks import the model's names only when
    they run (scripts/benchmark.py parses its --config and --set before JAX starts)."""
    loaded = _loaded_after(tmp_path, f"""
        import sys
        from vae.config import load_config, override
        config = load_config({str(REPO)!r} + "/configs/mlp_small.py")
        override(config, "train.beta=2")
        assert config.train.beta == 2.0
        """)
    assert loaded == set()


def _programs_compiled(tmp_path, body: str) -> list[str]:
    """The names of the programs a fresh interpreter compiles (or loads from the compilation cache)
    while it runs `body`, in order (`jax.log_compiles`)."""
    result = _script(tmp_path, textwrap.dedent("""
        import logging
        import jax

        class Names(logging.Handler):
            names = []

            def emit(self, record):
                if record.getMessage().startswith("Compiling "):
                    self.names.append(record.getMessage().split()[1])

        logging.getLogger("jax").addHandler(Names())
        jax.config.update("jax_log_compiles", True)
        """) + textwrap.dedent(body) + 'print("PROGRAMS", *Names.names)\n')
    assert result.returncode == 0, result.stderr
    return result.stdout.split("PROGRAMS")[-1].split()


def test_a_fused_key_is_split_and_folded_by_one_program_each(tmp_path):
    """Outside a compiled function JAX runs a key's split and fold_in op by op: without its own
    program each, every operation of the threefry hash was a program to lower and load."""
    programs = _programs_compiled(tmp_path, """
        from vae import threefry
        key = threefry.key(3)
        jax.random.split(jax.random.fold_in(key, 1))
        jax.random.fold_in(key, 2)
        """)
    assert programs.count("jit(_fold_in)") == 1 and programs.count("jit(_split)") == 1, programs
    assert len(programs) <= 5, programs  # and the seed's own


def test_a_fresh_train_state_is_two_programs(tmp_path):
    """The model's parameters in one compiled program, the step and the optimizer's state in another
    (op by op, each initialiser's operations were a program each: about 35)."""
    programs = _programs_compiled(tmp_path, f"""
        import numpy as np
        from vae.config import load_config
        from vae.train import state
        config = load_config({str(REPO)!r} + "/configs/mlp_small.py")
        state.init_state(config, (28, 28, 1), state.make_optimizer(config.train, 10), np.full(784, 0.5))
        """)
    assert len(programs) <= 4, programs  # the two, and the seed's key where a program makes it
    assert "jit(_split_model)" in programs


def test_the_compiled_initialisation_is_op_by_op_s_bit_for_bit(tmp_path):
    """`state.init_state` (compiled) against the model built op by op, its optimizer state and
    parameter average made op by op, for each kind of model: every bit the same, so every run starts
    where it did. Under XLA's default flags, whose fused multiply-adds round differently (the
    suite's own compile without them)."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import jax, jax.numpy as jnp, numpy as np
        from flax import nnx
        from vae.config import load_config
        from vae.model import build
        from vae.train import state
        grey, colour = (28, 28, 1), (16, 16, 3)
        for name, shape, stages in [
                ("mlp_small", grey, 1), ("default", grey, 2), ("conv", grey, 1), ("paper_conv_hvae", grey, 1),
                ("ladder", grey, 1), ("fmnist_8bit", grey, 1), ("paper_vampprior", grey, 1),
                ("cifar10", colour, 1), ("cifar10_ladder", colour, 1)]:
            config = load_config({str(REPO)!r} + f"/configs/{{name}}.py")
            m = config.model
            m.hidden_dims, m.latent_dim, m.conv_channels = (24,) * len(m.hidden_dims), 3, (4, 8)
            m.num_pseudo_inputs, m.num_layers, m.decoder_stages, config.train.ema_decay = 5, 2, stages, 0.9
            means = np.random.default_rng(0).uniform(0.05, 0.95, int(np.prod(shape)))
            tx = state.make_optimizer(config.train, 10)
            graphdef, fresh = state.init_state(config, shape, tx, means)
            key = jax.random.fold_in(state.root_key(config.seed), state.INIT)
            expected_graphdef, params = nnx.split(build.build_model(config.model, shape, key, means))
            expected = state.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params),
                                        jax.tree.map(jnp.copy, params))
            assert graphdef == expected_graphdef, name
            got, want = jax.tree.leaves_with_path(fresh), jax.tree.leaves_with_path(expected)
            assert [p for p, _ in got] == [p for p, _ in want], name
            for (path, a), (_, b) in zip(got, want):
                same = (a.dtype, a.shape, a.weak_type) == (b.dtype, b.shape, b.weak_type) and np.array_equal(
                    np.atleast_1d(a).view(np.uint8), np.atleast_1d(b).view(np.uint8))
                print("MISMATCH" if not same else "", name, jax.tree_util.keystr(path))
        """)], capture_output=True, text=True, cwd=REPO, timeout=300,
        env=dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS=""))
    assert result.returncode == 0, result.stderr[-3000:]
    mismatches = [line for line in result.stdout.splitlines() if "MISMATCH" in line]
    assert not mismatches, mismatches[:5]
    assert result.stdout.count("\n") > 50  # every leaf of every model compared


def test_one_epoch_of_training_compiles_each_program_once(tmp_path, fashion_mnist):
    """A one-epoch training on one device compiles (or loads) its programs: the binarisation, the
    initial state, the batch orders, the epoch, the evaluation's key and loop, the KL split and its
    means; no operation runs as a program of its own (op by op, initialising alone was about 35)."""
    programs = _programs_compiled(tmp_path, f"""
        from vae.config import load_config
        from vae.train import loop
        config = load_config({str(REPO)!r} + "/configs/mlp_small.py")
        config.data.train_split, config.data.test_split = "train[:1024]", "test[:256]"
        config.train.batch_size, config.train.num_epochs, config.eval.batch_size = 64, 1, 128
        loop.train_and_evaluate(config, {str(tmp_path / "run")!r}, devices=jax.devices()[:1], progress=False)
        """)
    assert len(programs) <= 12, programs
    assert len(set(programs)) >= len(programs) - 2, programs  # jit(stage) and jit(scanned) twice each
