"""Bits-back compression with a trained VAE against standard lossless codecs, on the same images.

    python scripts/benchmark_codecs.py --workdir runs/default [--out docs/codecs_binarised] [--max_examples N]
    python scripts/benchmark_codecs.py --eight_bit [--workdir W] [--data fashion_mnist] \
        [--out docs/codecs_8bit] [--max_examples N] [--jpegxl_effort E]

Runs scripts/compress.py and scripts/decompress.py on the run's test split (binarised once) as
a user would, timing each command from start to exit, and checks that the round trip is exact;
reads the -ELBO and the IWAE NLL from WORKDIR/eval.json (`scripts/evaluate.py --iw-samples K`,
on the same images) where there is one; measures PNG 1-bit, WebP lossless, JPEG XL lossless
(with `imagecodecs` installed) and gzip / bz2 / xz of the packed bits on the same images, for
the whole set and one file per image (`benchmarks/codecs.py`), and the bits-back code one file
per image. Writes OUT.json and OUT.md (the table docs/compression.md shows).

With --eight_bit, the table for 8-bit images (`benchmarks/codecs_8bit.py`): PNG, WebP lossless,
JPEG XL lossless and bz2 / xz / zstd of the raw bytes on the test split as it is (not binarised),
the whole set and one file per image, in bytes, bits/dim and nats/image; with --workdir (a model
trained with data.binarize=none) on that run's data set and test split, the bits-back code of the
whole set (scripts/compress.py and scripts/decompress.py, timed and checked as above) and one file
per image (not with --whole_set_only), and the model's IWAE NLL and -ELBO from WORKDIR/eval.json
as rows in the same units.

    python scripts/benchmark_codecs.py --render_only --out docs/codecs_8bit_model

writes OUT.md again from OUT.json, measuring nothing: after a change to the page's text. The pages
show a workdir as given, or relative to the current directory (`markdown.shown_path`), never as an
absolute path of the machine that measured.
"""

import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# benchmarks/ and scripts/docs/markdown.py are the repository's (the package installs only vae)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from benchmarks import codecs, codecs_8bit  # noqa: E402
from scripts.docs.markdown import shown_command, shown_path  # noqa: E402
from vae import atomic, cli, cli_flags  # noqa: E402
from vae.analysis import results  # noqa: E402
from vae.coding import container  # noqa: E402
from vae.data import dataset, source  # noqa: E402
from vae.workdir import files  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def build_parser() -> cli_flags.ArgumentParser:
    parser = cli_flags.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None,
                        help="the trained run (required without --eight_bit; with it, a model trained with "
                             "data.binarize=none, its eval.json giving the model's rows)")
    parser.add_argument("--out", default=None,
                        help="writes OUT.json and OUT.md (default docs/codecs_binarised; docs/codecs_8bit "
                             "with --eight_bit)")
    parser.add_argument("--max_examples", type=cli_flags.integer(1), default=None,
                        help="only the first N test images")
    parser.add_argument("--eight_bit", action="store_true",
                        help="the 8-bit table: standard codecs on the test split as it is (not binarised), "
                             "and the model's -ELBO and IWAE NLL with --workdir")
    parser.add_argument("--data", default=None,
                        help="--eight_bit: the TFDS data set (default fashion_mnist; with --workdir, its "
                             "data set)")
    parser.add_argument("--data_dir", default=None,
                        help="--eight_bit without --workdir: the TFDS data dir (default TFDS's)")
    parser.add_argument("--jpegxl_effort", type=cli_flags.integer(1, 10), default=None,
                        help=f"--eight_bit: JPEG XL's effort (default {codecs_8bit.JPEGXL_EFFORT}, its "
                             "slowest)")
    parser.add_argument("--codecs_from", default=None,
                        help="--eight_bit: take the codec rows from an earlier OUT.json of the same images "
                             "(their sizes do not change; JPEG XL's take minutes) and measure the model only")
    parser.add_argument("--whole_set_only", action="store_true",
                        help="--eight_bit with --workdir: the model's bits-back code of the whole set only, "
                             "not of each image alone (10,000 images alone take 5 to 10 minutes here)")
    parser.add_argument("--render_only", action="store_true",
                        help="write OUT.md again from OUT.json, measuring nothing (the figures of the run "
                             "that wrote the JSON)")
    parser.add_check(check)
    return parser


def check(args) -> str | None:
    if args.render_only:
        given = [f for f in ("workdir", "max_examples", "data", "data_dir", "jpegxl_effort", "codecs_from")
                 if getattr(args, f) is not None] + (["whole_set_only"] if args.whole_set_only else [])
        if given:
            return f"--{given[0]} goes without --render_only (it renders OUT.json, measuring nothing)"
    if args.codecs_from and not args.eight_bit:
        return "--codecs_from goes with --eight_bit"
    if args.whole_set_only and not (args.eight_bit and args.workdir):
        return "--whole_set_only goes with --eight_bit and --workdir (it skips the model's file per image)"
    if not args.eight_bit and not args.render_only:
        if args.workdir is None:
            return "--workdir is required (without --eight_bit)"
        given = [f for f in ("data", "data_dir", "jpegxl_effort") if getattr(args, f) is not None]
        if given:
            return f"--{given[0]} goes with --eight_bit"
    elif args.workdir is not None and args.data_dir is not None:
        return "--data_dir goes without --workdir (the workdir's data dir is used)"
    args.out = args.out or ("docs/codecs_8bit" if args.eight_bit else "docs/codecs_binarised")
    return None


def run_timed(script: str, *args) -> tuple[dict, float]:
    """(the figures a script prints as JSON, its wall time from start to exit)."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    command = [sys.executable, str(REPO / "scripts" / script), *map(str, args), "--noprogress"]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise cli.UsageError(f"{script} failed: {result.stderr.strip().splitlines()[-1]}")
    return json.loads(result.stdout), wall


def bits_back_commands(workdir: str, images: np.ndarray, max_examples) -> dict:
    limit = ["--max_examples", max_examples] if max_examples else []
    with tempfile.TemporaryDirectory() as tmp:
        coded, out = Path(tmp) / "test.bbans", Path(tmp) / "test.npy"
        compressed, compress_wall = run_timed("compress.py", "--workdir", workdir, "--out", coded, *limit)
        decompressed, decompress_wall = run_timed("decompress.py", "--workdir", workdir, coded, "--out", out)
        exact = bool(np.array_equal(np.load(out), images))
    if not exact:
        raise cli.UsageError("decompress.py did not give back the compressed images")
    return {"compress": compressed, "compress_wall_sec": compress_wall, "decompress": decompressed,
            "decompress_wall_sec": decompress_wall, "round_trip_exact": exact}


def evaluation(workdir: str, num_images: int) -> dict | None:
    """eval.json's -ELBO and IWAE NLL, if it was computed on these images."""
    path = Path(workdir) / "eval.json"
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    return record if record.get("num_examples") == num_images else None


def one_image_header_bytes() -> int:
    """The header of a file of one image, as `codecs.bits_back_per_image` writes each: the format's
    fixed bytes and its check (a file of several images adds its count, blocks and bins)."""
    header = container.Header(model_tag=0, software=0, count=1, array_ndim=4, pixel_scale=255,
                              has_names=False)
    return len(container.header_bytes(header)) + container.CHECK_BYTES


def markdown(result: dict) -> str:
    n, dims = result["num_images"], result["num_images"] * result["pixels_per_image"]
    bb = result["bits_back"]
    per_image = result["bits_back_per_image"]
    lines = [f"{n:,} binarised test images of {result['data']}, model `{shown_path(result['workdir'])}` "
             f"(trained by `{shown_command(results.reproducing_command(result['trained_by']))}`, epoch "
             f"{bb['compress']['epoch']}); bits/dim = file "
             f"bits / ({n:,} x {result['pixels_per_image']}).", "",
             "| codec | whole set: bytes | bits/dim | one file per image: mean bytes | bits/dim |",
             "| --- | ---: | ---: | ---: | ---: |",
             f"| **bits-back ANS with the VAE** (`scripts/compress.py`) | {bb['compress']['bytes']:,} | "
             f"**{bb['compress']['bits_per_dim']:.4f}** | {per_image['per_image_bytes']:.1f} | "
             f"{per_image['per_image_bits_per_dim']:.4f} |"]
    for row in sorted(result["codecs"], key=lambda r: r["whole_bits_per_dim"]):
        lines.append(f"| {row['codec']} | {row['whole_bytes']:,} | {row['whole_bits_per_dim']:.4f} | "
                     f"{row['per_image_bytes']:.1f} | {row['per_image_bits_per_dim']:.4f} |")
    ev = result.get("evaluation")
    if ev:
        to_bits = 1 / (result["pixels_per_image"] * math.log(2))
        lines.append(f"| *the model's -ELBO (a bound, not a file)* | | {ev['test/elbo'] * to_bits:.4f} | | |")
        lines.append(f"| *the model's IWAE NLL, k = {ev['iw_samples']:,} (not a file)* | | "
                     f"{ev['test/nll'] * to_bits:.4f} | | |")
    c, d = bb["compress"], bb["decompress"]
    versus_eval = (f", {100 * (c['bits_per_dim'] / (ev['test/elbo'] * to_bits) - 1):+.3f}% over the "
                   "evaluated -ELBO" if ev else "")
    lines += ["", f"Bits-back file: {c['bytes']:,} bytes = {8 * c['bytes'] / dims:.5f} bits/dim, "
              f"{100 * c['overhead_vs_elbo']:+.3f}% over the -ELBO of the same images at the coded latents "
              f"({c['elbo_bits_per_dim']:.5f}){versus_eval}; header {c['header_bytes']} bytes; the first "
              f"image (no bits back) {c['first_image_bits']} bits against its -ELBO of "
              f"{c['first_image_elbo_bits']:.0f}. Round trip exact: {bb['round_trip_exact']}.",
              f"Compression: {c['coding_time_sec']:.2f} s coding ({c['images_per_sec']:,.0f} images/s), "
              f"{bb['compress_wall_sec']:.1f} s for the command from start to exit; decompression: "
              f"{d['coding_time_sec']:.2f} s coding ({d['images_per_sec']:,.0f} images/s), "
              f"{bb['decompress_wall_sec']:.1f} s for the command.",
              "One file per image: each codec's complete file for each image alone; the bits-back one "
              f"pays the {per_image['header_bytes']}-byte header of a file of one image (file format "
              f"{per_image['file_format']}) and a first image without bits back in every file."]
    return "\n".join(lines) + "\n"


_EVALUATION_KEYS = ("epoch", "checkpoint", "num_examples", "iw_samples", "test/nll", "test/nll_std_error",
                    "test/nll_bits_per_dim", "test/elbo", "test/bits_per_dim")


def eight_bit_images(args) -> tuple[dict, np.ndarray, dict | None]:
    """(where the images come from, the 8-bit test images, the workdir's eval.json or None)."""
    name, split, data_dir, evaluation = args.data or "fashion_mnist", "test", args.data_dir, None
    if args.workdir:
        config = files.read_config(Path(args.workdir))
        binarize = config.data.get("binarize")
        if binarize != "none":
            raise cli.UsageError(
                f"{args.workdir} was trained on binarised images (data.binarize={binarize}): --eight_bit "
                "compares models of 8-bit pixels (data.binarize=none); for this one run without --eight_bit")
        if args.data and args.data != config.data.name:
            raise cli.UsageError(f"--data {args.data}, but {args.workdir} was trained on {config.data.name}")
        name, split, data_dir = config.data.name, config.data.test_split, config.data.data_dir or None
        path = Path(args.workdir) / files.EVAL_FILE
        if not path.exists():
            raise cli.UsageError(f"{args.workdir} has no {files.EVAL_FILE} for the model's rows: run `python "
                                 f"scripts/evaluate.py --workdir {args.workdir} --iw_samples 1000` first")
        try:
            record = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise cli.UsageError(f"{path} is not JSON ({e}): run scripts/evaluate.py again") from None
        evaluation = {k: record[k] for k in _EVALUATION_KEYS if k in record}
    images, _ = source.load_split(name, split, data_dir)
    images = images[:args.max_examples] if args.max_examples else images
    workdir = shown_path(args.workdir) if args.workdir else None
    return {"data": name, "split": split, "workdir": workdir}, images, evaluation


def earlier_codecs(path: str, where: dict, images: np.ndarray, effort: int) -> list[dict]:
    """The codec rows of an earlier 8-bit table, if it measured these very images (data set,
    split, count, shape and a SHA-256 of the pixels) with this JPEG XL effort."""
    try:
        earlier = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise cli.UsageError(f"--codecs_from {path}: not an 8-bit table's JSON ({e})") from None
    wanted = {"data": where["data"], "split": where["split"], "num_images": len(images),
              "image_shape": list(images.shape[1:]), "jpegxl_effort": effort,
              "images_sha256": codecs_8bit.images_digest(images)}
    # (a table written before the digest was recorded is matched on the rest)
    differ = [k for k, v in wanted.items() if earlier.get(k, v if k == "images_sha256" else None) != v]
    if differ:
        raise cli.UsageError(f"--codecs_from {path} measured other images or settings ({', '.join(differ)} "
                             "differ): run without it")
    print(f"codec rows from {path} ({earlier['run']['date']})", file=sys.stderr)
    return [dict(row, from_run=earlier["run"]["date"]) for row in earlier["codecs"]]


def eight_bit(args, argv) -> dict:
    """The 8-bit table's figures (OUT.json)."""
    from benchmarks import harness  # its OtherProcesses (harness starts JAX: imported only here)

    start = time.perf_counter()
    where, images, evaluation = eight_bit_images(args)
    try:
        pixels = codecs_8bit.as_images(images)
    except ValueError as e:
        raise cli.UsageError(f"{where['data']}: {e}") from None
    effort = args.jpegxl_effort or codecs_8bit.JPEGXL_EFFORT
    reused = earlier_codecs(args.codecs_from, where, images, effort) if args.codecs_from else None
    dims = math.prod(pixels.shape[1:])
    shape = " x ".join(map(str, images.shape[1:]))
    print(f"{len(images):,} images of {where['data']} ({shape})", file=sys.stderr)

    def progress(r):
        print(f"{r['codec']}: whole set {r['whole_bits_per_dim']:.4f} bits/dim ({r['whole_encode_sec']:.1f} "
              f"s), one file per image {r['per_image_bits_per_dim']:.4f} ({r['per_image_encode_sec']:.1f} s)",
              file=sys.stderr)

    with harness.OtherProcesses() as others:
        bits_back = None
        if args.workdir:  # the model as a file: compress.py and decompress.py, as a user runs them
            bits_back = bits_back_commands(args.workdir, images, args.max_examples)
            bits = bits_back["compress"]["bits_per_dim"]
            print(f"bits-back: {bits:.4f} bits/dim", file=sys.stderr)
            if not args.whole_set_only:
                per_image = bits_back["per_image"] = codecs.bits_back_per_image(args.workdir, images)
                print(f"bits-back, one file per image: {per_image['per_image_bits_per_dim']:.4f} bits/dim "
                      f"({per_image['time_sec']:.0f} s)", file=sys.stderr)
        rows = reused or codecs_8bit.measure(pixels, jpegxl_effort=effort, progress=progress)
    result = {**where, "eight_bit": True, "bits_back": bits_back, "num_images": len(images),
              "image_shape": list(images.shape[1:]),
              "dims_per_image": dims, "mosaic_columns": codecs_8bit.mosaic_columns(len(pixels)),
              "mosaic_shape": codecs_8bit.mosaic_shape(pixels.shape),
              "jpegxl_effort": effort, "images_sha256": codecs_8bit.images_digest(images), "codecs": rows,
              "evaluation": evaluation,
              "model": codecs_8bit.model_rows(evaluation, dims) if evaluation else []}
    command = shown_command(shlex.join(["python", "scripts/benchmark_codecs.py",
                                        *(sys.argv[1:] if argv is None else argv)]))
    result["run"] = {"command": command, "date": codecs_8bit.now(), "wall_sec": time.perf_counter() - start,
                     "others_cpu": others.share, "machine": codecs_8bit.machine()}
    return result


def write(out: Path, result: dict, text: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    atomic.write_text(out.with_suffix(".md"), text)


def rendered(out: Path) -> str:
    """OUT.md's text from OUT.json (an 8-bit table's or a binarised one's)."""
    path = out.with_suffix(".json")
    try:
        result = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise cli.UsageError(f"--render_only: {path} is not a table's JSON ({e}): run without --render_only "
                             "to measure") from None
    return codecs_8bit.markdown(result) if result.get("eight_bit") else markdown(result)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cli.quiet_logs()
    if args.render_only:
        with cli.user_errors():
            text = rendered(Path(args.out))
            atomic.write_text(Path(args.out).with_suffix(".md"), text)
        print(text)
        return 0
    if args.eight_bit:
        with cli.user_errors():
            result = eight_bit(args, argv)
            text = codecs_8bit.markdown(result)
            write(Path(args.out), result, text)
        print(text)
        return 0
    with cli.user_errors():
        config = files.read_config(Path(args.workdir))
        images, _ = dataset.load_test_set(config.data)
        images = images[:args.max_examples] if args.max_examples else images
        run = json.loads((Path(args.workdir) / "config.json").read_text()).get("run", {})
        result = {"workdir": shown_path(args.workdir), "trained_by": shown_command(run.get("command", "")),
                  "data": config.data.name, "num_images": len(images),
                  "pixels_per_image": math.prod(images.shape[1:])}
        result["bits_back"] = bits_back_commands(args.workdir, images, args.max_examples)
        print(f"bits-back: {result['bits_back']['compress']['bits_per_dim']:.4f} bits/dim", file=sys.stderr)
        result["evaluation"] = evaluation(args.workdir, len(images))
        result["codecs"] = codecs.measure_codecs(
            images[..., 0], progress=lambda r: print(f"{r['codec']}: {r['whole_bits_per_dim']:.4f} bits/dim "
                                                      f"({r['time_sec']:.0f} s)", file=sys.stderr))
        result["bits_back_per_image"] = codecs.bits_back_per_image(args.workdir, images) | {
            "header_bytes": one_image_header_bytes(), "file_format": container.FORMAT_3}
        print(f"bits-back, one file per image: {result['bits_back_per_image']['per_image_bits_per_dim']:.4f} "
              f"bits/dim ({result['bits_back_per_image']['time_sec']:.0f} s)", file=sys.stderr)
        write(Path(args.out), result, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
