"""One test image, one file: the bits-back file of each image alone against JPEG XL lossless.

    python scripts/benchmark_single_image.py --workdir runs/default --out docs/single_image
    python scripts/benchmark_single_image.py --workdir runs/fmnist_8bit --num_images 100 \
        --out docs/single_image_8bit

The first N images of the run's test split as every evaluation sees them (binarised once for a
Bernoulli model, 8-bit as they are for an 8-bit one), each compressed alone as compress.py
compresses an array of one image, every tenth decoded again; JPEG XL lossless of the same images
with imagecodecs at efforts 9 and 10 (a binarised image as 1 bit per sample and as 8-bit 0/255),
each decoded again (`benchmarks/single_image.py`). Writes OUT.json (every image's sizes, the
date, the machine, the other processes' share of the CPU while it ran) and OUT.md (the table).
"""

import json
import os
import shlex
import sys
import time
from pathlib import Path

# benchmarks/ is the repository's, beside scripts/ (the package installs only vae)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from benchmarks import codecs_8bit, harness, single_image  # noqa: E402
from vae import atomic, cli, cli_flags  # noqa: E402
from vae.coding import codec  # noqa: E402


def build_parser() -> cli_flags.ArgumentParser:
    parser = cli_flags.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--num_images", type=cli_flags.integer(1), default=1000)
    parser.add_argument("--out", required=True, help="OUT.json and OUT.md are written")
    return parser


def markdown(result: dict) -> str:
    bb, run = np.mean(result["bits_back"]["bytes"]), result["run"]
    lines = [f"{result['num_images']:,} test images of `{result['workdir']}` (epoch {result['epoch']}), each "
             f"in a file of its own; `{run['command']}`, {run['date']}, {run['machine']['cpu']} (other "
             f"processes used {100 * (run['others_cpu'] or 0):.0f}% of the CPU meanwhile).", "",
             "| codec | mean bytes per image | bits-back file / this |", "| --- | ---: | ---: |",
             f"| **bits-back ANS with the VAE** (compress.py, an array of one image) | **{bb:.1f}** "
             "| |"]
    for name, sizes in result["jpegxl"].items():
        lines.append(f"| {name} | {np.mean(sizes):.1f} | {bb / np.mean(sizes):.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cli.start()
    start = time.perf_counter()
    with cli.user_errors():
        loaded = codec.load(args.workdir)
        images, _ = codec.test_split(loaded)
        images = images[:args.num_images]
        with harness.OtherProcesses() as others:
            bits_back = single_image.bits_back_files(args.workdir, images)
            jpegxl = single_image.jpegxl_files(images[..., 0] if images.shape[-1] == 1 else images,
                                               binarised=loaded.family == "bernoulli")
        command = shlex.join(["python", "scripts/benchmark_single_image.py", *(sys.argv[1:] if argv is None
                                                                                 else argv)])
        result = {"workdir": args.workdir, "epoch": loaded.epoch, "num_images": len(images),
                  "bits_back": bits_back, "jpegxl": jpegxl,
                  "run": {"command": command, "date": codecs_8bit.now(),
                          "wall_sec": time.perf_counter() - start, "others_cpu": others.share,
                          "machine": codecs_8bit.machine()}}
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(out.with_suffix(".json"), json.dumps(result) + "\n")
        atomic.write_text(out.with_suffix(".md"), markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    cli.run_script(main)
