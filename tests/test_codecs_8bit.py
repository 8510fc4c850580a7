"""The standard codecs' tables: the 8-bit codecs round-trip grey and colour images exactly (and a
lossy one is caught), their sizes against a direct computation, the markdown with the model's
rows from an eval.json, `scripts/benchmark_codecs.py --eight_bit` end to end; the 1-bit path on
a few images. Small images and low JPEG XL efforts: seconds."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import codecs, codecs_8bit
from tests.conftest import REPO, tiny_config, train_tiny_8bit

RNG = np.random.default_rng(0)


def structured(n, h, w, channels=()):
    """Smooth gradients with a few edges: what the codecs' predictors are made for."""
    y, x = np.mgrid[:h, :w]
    images = [(3 * y + 5 * x + 17 * i + 40 * ((x // 3 + y // 4) % 2)) % 256 for i in range(n)]
    images = np.stack(images).astype(np.uint8)
    if channels:
        images = np.stack([images, 255 - images, images // 2], axis=-1)
    return images


CASES = {
    "grey random": RNG.integers(0, 256, (5, 9, 7), dtype=np.uint8),
    "grey structured": structured(7, 12, 10),
    "grey N x H x W x 1": structured(3, 8, 8)[..., None],
    "colour random": RNG.integers(0, 256, (4, 6, 5, 3), dtype=np.uint8),
    "colour structured": structured(6, 10, 9, channels=(3,)),
    "one image, all 255": np.full((1, 4, 4), 255, np.uint8),
}


@pytest.mark.parametrize("case", CASES)
def test_every_8bit_codec_round_trips(case):
    images = CASES[case]
    pixels = codecs_8bit.as_images(images)
    # Each codec directly, on each image and on the mosaic.
    everything = codecs_8bit.image_codecs(jpegxl_effort=3) | codecs_8bit.byte_codecs()
    for name, (encode, decode) in everything.items():
        for image in [*pixels, codecs.mosaic(pixels, columns=codecs_8bit.mosaic_columns(len(pixels)))]:
            assert np.array_equal(decode(encode(image), image.shape), image), name
    rows = codecs_8bit.measure(images, jpegxl_effort=3)
    assert [r["codec"] for r in rows] == list(everything) and all(r["lossless"] for r in rows)
    assert {"PNG (optimize, level 9)", "WebP lossless (method 6)", "JPEG XL lossless (effort 3)",
            "bz2 -9 (raw bytes)", "xz -9e (raw bytes)", "zstd -22 (raw bytes)"} <= set(everything)


def test_the_default_effort_round_trips_and_names_itself():
    images = structured(2, 8, 8)
    (name, (encode, decode)), = [(k, v) for k, v in codecs_8bit.image_codecs().items()
                                 if k.startswith("JPEG XL")]
    effort = codecs_8bit.JPEGXL_EFFORT
    assert name == f"JPEG XL lossless (effort {effort})" and effort == 10
    assert np.array_equal(decode(encode(images[0]), images[0].shape), images[0])


def test_a_lossy_codec_or_a_grey_webp_with_colour_is_caught(monkeypatch):
    images = structured(3, 8, 8)
    lossy = (lambda image: codecs_8bit.png(image & 0xFE), codecs_8bit._png_decode)
    monkeypatch.setattr(codecs_8bit, "image_codecs", lambda jpegxl_effort: {"lossy PNG": lossy})
    with pytest.raises(AssertionError, match="lossy PNG did not decode"):
        codecs_8bit.measure(images)
    # WebP codes grey as RGB: a file whose channels differ does not decode as grey.
    colour = codecs_8bit.webp(structured(1, 8, 8, channels=(3,))[0])
    assert codecs_8bit._webp_decode(colour, (8, 8)) is None
    assert codecs_8bit._webp_decode(colour, (8, 8, 3)).shape == (8, 8, 3)


def test_shapes_and_dtypes_the_8bit_codecs_refuse():
    for bad in (np.zeros((2, 4, 4), np.uint16), np.zeros((2, 4, 4, 2), np.uint8), np.zeros((4, 4), np.uint8),
                np.zeros((0, 4, 4), np.uint8)):
        with pytest.raises(ValueError):
            codecs_8bit.as_images(bad)


@pytest.mark.parametrize("case", ["grey structured", "colour random"])
def test_sizes_against_a_direct_computation(case):
    images = CASES[case]
    n, dims = len(images), images[0].size  # H · W · C
    rows = {r["codec"]: r for r in codecs_8bit.measure(images, jpegxl_effort=3)}
    png = rows["PNG (optimize, level 9)"]
    per_image = sum(len(codecs_8bit.png(image)) for image in images)
    whole = len(codecs_8bit.png(codecs.mosaic(images, columns=n)))
    assert png["per_image_total_bytes"] == per_image and png["per_image_bytes"] == per_image / n
    assert png["whole_bytes"] == whole
    assert png["whole_bits_per_dim"] == pytest.approx(whole * 8 / (n * dims))
    assert png["per_image_bits_per_dim"] == pytest.approx(per_image * 8 / (n * dims))
    assert png["whole_nats_per_image"] == pytest.approx(whole * 8 * math.log(2) / n)
    xz = rows["xz -9e (raw bytes)"]
    assert xz["whole_bytes"] == len(codecs.xz_compress(images.tobytes()))
    assert codecs_8bit.sizes(1000, 4, 784) == pytest.approx({"bits_per_dim": 8000 / (4 * 784),
                                                    "nats_per_image": 8000 * math.log(2) / 4})


def test_the_mosaic_tiles_grey_and_colour_images_row_by_row():
    for images in (RNG.integers(0, 256, (7, 3, 2), dtype=np.uint8),
                   RNG.integers(0, 256, (7, 3, 2, 3), dtype=np.uint8)):
        tiled = codecs.mosaic(images, columns=3)
        assert tiled.shape == (9, 6, *images.shape[3:])
        for i, image in enumerate(images):
            r, c = divmod(i, 3)
            assert np.array_equal(tiled[3 * r:3 * r + 3, 2 * c:2 * c + 2], image)
        assert not tiled[6:, 2:].any()  # the padding
    assert codecs_8bit.mosaic_shape((10_000, 28, 28)) == [2800, 2800]
    assert codecs_8bit.mosaic_shape((3, 4, 5, 3)) == [4, 15, 3]


EVAL = {"epoch": 40, "num_examples": 6, "iw_samples": 1000, "test/nll": 2000.0, "test/elbo": 2100.0,
        "test/bits_per_dim": 2100.0 / (270 * math.log(2)),
        "test/nll_bits_per_dim": 2000.0 / (270 * math.log(2))}


def result(images, evaluation=None, workdir=None):
    pixels = codecs_8bit.as_images(images)
    dims = math.prod(pixels.shape[1:])
    return {"data": "fashion_mnist", "split": "test", "workdir": workdir, "eight_bit": True,
            "num_images": len(pixels), "image_shape": list(images.shape[1:]), "dims_per_image": dims,
            "mosaic_columns": codecs_8bit.mosaic_columns(len(pixels)),
            "mosaic_shape": codecs_8bit.mosaic_shape(pixels.shape),
            "jpegxl_effort": 3, "codecs": codecs_8bit.measure(pixels, jpegxl_effort=3),
            "evaluation": evaluation,
            "model": codecs_8bit.model_rows(evaluation, dims) if evaluation else [],
            "run": {"command": "python scripts/benchmark_codecs.py --eight_bit", "date": "2026-01-01",
                    "wall_sec": 1.0, "others_cpu": 0.1, "machine": codecs_8bit.machine()}}


def test_the_markdown_has_the_model_rows_when_given_an_eval_json():
    images = CASES["colour structured"]  # 6 images of 10 x 9 x 3 = 270 values
    text = codecs_8bit.markdown(result(images, EVAL, workdir="runs/w"))
    nll_bpd, elbo_bpd = 2000.0 / (270 * math.log(2)), 2100.0 / (270 * math.log(2))
    assert f"| *the model's IWAE NLL, k = 1,000 (a bound, not a file)* | | {nll_bpd:.4f} | 2,000.0 |" in text
    assert f"| *the model's -ELBO (a bound, not a file)* | | {elbo_bpd:.4f} | 2,100.0 |" in text
    assert "`runs/w/eval.json`" in text and "`python scripts/benchmark_codecs.py --eight_bit`" in text
    rows = [line for line in text.splitlines() if line.startswith("| ")][2:]
    assert len(rows) == 6 + 2 and rows[0].startswith("| **")  # the best codec first, in bold
    model = codecs_8bit.model_rows(EVAL, 270)
    assert [r["figure"] for r in model] == ["iwae_nll", "neg_elbo"]
    for row in model:
        assert row["bits_per_dim"] == pytest.approx(row["eval_bits_per_dim"])
    # On other images than the table's: said so; without an evaluation: no model rows.
    page = codecs_8bit.markdown(result(images, EVAL | {"num_examples": 10_000}, "w"))
    assert "on its 10,000 test images" in page
    bare = codecs_8bit.markdown(result(images))
    assert "the model's" not in bare and "eval.json" not in bare
    assert len([line for line in bare.splitlines() if line.startswith("| ")]) == 2 + 6


def test_the_bits_back_row_without_one_file_per_image_says_so():
    """--whole_set_only: the model's row has its whole-set cells, empty per-image cells, and the
    page says the per-image code was not measured."""
    images = CASES["colour structured"]  # 6 images of 10 x 9 x 3 = 270 values
    compress = {"bytes": 900, "bits_per_dim": 7200 / (6 * 270), "coding_time_sec": 0.5,
                "overhead_vs_elbo": 0.001, "elbo_bits_per_dim": 4.4, "images_per_sec": 12.0}
    bits_back = {"compress": compress, "decompress": {"images_per_sec": 11.0}, "round_trip_exact": True,
                 "compress_wall_sec": 3.0, "decompress_wall_sec": 3.0}
    text = codecs_8bit.markdown(result(images, EVAL, workdir="runs/w") | {"bits_back": bits_back})
    row = next(line for line in text.splitlines() if "bits-back ANS" in line).replace("**", "")
    nats = 7200 * math.log(2) / 6
    assert row.endswith(f"| 900 | {7200 / (6 * 270):.4f} | {nats:,.1f} | 0.50 | | | | |")
    assert "one file per image: not measured for the model (`--whole_set_only`)." in text
    assert "decompressed exactly: True" in text


def test_the_1bit_codecs_on_a_few_images():
    images = RNG.random((5, 28, 28)) < 0.3
    rows = codecs.measure_codecs(images)
    assert [r["codec"] for r in rows][:2] == ["PNG 1-bit", "WebP lossless"] and len(rows) >= 5
    assert all(r["whole_bits_per_dim"] == 8 * r["whole_bytes"] / (5 * 784) for r in rows)
    # The mosaic as it was before it took colour images.
    old = np.zeros((100, 28, 28), bool)
    old[:5] = images
    old = old.reshape(1, 100, 28, 28).transpose(0, 2, 1, 3).reshape(28, 2800)
    assert np.array_equal(codecs.mosaic(images), old)


def run_script(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    script = os.path.join(REPO, "scripts", "benchmark_codecs.py")
    return subprocess.run([sys.executable, script, *map(str, args)], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=300)


def workdir(path, binarize, evaluation):
    config = tiny_config().to_dict()
    config["data"] |= {"binarize": binarize, "test_split": "test[:6]"}
    config["run"] = {"command": "scripts/train.py ..."}
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config, default=list))
    if evaluation:
        (path / "eval.json").write_text(json.dumps(evaluation))
    return path


@pytest.mark.slow  # trains, evaluates and runs the script; the parts are quick-tested
def test_the_8bit_table_end_to_end(tmp_path, fashion_mnist):
    """A real 8-bit run (one epoch on a slice), evaluated: the codecs, its bits-back file through
    compress.py and decompress.py, and its bounds from eval.json, on the same 6 test images."""
    from vae.analysis import iwae
    from vae.workdir import files

    run = train_tiny_8bit(tmp_path / "w", "train[:512]")
    files.save_evaluation(run, iwae.evaluate_workdir(run, num_samples=10, progress=False))
    out = tmp_path / "table"
    done = run_script("--eight_bit", "--workdir", run, "--jpegxl_effort", "3", "--out", out)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["num_images"] == 8 and record["image_shape"] == [28, 28, 1]
    assert record["split"] == "test[:8]" and record["data"] == "fashion_mnist"
    assert len(record["codecs"]) == 6 and all(r["lossless"] for r in record["codecs"])
    assert [r["figure"] for r in record["model"]] == ["iwae_nll", "neg_elbo"]
    bits_back = record["bits_back"]
    assert bits_back["round_trip_exact"] and bits_back["compress"]["images"] == 8
    per_image = bits_back["per_image"]  # each image alone: a header and no bits back in every file
    assert per_image["per_image_bytes"] > bits_back["compress"]["bytes"] / 8
    text = out.with_suffix(".md").read_text()
    assert "IWAE NLL, k = 10" in text and "bits-back ANS with the VAE" in text
    assert f"{bits_back['compress']['bits_per_dim']:.4f}" in text
    assert f"{per_image['per_image_bits_per_dim']:.4f}" in text
    assert "--eight_bit --workdir" in text and text == done.stdout.rstrip("\n") + "\n"


def test_the_8bit_table_refuses_with_one_line(tmp_path, capsys):
    """A binarised model, one without an eval.json, flags of the other table: exit status 2, one
    line, nothing written (in this process: the script's main)."""
    spec = importlib.util.spec_from_file_location("benchmark_codecs", os.path.join(REPO, "scripts",
                                                                                    "benchmark_codecs.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    refusals = (("b", "dynamic", EVAL, "trained on binarised images (data.binarize=dynamic)"),
                ("e", "none", None, "has no eval.json for the model's rows: run `python scripts/evaluate.py"))
    for name, binarize, evaluation, says in refusals:
        args = ["--eight_bit", "--workdir", str(workdir(tmp_path / name, binarize, evaluation)),
                "--out", str(tmp_path / name / "out")]
        with pytest.raises(SystemExit) as exit:
            script.main(args)
        stderr = capsys.readouterr().err
        assert exit.value.code == 2 and says in stderr and len(stderr.splitlines()) == 1
        assert not (tmp_path / name / "out.md").exists()
    for args, says in ((["--max_examples", "3"], "--workdir is required (without --eight_bit)"),
                       (["--workdir", "w", "--data", "mnist"], "--data goes with --eight_bit"),
                       (["--eight_bit", "--jpegxl_effort", "11"], "must be an integer in [1, 10]"),
                       (["--eight_bit", "--whole_set_only"], "--whole_set_only goes with --eight_bit and "
                                                               "--workdir")):
        with pytest.raises(SystemExit) as exit:
            script.main(args)
        assert exit.value.code == 2 and says in capsys.readouterr().err


@pytest.mark.slow  # the table's reuse of measured rows; the rows themselves are quick-tested above
def test_codec_rows_are_reused_only_for_the_same_images(tmp_path, fashion_mnist):
    """--codecs_from takes an earlier table's rows (sizes do not change between runs) when it
    measured the same images, and refuses one of other images in one line."""
    first = tmp_path / "first"
    done = run_script("--eight_bit", "--max_examples", 3, "--jpegxl_effort", "3", "--out", first)
    assert done.returncode == 0, done.stderr[-2000:]
    again = tmp_path / "again"
    done = run_script("--eight_bit", "--max_examples", 3, "--jpegxl_effort", "3", "--codecs_from",
                      first.with_suffix(".json"), "--out", again)
    assert done.returncode == 0, done.stderr[-2000:]
    old, new = (json.loads(p.with_suffix(".json").read_text()) for p in (first, again))
    assert [r["whole_bytes"] for r in new["codecs"]] == [r["whole_bytes"] for r in old["codecs"]]
    assert new["images_sha256"] == old["images_sha256"]
    assert "checked by their SHA-256" in again.with_suffix(".md").read_text()
    done = run_script("--eight_bit", "--max_examples", 4, "--jpegxl_effort", "3", "--codecs_from",
                      first.with_suffix(".json"), "--out", tmp_path / "other")
    assert done.returncode == 2 and "measured other images or settings (num_images" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
