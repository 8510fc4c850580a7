"""The command-line scripts end to end on a tiny workdir trained by scripts/train.py: PNG/JSON
outputs and clear errors. Where a process of its own proves nothing more, a script's main() runs
in this process (`run_in_process`); each script still runs as a user runs it at least once here."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, copy_run, run_in_process, tiny_config
from vae.analysis import iwae
from vae.train import loop


def run_script(name, *args, expect_ok=True):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, os.path.join(REPO, "scripts", name), *map(str, args)],
                            capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    if expect_ok:
        assert result.returncode == 0, result.stderr[-2000:]
    return result


def run_here(name, *args, expect_ok=True):
    """`run_script` without the process (`run_in_process`): where a process of its own proves
    nothing more. A script that imports JAX takes seconds to start in a process of its own."""
    result = run_in_process(name, *args)
    if expect_ok:
        assert result.returncode == 0, result.stderr[-2000:]
    return result


def assert_png(path, min_size=50):
    assert path.exists(), path
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert min(image.size) >= min_size
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.std() > 5  # not a blank canvas


@pytest.mark.parametrize("mode", ["prior", "reconstruct", "interpolate", "traverse", "manifold"])
def test_sample_writes_a_png(tiny_run, tmp_path, mode):
    run = run_script if mode == "prior" else run_in_process  # the script's own process once
    result = run("sample.py", "--workdir", tiny_run, "--mode", mode, "--num", 16, "--out", tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith(f"{mode}.png")
    assert_png(tmp_path / f"{mode}.png")


def test_sampling_is_deterministic_for_a_seed(tiny_run, tmp_path):
    paths = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        result = run_in_process("sample.py", "--workdir", tiny_run, "--seed", seed, "--num", 9, "--out",
                                tmp_path / name)
        assert result.returncode == 0, result.stderr[-2000:]
        paths.append((tmp_path / name / "prior.png").read_bytes())
    assert paths[0] == paths[1]
    assert paths[0] != paths[2]


def test_plot_kl_overlays_runs(tiny_run, tmp_path):
    result = run_script("plot_kl.py", "--workdir", tiny_run, tiny_run, "--labels", "a", "b",
                        "--out", tmp_path)
    assert "kl_curves.png" in result.stdout
    assert_png(tmp_path / "kl_curves.png")
    assert_png(tmp_path / "kl_per_dim.png")
    assert_png(tmp_path / "kl_split.png")  # the KL term as the stack of I_q(x; z) and KL(q(z) ‖ p(z))


def test_evaluate_writes_eval_json(tiny_run, tmp_path):
    run_script("evaluate.py", "--workdir", tiny_run, "--iw-samples", 20, "--max-examples", 64,
               "--out", tmp_path, "--no-progress")
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["iw_samples"] == 20 and result["num_examples"] == 64 and result["epoch"] == 2
    assert 0 < result["test/nll"] < result["test/elbo"] + 5
    assert result["test/nll_bits_per_dim"] == pytest.approx(result["test/nll"] / (784 * np.log(2)))
    assert result["test/split_examples"] == 64 and 0 < result["test/mutual_info"] <= np.log(64)
    assert result["test/mutual_info"] + result["test/marginal_kl"] == pytest.approx(result["test/split_kl"],
                                                                                    abs=1e-3)


def test_iwae_bound_tightens_with_k(tiny_run):
    nll = {k: iwae.evaluate_workdir(tiny_run, k, max_examples=64, progress=False)["test/nll"]
           for k in (1, 50)}
    elbo = iwae.evaluate_workdir(tiny_run, 1, max_examples=64, progress=False)["test/elbo"]
    assert nll[1] == pytest.approx(elbo, abs=2.0)  # k = 1 is a one-sample ELBO
    assert nll[50] < nll[1]


@pytest.mark.parametrize(
    "script, args, message",
    [
        ("sample.py", ["--workdir", "/nonexistent/run"], "does not exist"),
        ("evaluate.py", ["--workdir", "/nonexistent/run"], "does not exist"),
        ("plot_kl.py", ["--workdir", "/nonexistent/run"], "does not exist"),
    ],
)
def test_bad_arguments_give_one_line(script, args, message):
    run = run_script if script == "plot_kl.py" else run_here  # one refusal in a process of its own
    result = run(script, *args, expect_ok=False)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_workdir_without_checkpoint_or_metrics(tmp_path, tiny_run):
    (tmp_path / "config.json").write_text((tiny_run / "config.json").read_text())
    result = run_in_process("sample.py", "--workdir", tmp_path)
    assert result.returncode == 2 and "no checkpoints" in result.stderr
    assert result.stderr.strip().startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    result = run_script("plot_kl.py", "--workdir", tmp_path, expect_ok=False)
    assert result.returncode == 2 and "no metrics yet" in result.stderr and "Traceback" not in result.stderr


def test_manifold_needs_a_2d_latent_space(tmp_path, fashion_mnist):
    loop.train_and_evaluate(tiny_config(train__num_epochs=1, data__train_split="train[:256]",
                                            data__test_split="test[:128]"), tmp_path, progress=False)
    result = run_in_process("sample.py", "--workdir", tmp_path, "--mode", "manifold")
    assert result.returncode == 2
    assert "2-D latent space" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def evaluate_in_process(*args):
    result = run_in_process("evaluate.py", *args)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


@pytest.mark.slow  # two evaluations; the curve table below quick-tests results.py
def test_results_table_reads_the_evaluated_workdirs(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "tiny")
    evaluate_in_process("--workdir", run, "--iw-samples", 10, "--max-examples", 32, "--no-progress")
    result = json.loads((run / "eval.json").read_text())
    table = run_script("results.py", run, run).stdout  # results.py's own process once
    rows = [line for line in table.splitlines() if line.startswith("| tiny ")]
    assert len(rows) == 2
    assert f"**{result['test/nll']:.2f}** ± {result['test/nll_std_error']:.2f} (k=10), 32 images" in rows[0]
    assert f"| {result['test/elbo']:.2f} ({result['test/bits_per_dim']:.4f} bits/dim) |" in rows[0]
    assert f"; {result['test/nll_bits_per_dim']:.4f} bits/dim" in rows[0]
    assert "MLP relu 64, z=2, N(0, I), ELBO" in rows[0]
    assert "228.70 ± 0.15 (VAE, Gaussian prior)" in rows[0]  # same family on Fashion-MNIST
    assert "| `train[:1024]` |" in rows[0]
    information = f"{result['test/mutual_info']:.2f} of {result['test/split_kl']:.2f} (≤ {np.log(32):.2f})"
    assert f"| {information} |" in rows[0]
    # An evaluation written beside the workdir's own, named by its eval.json.
    evaluate_in_process("--workdir", run, "--iw-samples", 3, "--max-examples", 16, "--no-progress",
                        "--out", run / "quick")
    quick = run_here("results.py", run / "quick" / "eval.json", "--earlier", "results_earlier.md").stdout
    assert "(k=3), 16 images" in quick and "| tiny |" in quick
    assert quick.rstrip().endswith("[results_earlier.md](results_earlier.md).")
    missing = run_here("results.py", tiny_run, expect_ok=False)  # trained, never evaluated
    assert missing.returncode == 2 and "run scripts/evaluate.py on it first" in missing.stderr


def test_the_curve_table_gives_the_validation_elbo_per_epoch_budget(tmp_path, tiny_run):
    from vae.analysis import results

    run = tmp_path / "long"
    run.mkdir()
    records = [{"epoch": e, "val/elbo": 300.0 - e + (3.0 if e == 4 else 0.0), "wall_time_sec": 60.0 * e}
               for e in range(1, 6)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    curve = results.validation_curve(run)
    assert curve["last"] == 5 and curve["best"] == 5 and curve["points"][2] == (298.0, 120.0)
    table = results.curve_table([curve], every=2).splitlines()
    assert table[0] == "| run | epoch 2 | epoch 4 | last epoch | best epoch |"
    assert table[2] == ("| long | 298.00 (2.0 min) | 299.00 (4.0 min) | 5: 295.00 (5.0 min) "
                        "| 5: 295.00 (5.0 min) |")
    with pytest.raises(ValueError, match="at least 1"):
        results.curve_table([curve], every=0)
    # The script: evaluated runs in the results table, more (unfinished) ones in the curve table.
    evaluated = copy_run(tiny_run, tmp_path / "tiny")
    evaluate_in_process("--workdir", evaluated, "--iw-samples", 2, "--max-examples", 16, "--no-progress")
    none_validated = run_here("results.py", evaluated, "--curve_every", 2).stdout
    assert "| tiny |" in none_validated and "epoch budget" not in none_validated
    no_validation = run_here("results.py", evaluated, "--curve_every", 2, "--curves_of", evaluated,
                             expect_ok=False)
    assert no_validation.returncode == 2 and "train it with data.validation_split" in no_validation.stderr
    alone = run_here("results.py", evaluated, "--curves_of", run, expect_ok=False)
    assert alone.returncode == 2 and "--curve_every too" in alone.stderr
    lines = (evaluated / "metrics.jsonl").read_text().splitlines()  # as if it had validated
    (evaluated / "metrics.jsonl").write_text("".join(
        json.dumps(dict(json.loads(line), **{"val/elbo": 250.0 - i})) + "\n" for i, line in enumerate(lines)))
    out = run_here("results.py", evaluated, "--curve_every", 2, "--curves_of", run).stdout
    assert "| tiny | 249.00 (" in out
    assert out.rstrip().endswith("| 5: 295.00 (5.0 min) | 5: 295.00 (5.0 min) |")
    assert "| long | 298.00 (2.0 min) |" in out


def test_results_finds_the_config_file_in_the_recorded_command():
    from vae.analysis import results

    assert results.config_file("scripts/train.py --config configs/paper_vae.py --workdir r") == \
        "configs/paper_vae.py"
    assert results.config_file("scripts/train.py --config=configs/x.py --workdir r") == "configs/x.py"
    assert results.config_file("scripts/train.py --workdir r") == ""


def test_a_quick_evaluation_keeps_the_headline_number(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "tiny")
    evaluate_in_process("--workdir", run, "--iw-samples", 12, "--max-examples", 32, "--no-progress")
    quick = evaluate_in_process("--workdir", run, "--iw-samples", 2, "--max-examples", 32, "--no-progress")
    assert "eval.json keeps the stronger k=12 evaluation of 32 images" in quick.stderr
    assert json.loads((run / "eval.json").read_text())["iw_samples"] == 12
    assert sorted(p.name for p in (run / "evals").iterdir()) == ["k12_latest-e2_n32.json",
                                                                 "k2_latest-e2_n32.json"]
    assert "(k=12), 32 images" in run_here("results.py", run).stdout  # the table takes the strongest
    more = evaluate_in_process("--workdir", run, "--iw-samples", 2, "--max-examples", 48, "--no-progress")
    assert "eval.json now holds it" in more.stderr  # more test images: stronger
    assert json.loads((run / "eval.json").read_text())["num_examples"] == 48


@pytest.mark.parametrize("script", ["train.py", "sweep.py"])
def test_help_lists_the_flags_and_every_config_field(script):
    run = run_script if script == "train.py" else run_here  # the help of a process of its own once
    result = run(script, "--help", "--config", "configs/mlp_small.py")
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert "--workdir" in result.stdout
    assert "the config file (default: configs/default.py)" in result.stdout
    assert "Config fields of configs/mlp_small.py; override any with --config.FIELD=VALUE:" in result.stdout
    beta = next(line for line in result.stdout.splitlines() if line.startswith("  --config.train.beta="))
    assert "--config.train.beta=1.0" in beta and "weight of the KL term" in beta
    assert "--config.model.hidden_dims=(400,)" in result.stdout  # the variant's value, the default's comment
