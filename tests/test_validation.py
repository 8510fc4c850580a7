"""Bad input: every config value is either accepted or refused with one clear line, before compute."""

import os
import pathlib
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import REPO, property_examples, run_in_process, tiny_config
from vae.config import ConfigError, validate_config

values = st.one_of(st.integers(-5, 10_000), st.floats(allow_nan=True, allow_infinity=True),
                   st.text(max_size=8), st.booleans(), st.none())
FIELDS = {
    "seed": values,
    "data.binarize": st.one_of(st.sampled_from(["dynamic", "static", "none"]), values),
    "model.arch": st.one_of(st.sampled_from(["mlp", "conv"]), values),
    "model.latent_dim": values,
    "model.hidden_dims": st.one_of(st.lists(st.integers(-2, 50), max_size=3).map(tuple), values),
    "train.num_epochs": values,
    "train.batch_size": values,
    "train.learning_rate": values,
    "train.beta": values,
    "train.free_bits": values,
    "train.kl_warmup_epochs": values,
    "train.optimizer": st.one_of(st.sampled_from(["adam", "adamw", "sgd"]), values),
    "eval.batch_size": values,
    "data.folder_test_fraction": st.one_of(st.floats(0, 1), values),
    "data.image_size": st.one_of(st.lists(st.integers(-1, 64), max_size=3).map(tuple), values),
    "model.num_layers": values,
    "model.latent_dims": st.one_of(st.lists(st.integers(-1, 50), max_size=9).map(tuple), values),
    "model.ladder_merge": st.one_of(st.sampled_from(["residual", "precision", "sum"]), values),
    "model.bottleneck": values,
    "model.latent_channels": values,
}


def is_number(v):
    return isinstance(v, int | float) and not isinstance(v, bool) and abs(v) < float("inf")


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def expected_valid(field, value, num_devices):
    """An oracle written independently of vae.config.checks."""
    return {
        "seed": lambda v: is_int(v),
        "data.binarize": lambda v: v in ("dynamic", "static"),  # 'none' needs a non-Bernoulli likelihood
        "model.arch": lambda v: v in ("mlp", "conv"),
        "model.latent_dim": lambda v: is_int(v) and v >= 1,
        "model.hidden_dims": lambda v: isinstance(v, tuple) and len(v) >= 1 and all(
            is_int(h) and h >= 1 for h in v),
        "train.num_epochs": lambda v: is_int(v) and v >= 0,
        "train.batch_size": lambda v: is_int(v) and v >= 1 and v % num_devices == 0,
        "train.learning_rate": lambda v: is_number(v) and v > 0,
        "train.beta": lambda v: is_number(v) and v >= 0,
        "train.free_bits": lambda v: is_number(v) and v >= 0,
        "train.kl_warmup_epochs": lambda v: is_number(v) and v >= 0,
        "train.optimizer": lambda v: v in ("adam", "adamw"),
        "eval.batch_size": lambda v: is_int(v) and v >= 1 and v % num_devices == 0,
        "data.folder_test_fraction": lambda v: is_number(v) and 0 <= v < 1,  # validation's is 0
        "data.image_size": lambda v: v == (),  # a TFDS data set keeps its size
        "model.num_layers": lambda v: is_int(v) and v >= 1,
        # () or one size per layer: tiny_config keeps the default's 8 layers
        "model.latent_dims": lambda v: v == () or (isinstance(v, tuple) and len(v) == 8 and all(
            is_int(d) and d >= 1 for d in v)),
        "model.ladder_merge": lambda v: v in ("residual", "precision"),
        "model.bottleneck": lambda v: is_number(v) and 0 < v <= 4,
        "model.latent_channels": lambda v: is_int(v) and v >= 1,
    }[field](value)


def with_value(field, value):
    config = tiny_config()
    section, _, leaf = field.rpartition(".")
    node = config[section] if section else config
    with node.ignore_type():
        node[leaf] = value
    return config


@pytest.mark.property
@settings(max_examples=property_examples(400))
@given(data=st.data(), num_devices=st.sampled_from([1, 2, 4]))
def test_each_value_is_accepted_or_refused_with_a_config_error(data, num_devices):
    field = data.draw(st.sampled_from(sorted(FIELDS)))
    value = data.draw(FIELDS[field])
    config = with_value(field, value)
    section, _, leaf = field.rpartition(".")
    value = (config[section] if section else config)[leaf]  # as stored: ConfigDict coerces some types
    valid = expected_valid(field, value, num_devices)
    try:
        validate_config(config, num_devices)
    except ConfigError as e:
        message = str(e)
        assert not valid, f"{field}={value!r} is valid but was refused: {message}"
        assert "\n" not in message and field.rpartition(".")[2] in message
        return
    assert valid, f"{field}={value!r} was accepted"


def test_every_config_is_valid():
    import importlib
    import pathlib

    names = sorted(p.stem for p in (pathlib.Path(__file__).parents[1] / "configs").glob("*.py")
                   if p.stem != "__init__")
    assert {"default", "vae", "hvae_long", "paper_conv_hvae", "fmnist_8bit"} <= set(names)
    for name in names:
        module = importlib.import_module(f"configs.{name}")
        validate_config(module.get_config(), 1)


def test_the_numbers_a_sweep_may_vary_are_read_from_the_config_fields_the_schema_names():
    from vae.config import HYPER_FIELDS, get_field
    from vae.train import state

    assert tuple(HYPER_FIELDS) == state.Hyper._fields  # one name each, in Hyper's order
    config = tiny_config()
    config.seed, config.train.beta, config.train.skip_threshold = 7, 0.25, 123.0
    hyper = state.hyperparameters(config)
    assert (hyper.seed, hyper.beta, hyper.skip_threshold) == (7, 0.25, 123.0)
    assert hyper == tuple(get_field(config, field) for field in HYPER_FIELDS.values())


# Every kind of refusal of scripts/train.py's command line, in this process: a config check, a data
# check, a data set name that is a path, a config field and a value that do not parse.
@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.train.learning_rate=0", "train.learning_rate must be a finite number > 0"),
        ("--config.train.learning_rate=-1e-3", "train.learning_rate must be a finite number > 0"),
        ("--config.train.learning_rate=inf", "train.learning_rate must be a finite number > 0"),
        ("--config.model.latent_dim=0", "model.latent_dim must be an integer >= 1"),
        ("--config.train.batch_size=6", "divisible by the number of devices (4)"),
        ("--config.train.beta=-1", "train.beta must be a finite number >= 0"),
        ("--config.model.arch=resnet", "model.arch must be one of"),
        ("--config.model.likelihood=gaussian", "model.likelihood must be one of"),
        ("--config.data.binarize=none", "model.likelihood=bernoulli models binarised pixels"),
        ("--config.model.likelihood=logistic_mixture", "binarises them: set data.binarize=none"),
        ("--config.data.binarize=8bit", "data.binarize must be one of"),
        ("--config.data.name=no_such_dataset", "unknown TFDS data set"),
        ("--config.data.name=~/my_images", "is a path, but data.name takes the name of a TFDS"),
        ("--config.data.name=folder:/nonexistent/images", "the folder /nonexistent/images (data.name="),
        ("--config.data.folder_test_fraction=1", "data.folder_test_fraction must be a number in [0, 1)"),
        ("--config.data.test_split=validation", "split 'validation' is not in fashion_mnist"),
        ("--config.data.data_dir=/nonexistent/tfds", "is not prepared in /nonexistent/tfds"),
        ("--config.train.learning_ratex=1", "unknown config field train.learning_ratex (did you mean "
                                            "train.learning_rate?)"),
        ("--config.train.batch_size=abc", "train.batch_size: 'abc' is not an integer"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, fashion_mnist, override, message):
    """scripts/train.py as a user runs it, in this process (its start is test_scripts.py's)."""
    result = run_in_process("train.py", "--workdir", tmp_path / "run", override)
    assert result.returncode == 2, result.stderr[-1500:]
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-1500:]
    assert message in lines[0]
    assert not (tmp_path / "run").exists()  # refused before any compute; a failed start leaves no workdir


def test_an_unreadable_data_dir_is_reported(tmp_path):
    from vae.data import source

    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(source.DataError, match="is a file, not a directory"):
        source.check_prepared("fashion_mnist", str(not_a_dir))
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("running as a user who can read any directory (root)")
        with pytest.raises(source.DataError, match="not readable"):
            source.check_prepared("fashion_mnist", str(locked))
    finally:
        locked.chmod(0o755)


# --- every script's flags -------------------------------------------------------------------------


def load_script(name):
    """A script as a module (scripts/ is not a package); its `parse` is what main() calls first."""
    import importlib.util

    path = os.path.join(REPO, "scripts", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def as_int(text):
    try:
        return int(text)
    except ValueError:
        return None


def as_finite(text):
    try:
        value = float(text)
    except ValueError:
        return None
    return value if abs(value) < float("inf") else None


def int_in(lo, hi=None):
    return lambda t: (v := as_int(t)) is not None and v >= lo and (hi is None or v <= hi)


def finite_at_least(lo):
    return lambda t: (v := as_finite(t)) is not None and v >= lo


def int_list_at_least(lo):
    return lambda t: all(int_in(lo)(part) for part in t.split(","))


def one_of(*choices):
    return lambda t: t in choices


def two_ints_at_least(lo):
    return lambda t: len(t.split(",")) == 2 and int_list_at_least(lo)(t)


def member_loops(t):
    return all(part in ("vmap", "unrolled") for part in t.split(","))


CHECKPOINT = {"--checkpoint": one_of("best", "latest"), "--epoch": int_in(1)}
JOINING = {"--num_processes": int_in(1), "--process_id": int_in(0), "--initialization_timeout": int_in(1),
           "--heartbeat_timeout_seconds": int_in(1), "--shutdown_timeout_seconds": int_in(1)}
# config fields of each type, as --config.FIELD=TEXT: the text must parse as the field's type (the
# value's range is validate_config's, the property test above)
CONFIG_OVERRIDES = {"--config.train.batch_size": lambda t: as_int(t.strip()) is not None,
                    "--config.train.learning_rate": lambda t: as_float(t.strip()) is not None,
                    "--config.train.normalize_grads": lambda t: t.strip().lower() in (
                        "true", "false", "1", "0", "yes", "no"),
                    "--config.data.name": lambda t: True,
                    "--config.model.hidden_dims": None}  # a tuple: any outcome, in one line
# script -> (arguments every call needs, {flag: oracle of its text value, or None where either
# outcome is right}); oracles written independently of vae.cli_flags. Every script of scripts/,
# and every flag of each that takes a typed value or a choice (test_the_flags_test_covers_every_flag).
SCRIPT_FLAGS = {
    "sample": (["--workdir", "w"], {
        "--num": int_in(1, 10_000), "--temperature": finite_at_least(0), "--steps": int_in(2, 100),
        "--seed": int_in(0, 2**32 - 1), "--mode": one_of("prior", "reconstruct", "interpolate", "traverse",
                                                         "manifold"),
        "--pixels": one_of("mean", "draw"), **CHECKPOINT}),
    "evaluate": (["--workdir", "w"], {
        "--iw_samples": int_in(1), "--max_examples": int_in(1),
        # the decoder holds batch x chunk images at once: at most 2,000,000 (each alone here; the
        # product with the other's default is checked once the device count is known)
        "--batch_size": int_in(1, 2_000_000), "--chunk_size": int_in(1, 2_000_000), **CHECKPOINT, **JOINING}),
    "train": (["--workdir", "w"], {**JOINING, **CONFIG_OVERRIDES}),
    "sweep": (["--workdir", "w", "--sweep", "train.beta=1,2"], {
        "--member_loop": one_of("auto", "vmap", "unrolled"), **CONFIG_OVERRIDES}),
    "benchmark": ([], {
        "--epochs": int_in(2), "--devices": int_in(1, 4096), "--step_samples": int_in(1),
        "--eval_repeats": int_in(1), "--iw_samples": int_list_at_least(1), "--iw_images": int_in(1),
        "--iw_seconds": finite_at_least(0), "--iw_repeats": int_in(1), "--train_images": int_in(1),
        "--batch_sizes": int_list_at_least(1)}),
    "benchmark_sweep": ([], {
        "--members": int_list_at_least(1), "--vary": one_of("train.beta", "seed"), "--loops": member_loops,
        "--rounds": int_in(2), "--train_images": int_in(1), **CONFIG_OVERRIDES}),
    "benchmark_codecs": (["--eight_bit"], {"--max_examples": int_in(1), "--jpegxl_effort": int_in(1, 10)}),
    "benchmark_single_image": (["--workdir", "w", "--out", "o"], {"--num_images": int_in(1)}),
    "compress": (["--workdir", "w", "--out", "o"], {
        "--channels": one_of("keep", "grey", "rgb"), "--image_size": two_ints_at_least(1),
        "--max_examples": int_in(1), "--block_size": int_in(1, 10_000),
        "--bin_width": lambda t: (v := as_finite(t)) is not None and 1e-6 <= v <= 1,
        "--latent_range": lambda t: (v := as_finite(t)) is not None and 1 <= v <= 1000, **CHECKPOINT}),
    "decompress": (["--workdir", "w", "file", "--out", "o"], CHECKPOINT),
    "launch_local": ([], {"--num_processes": int_in(1), "--local_devices": int_in(1),
                          "--port": int_in(0, 65535), "--grace_seconds": finite_at_least(0)}),
    "make_docs": ([], {"--epochs_scale": finite_at_least(0), "--only": None}),
    "plot_kl": (["--workdir", "w"], {}),
    "publish_notebooks": ([], {"--only": one_of("analyze_run", "kl_divergence"), "--timeout": int_in(1)}),
    "prepare_data": (["--dataset", "folder:images"], {"--image_size": two_ints_at_least(1)}),
    "gather_photos": ([], {"--max_side": int_in(0)}),
    "results": (["w"], {"--curve_every": int_in(0)}),
    "speed_table": (["speed.json"], {}),
}
flag_texts = st.one_of(
    st.integers(-10, 10**7).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "0x10", "1.5", "", " ", "128,512", "4,-1", "7,", "--",
                     "-", "-1", "best", "vmap", "true", "()", "(1,", "[[[[", "1_000"]),
    st.text(max_size=6))


def as_float(text):
    try:
        return float(text)
    except ValueError:
        return None


@pytest.fixture(scope="module")
def scripts():
    return {name: load_script(name) for name in SCRIPT_FLAGS}


def test_the_flags_test_covers_every_flag(scripts):
    """Every script of scripts/ is in SCRIPT_FLAGS, and so is each of its flags that takes a typed
    value or a choice: a new flag joins the property test below."""
    on_disk = {p.stem for p in pathlib.Path(REPO, "scripts").glob("*.py")}
    assert on_disk == set(SCRIPT_FLAGS)
    for name, (_, oracles) in SCRIPT_FLAGS.items():
        typed = {action.option_strings[0] for action in scripts[name].build_parser()._actions
                 if action.option_strings and (action.type not in (None, str) or action.choices)}
        assert typed <= set(oracles), f"{name}: {sorted(typed - set(oracles))} not in SCRIPT_FLAGS"


@pytest.mark.property
@settings(max_examples=property_examples(600))
@given(data=st.data())
def test_each_script_flag_is_accepted_or_refused_in_one_line(scripts, capsys, data):
    name = data.draw(st.sampled_from(sorted(SCRIPT_FLAGS)))
    required, oracles = SCRIPT_FLAGS[name]
    if not oracles:
        return
    flag = data.draw(st.sampled_from(sorted(oracles)))
    text = data.draw(flag_texts)
    oracle = oracles[flag]
    capsys.readouterr()
    try:
        scripts[name].build_parser().parse_args([*required, f"{flag}={text}"])
    except SystemExit as e:
        err = capsys.readouterr().err.strip()
        assert oracle is None or not oracle(text), f"{name} {flag}={text!r} is valid but was refused: {err}"
        assert e.code == 2 and len(err.splitlines()) == 1 and err.startswith("error: argument --"), err
        assert flag in err, err
        return
    assert oracle is None or oracle(text), f"{name} {flag}={text!r} was accepted"


@pytest.mark.parametrize("name, argv, flag", [
    ("evaluate", ["--workdir", "w", "--batch_size=--"], "--batch_size"),
    ("benchmark", ["--batch_sizes=--"], "--batch_sizes"),
    ("publish_notebooks", ["--only=--"], "--only"),  # one or more choices: argparse stored []
    ("train", ["--workdir", "w", "--num_processes=0"], "--num_processes"),
    ("evaluate", ["--workdir", "w", "--heartbeat_timeout_seconds=-5"], "--heartbeat_timeout_seconds"),
])
def test_what_the_property_test_found_is_refused_in_one_line(scripts, capsys, name, argv, flag):
    with pytest.raises(SystemExit) as exit_info:
        scripts[name].build_parser().parse_args(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: argument {flag}"), err


@pytest.mark.parametrize("argv, message", [
    (["prepare_data", "--dataset", " "], "argument --dataset: must name a TFDS data set"),
    (["prepare_data", "--manual_dir", "/nonexistent/files"], "is not a directory"),
    (["prepare_data", "--image_size", "28,28"], "--image_size: takes H,W, for a --dataset folder:PATH"),
    (["plot_kl", "--workdir", "a", "b", "--labels", "x"], "--labels needs one label per workdir"),
    (["benchmark", "--config", "configs/nonexistent.py"], "no config file"),
    (["benchmark", "--set", "train.beta"], "expected FIELD=VALUE"),
    (["sample", "--workdir", "w", "--mode", "nonsense"], "argument --mode: invalid choice"),
])
def test_other_bad_flags_are_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        load_script(argv[0]).build_parser().parse_args(argv[1:])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and message in err, err


def test_benchmark_set_of_an_unknown_field_is_one_line():
    result = subprocess.run([sys.executable, "scripts/benchmark.py", "--set", "train.betta=2", "--synthetic"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("error: argument --set: cannot set train.betta to '2' (unknown config field "
                               "train.betta (did you mean train.beta?))")


def test_one_flag_style_and_the_old_dashed_spellings_still_work(scripts):
    evaluate = scripts["evaluate"]
    parser = evaluate.build_parser()
    new = parser.parse_args(["--workdir", "w", "--iw_samples", "7", "--max_examples", "9", "--noprogress"])
    old = parser.parse_args(["--workdir", "w", "--iw-samples", "7", "--max-examples", "9", "--no-progress"])
    assert vars(new) == vars(old) and new.iw_samples == 7 and new.max_examples == 9 and new.no_progress
