"""Decompresses a file of scripts/compress.py with the workdir whose model wrote it.

    python scripts/decompress.py --workdir runs/default test.bbans --out test.npy

Writes exactly the uint8 array that was compressed (.npy) and prints the figures as JSON on
stdout and one line on stderr (bits/dim, coding time, images/s). A file from another model, a
damaged or truncated file, or a workdir without a checkpoint is one line and exit status 2,
and nothing is written.
"""

import io
import json
import sys

import numpy as np

from vae import cli, cli_flags
from vae.coding import codec
from vae.workdir import files


def build_parser() -> cli_flags.ArgumentParser:
    parser = cli_flags.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("file", help="a file written by scripts/compress.py")
    parser.add_argument("--out", required=True, help="the .npy file to write")
    cli_flags.add_checkpoint_arguments(parser)
    cli_flags.add_progress_argument(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cli.start()
    with cli.user_errors():
        with open(args.file, "rb") as f:
            data = f.read()
        images, figures = codec.decompress_workdir(args.workdir, data, args.file, epoch=args.epoch,
                                                   checkpoint=args.checkpoint, progress=not args.no_progress)
        buffer = io.BytesIO()
        np.save(buffer, images, allow_pickle=False)
        files.atomic_write_bytes(args.out, buffer.getvalue())
    print(json.dumps(figures, indent=2))
    print(f"decompressed {figures['images']:,} images into {args.out}: "
          f"{figures['bits_per_dim']:.5f} bits/dim, "
          f"{figures['coding_time_sec']:.2f} s coding, {figures['images_per_sec']:,.0f} images/s, "
          f"epoch {figures['epoch']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    cli.run_script(main)
