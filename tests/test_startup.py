"""Start-up and exit: what the scripts skip to start and end sooner still leaves everything done.

`cli.run_script` ends the process without the interpreter's teardown; the image shape recorded in
config.json lets a trained run be read back without the data set.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO, copy_run

from vae.train import trained
from vae.workdir import files


def _script(tmp_path, body: str) -> subprocess.CompletedProcess:
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(body))
    return subprocess.run([sys.executable, str(path)], capture_output=True, text=True, cwd=REPO, timeout=60,
                          env=dict(os.environ, PYTHONPATH=REPO))


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
