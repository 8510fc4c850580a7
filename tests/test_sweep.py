"""Sweeps: axes and groups, member k equals the single run, each member's workdir is a run's,
resume after a kill between members, early stopping and divergence per member, shape groups."""

import json
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from tests.conftest import run_in_process, tiny_config
from tests.test_scripts import assert_png, run_script
from vae.analysis import iwae
from vae.config import ConfigError
from vae.sweep import driver, program, spec
from vae.train import loop, run_dir, trained
from vae.workdir import files

# Facts of the session, not of the run: times, and how many members trained together that epoch.
SESSION = {"images_per_sec", "epoch_time_sec", "eval_time_sec", "wall_time_sec", "compile_time_sec",
           "sweep/images_per_sec", "sweep/members"}
COMPARED = ("train/elbo", "train/rec", "train/kl", "train/loss", "train/beta", "test/elbo", "test/rec",
            "test/kl")


def without_timing(records):
    return [{k: v for k, v in r.items() if k not in SESSION} for r in records]


def params_of(path, checkpoint="best"):
    _, model, epoch = trained.load_trained(path, checkpoint=checkpoint)
    return epoch, jax.tree.leaves(nnx.state(model, nnx.Param))


def assert_same_run(member_path, member_history, single_path, single_history, rel=1e-5):
    """A sweep member and the single run of its config: the same metrics and parameters."""
    assert [r["epoch"] for r in member_history] == [r["epoch"] for r in single_history]
    for a, b in zip(member_history, single_history):
        for key in COMPARED:
            assert a[key] == pytest.approx(b[key], rel=rel, abs=1e-6), (a["epoch"], key)
        np.testing.assert_allclose(a["test/kl_per_dim"], b["test/kl_per_dim"], rtol=1e-3, atol=1e-4)
    (epoch_a, params_a), (epoch_b, params_b) = params_of(member_path), params_of(single_path)
    assert epoch_a == epoch_b
    for a, b in zip(params_a, params_b):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


# --- What a sweep is (no compute) --------------------------------------------------------------


def test_axes_are_typed_like_their_fields():
    config = tiny_config()
    assert spec.parse_axis("train.beta=0.25,1,4", config) == ("train.beta", [0.25, 1.0, 4.0])
    assert spec.parse_axis("seed=0,1", config) == ("seed", [0, 1])
    assert spec.parse_axis("model.hidden_dims=(400,),(200,200)", config) == (
        "model.hidden_dims", [(400,), (200, 200)])
    assert spec.parse_axis("model.arch=mlp,conv", config) == ("model.arch", ["mlp", "conv"])
    assert spec.parse_axis("config.train.free_bits=0,0.5", config) == ("train.free_bits", [0.0, 0.5])


@pytest.mark.parametrize("text, message", [
    ("train.betta=1,2", "unknown config field"),
    ("train=1,2", "a section"),
    ("seed=0.5,1", r"seed: '0.5' is not an integer"),
    ("model.hidden_dims=(400,),a-b", r"model.hidden_dims: 'a-b' is not a tuple"),
    ("train.beta=1,1.0", "repeated"),
    ("train.beta", "expected FIELD=V1,V2"),
    ("train.beta=1,,2", "an empty value"),
])
def test_bad_axes_are_refused_with_a_clear_message(text, message):
    with pytest.raises(spec.SweepError, match=message):
        spec.parse_axis(text, tiny_config())


def test_members_are_the_cross_product_with_readable_names():
    config = tiny_config()
    members = spec.make_members(config, [("train.beta", [0.5, 2.0]), ("seed", [0, 1])])
    assert [m.name for m in members] == ["beta=0.5,seed=0", "beta=0.5,seed=1", "beta=2,seed=0",
                                         "beta=2,seed=1"]
    assert (members[3].config.train.beta, members[3].config.seed) == (2.0, 1)
    assert config.train.beta == 1.0 and config.seed == 0  # the base config is untouched
    names = [m.name for m in spec.make_members(config, [("train.batch_size", [32]), ("eval.batch_size", [64]),
                                                         ("model.hidden_dims", [(8, 4)])])]
    assert names == ["train.batch_size=32,eval.batch_size=64,hidden_dims=8-4"]  # clashing last parts
    with pytest.raises(spec.SweepError, match="swept twice"):
        spec.make_members(config, [("seed", [0]), ("seed", [1])])


def test_numbers_share_a_program_and_shapes_or_switches_split_it():
    config = tiny_config()
    one = spec.group_members(spec.make_members(config, [("train.beta", [0.5, 2.0]), ("seed", [0, 1])]))
    assert [len(g) for g in one] == [4]
    assert program.varying_hyper([m.config for m in one[0]]) == {"seed": [0, 1, 0, 1],
                                                                "beta": [0.5, 0.5, 2.0, 2.0]}
    assert spec.plan(one, "vmap") == ("4 members train together as one compiled program, the step vmapped "
                                      "over the members' stacked states")
    shapes = spec.group_members(spec.make_members(config, [("model.latent_dim", [2, 4]),
                                                           ("train.learning_rate", [1e-3, 3e-3])]))
    assert [[m.name for m in g] for g in shapes] == [
        ["latent_dim=2,learning_rate=0.001", "latent_dim=2,learning_rate=0.003"],
        ["latent_dim=4,learning_rate=0.001", "latent_dim=4,learning_rate=0.003"]]
    assert "2 groups" in spec.plan(shapes) and "model.latent_dim changes the program" in spec.plan(shapes)
    ema = spec.group_members(spec.make_members(config, [("train.ema_decay", [0.0, 0.5, 0.9])]))
    assert [[m.name for m in g] for g in ema] == [["ema_decay=0"], ["ema_decay=0.5", "ema_decay=0.9"]]


# --- Training ----------------------------------------------------------------------------------

AXES = [("train.beta", [0.5, 2.0]), ("seed", [0, 1])]


@pytest.fixture(scope="module")
def beta_seed_sweep(tmp_path_factory, fashion_mnist):
    path = tmp_path_factory.mktemp("beta_seed")
    return path, driver.train_sweep(tiny_config(train__num_epochs=3), AXES, path, progress=False)


# Slow: members equal to their single runs are quick-tested number by number by
# test_every_traced_number_matches_the_single_run; here 4 members of 3 epochs, unrolled and vmapped.
@pytest.mark.slow  # with the other test on beta_seed_sweep, the quick suite's heaviest training
@pytest.mark.parametrize("member_loop", ["unrolled", "vmap"])
def test_member_k_equals_the_single_run(tmp_path, beta_seed_sweep, member_loop):
    path, histories = beta_seed_sweep
    if member_loop == "vmap":  # the fixture ran the default loop (unrolled on CPU); the other one here
        path = tmp_path / "vmap"
        histories = driver.train_sweep(tiny_config(train__num_epochs=3), AXES, path, progress=False,
                                      member_loop="vmap")
    single = loop.train_and_evaluate(tiny_config(train__num_epochs=3, train__beta=2.0, seed=1),
                                      tmp_path / "single", progress=False)
    assert_same_run(path / "beta=2,seed=1", histories["beta=2,seed=1"], tmp_path / "single", single)
    # Four different runs, not one run four times: the seeds and the betas tell.
    finals = {name: h[-1]["train/elbo"] for name, h in histories.items()}
    assert len(set(finals.values())) == 4
    assert histories["beta=0.5,seed=1"][-1]["train/beta"] == 0.5


def test_every_traced_number_matches_the_single_run(tmp_path, fashion_mnist):
    """Two members that differ in every shape-free number at once, through the vmapped step and
    the stepwise epoch loop: each equals its single run."""
    base = dict(train__num_epochs=2, train__epoch_loop="steps", train__optimizer="adamw",
                train__lr_schedule="cosine")
    numbers = [dict(seed=0, train__learning_rate=1e-3, train__free_bits=0.0, train__kl_warmup_epochs=0.0,
                    train__ema_decay=0.5, train__weight_decay=0.0, train__grad_clip_norm=5.0,
                    train__skip_threshold=0.0, train__beta=1.0),
               dict(seed=1, train__learning_rate=3e-3, train__free_bits=0.2, train__kl_warmup_epochs=1.5,
                    train__ema_decay=0.9, train__weight_decay=1e-3, train__grad_clip_norm=50.0,
                    train__skip_threshold=1e6, train__beta=2.0)]
    members = [spec.Member(f"m{i}", {"index": i}, tiny_config(**base, **n)) for i, n in enumerate(numbers)]
    assert len(program.varying_hyper([m.config for m in members])) == 9  # all Hyper fields
    histories = driver.train_members(members, tmp_path / "sweep", progress=False, member_loop="vmap")
    for member, n in zip(members, numbers):
        single = loop.train_and_evaluate(tiny_config(**base, **n), tmp_path / member.name, progress=False)
        assert_same_run(tmp_path / "sweep" / member.name, histories[member.name], tmp_path / member.name,
                        single)


@pytest.mark.slow  # 3 epochs of 4 members again; the host feed serves multi-process runs (slow)
def test_a_sweep_fed_from_the_host_trains_as_one_fed_on_the_device(tmp_path, beta_seed_sweep):
    """Sweeps take the host feed (a run over several processes), members with seeds of their own
    included: the same batches, the same numbers as the device feed."""
    path, histories = beta_seed_sweep
    fed = driver.train_sweep(tiny_config(train__num_epochs=3, train__batch_source="host"), AXES,
                             tmp_path / "host", progress=False)
    for name, history in histories.items():
        assert_same_run(path / name, history, tmp_path / "host" / name, fed[name])


@pytest.mark.slow  # a sweep of its own; its members' numbers are quick-tested against single runs above
def test_each_member_is_a_single_runs_workdir(beta_seed_sweep):
    path, histories = beta_seed_sweep
    record = json.loads((path / files.SWEEP_FILE).read_text())
    assert record["axes"] == {"train.beta": [0.5, 2.0], "seed": [0, 1]}
    assert list(files.member_workdirs(path)) == list(histories) == [m["name"] for m in record["members"]]
    for name, member_dir in files.member_workdirs(path).items():
        config = files.read_config(member_dir)
        assert name == f"beta={config.train.beta:g},seed={config.seed}"
        records = files.read_metrics(member_dir)
        assert records == json.loads(json.dumps(histories[name]))
        assert [r["epoch"] for r in records] == [1, 2, 3]
        fields = {"test/elbo", "test/kl_per_dim", "test/active_units", "images_per_sec", "sweep/members"}
        assert fields <= set(records[-1])
        checkpoints = (member_dir / "checkpoints").iterdir()
        assert sorted(int(p.name) for p in checkpoints if p.name.isdigit()) == [1, 2, 3]
        assert trained.load_trained(member_dir)[2] == 3
    assert (path / driver.RATE_DISTORTION_FILE).stat().st_size > 10_000


@pytest.mark.slow  # a kill and a resume; test_the_sweep_script_and_the_tools_on_its_members resumes too
def test_a_sweep_resumes_after_a_kill_between_two_members_checkpoints(tmp_path, beta_seed_sweep):
    """Killed after epoch 2 was written for three members but not the fourth: the resumed sweep
    trains that member's epoch 2 alone (the others wait, frozen), then all of them, and ends where
    the uninterrupted sweep did, bit for bit."""
    path, histories = beta_seed_sweep
    driver.train_sweep(tiny_config(train__num_epochs=2), AXES, tmp_path, progress=False)
    shutil.rmtree(tmp_path / "beta=2,seed=0" / "checkpoints" / "2")
    resumed = driver.train_sweep(tiny_config(train__num_epochs=3), AXES, tmp_path, progress=False)
    for name in histories:
        assert without_timing(resumed[name]) == without_timing(histories[name]), name
        for a, b in zip(params_of(tmp_path / name)[1], params_of(path / name)[1]):
            np.testing.assert_array_equal(a, b)
    again = driver.train_sweep(tiny_config(train__num_epochs=3), AXES, tmp_path, progress=False)
    for name in histories:
        assert without_timing(again[name]) == without_timing(resumed[name])


def selection_config(**overrides):
    """A tiny run that overfits 64 images fast, so the validation ELBO turns within ~10 epochs."""
    config = tiny_config(train__num_epochs=30, data__test_split="test[:64]", **overrides)
    config.data.train_split, config.data.validation_split = "train[:64]", "train[64:320]"
    config.model.hidden_dims, config.model.latent_dim = (256,), 8
    config.train.early_stopping_patience = 3
    return config


@pytest.mark.slow  # up to 30 epochs of 2 members and their single runs; early stopping of one run is
# a quick test in test_selection.py, members equal to their single runs are quick tests here
def test_members_stop_early_on_their_own_and_keep_their_best_checkpoint(tmp_path, fashion_mnist):
    axes = [("train.learning_rate", [3e-2, 1e-2])]
    histories = driver.train_sweep(selection_config(), axes, tmp_path / "sweep", progress=False)
    stops = set()
    for lr, name in zip([3e-2, 1e-2], histories):
        single = loop.train_and_evaluate(selection_config(train__learning_rate=lr), tmp_path / name,
                                          progress=False)
        history = histories[name]
        assert [r["best/epoch"] for r in history] == [r["best/epoch"] for r in single]
        best = run_dir.best_epoch(history)[0]
        assert history[-1]["epoch"] in (best + 3, 30)  # stopped by patience, or ran all epochs
        assert trained.load_trained(tmp_path / "sweep" / name)[2] == best  # the best/ checkpoint
        assert_same_run(tmp_path / "sweep" / name, history, tmp_path / name, single, rel=1e-4)
        stops.add(history[-1]["epoch"])
    assert len(stops) == 2 and min(stops) < 30  # one member stopped early while the other went on


def test_a_diverging_member_stops_alone(tmp_path, fashion_mnist):
    axes = [("train.learning_rate", [1e-3, 1e4])]
    diverged = r"member learning_rate=10000: the (loss became|test/elbo is) nan"
    with pytest.raises(run_dir.NonFiniteLossError, match=diverged):
        driver.train_sweep(tiny_config(), axes, tmp_path, progress=False)
    assert [r["epoch"] for r in files.read_metrics(tmp_path / "learning_rate=0.001")] == [1, 2]
    assert not files.read_metrics(tmp_path / "learning_rate=10000")


@pytest.mark.slow  # groups of shapes; one group's members are quick-tested
def test_a_shape_sweep_trains_as_groups_and_says_so(tmp_path, fashion_mnist, capsys):
    axes = [("model.latent_dim", [2, 3]), ("train.beta", [1.0, 2.0])]
    histories = driver.train_sweep(tiny_config(train__num_epochs=1), axes, tmp_path, progress=True)
    assert "4 members in 2 groups of 2/2" in capsys.readouterr().err
    assert {name: len(h[-1]["test/kl_per_dim"]) for name, h in histories.items()} == {
        "latent_dim=2,beta=1": 2, "latent_dim=2,beta=2": 2,
        "latent_dim=3,beta=1": 3, "latent_dim=3,beta=2": 3}


def test_a_bad_member_is_refused_before_any_compute(tmp_path):
    with pytest.raises(ConfigError, match="member free_bits=0.5: train.free_bits needs"):
        driver.train_sweep(tiny_config(model__prior="vampprior"), [("train.free_bits", [0.0, 0.5])],
                                 tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.slow  # the script end to end; the sweep's numbers and members are quick-tested in process
def test_the_sweep_script_and_the_tools_on_its_members(tmp_path, fashion_mnist):
    out = tmp_path / "beta"
    args = ["--config", "configs/mlp_small.py", "--workdir", out, "--sweep", "train.beta=0.5,2",
            "--noprogress",
            "--config.data.train_split=train[:512]", "--config.data.test_split=test[:256]",
            "--config.model.hidden_dims=(32,)", "--config.model.latent_dim=3", "--config.train.num_epochs=1",
            "--config.train.batch_size=64", "--config.eval.batch_size=128"]
    result = run_script("sweep.py", *args)
    assert "2 members train together as one compiled program" in result.stderr
    assert "beta=2: epoch 1, test -elbo" in result.stderr
    assert_png(out / "rate_distortion.png")
    assert files.read_config(out / "beta=2").train.beta == 2.0
    again = run_in_process("sweep.py", *args)  # again: resumes, nothing left to train
    assert again.returncode == 0, again.stderr[-2000:]
    assert [len(files.read_metrics(out / name)) for name in ("beta=0.5", "beta=2")] == [1, 1]
    plots = run_in_process("plot_kl.py", "--workdir", out)  # its own process in test_scripts.py
    assert plots.returncode == 0, plots.stderr[-2000:]
    plots = plots.stdout
    assert "rate_distortion.png" in plots
    assert_png(out / "kl_curves.png")
    # A member is a run: what sample.py and evaluate.py call takes it as it is.
    result = iwae.evaluate_workdir(out / "beta=0.5", 5, max_examples=32, progress=False)
    assert result["epoch"] == 1 and result["checkpoint"] == "latest" and 0 < result["test/nll"]
    bad = run_in_process("sweep.py", "--workdir", tmp_path / "bad", "--sweep", "train.betta=1,2")
    assert bad.returncode == 2 and "unknown config field" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()
