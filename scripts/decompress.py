"""Decompresses a file of scripts/compress.py with the workdir whose model wrote it.

    python scripts/decompress.py --workdir runs/default photos.bbans --out restored/
    python scripts/decompress.py --workdir runs/default shirt.bbans --out shirt.png
    python scripts/decompress.py --workdir runs/default test.bbans --out test.npy

A file of image files writes each image back under its recorded name (and sub-folders) in the
--out folder, at its recorded size, grey or colour as it was coded, as PNG: a PNG comes back
pixel for pixel, a JPEG as a PNG of its decoded pixels (its name ending in .png; the output says
which). Where compress.py was asked for converted or resized copies (it said so), those copies
come back. A file of one image can also be written to a
.png path. A file of an array writes exactly the uint8 array that was compressed, to an --out
ending in .npy. An --out whose suffix says another kind of file (an array to x.png, images to
x.npy, several images to x.png) is refused. Each file is written whole or not at all. Prints
the figures as JSON on stdout and one line on stderr (bits/dim, coding time, images/s). A file
from another model, a damaged or truncated file, an output that exists (unless --overwrite), or
a workdir without a checkpoint is one line and exit status 2, and nothing is written.
"""

import json
import sys
from pathlib import Path

from vae import atomic, cli, cli_flags
from vae.coding import codec, image_files


def build_parser() -> cli_flags.ArgumentParser:
    parser = cli_flags.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("file", help="a file written by scripts/compress.py")
    parser.add_argument("--out", required=True,
                        help="the folder to write image files into (or a .png path for one image), or "
                             "the .npy file for an array (its name ending in .npy)")
    parser.add_argument("--overwrite", action="store_true", help="replace files that exist")
    cli_flags.add_checkpoint_arguments(parser)
    cli_flags.add_progress_argument(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cli.start()
    with cli.user_errors():
        data = Path(args.file).read_bytes()
        opened = codec.open_file(args.workdir, data, args.file, epoch=args.epoch, checkpoint=args.checkpoint)
        targets = image_files.check_outputs(Path(args.out), opened.file_names, args.overwrite,
                                            sized=opened.shapes is not None)
        images, figures = codec.decode(opened, progress=not args.no_progress)
        if opened.file_names is None:
            atomic.write_bytes(targets[0], image_files.npy_bytes(images))
        else:
            image_files.write_pngs(targets, images)
    print(json.dumps(figures, indent=2))
    if note := image_files.jpeg_note(opened.file_names or []):
        print(note, file=sys.stderr)
    if figures["unordered"]:
        print("the file holds a set (compress.py --unordered): the images come back sorted by their bytes, "
              "not in the order they were compressed in", file=sys.stderr)
    speed = (f"{figures['megapixels_per_sec']:.3g} megapixels/s" if "tiles" in figures
             else f"{figures['images_per_sec']:,.0f} images/s")
    print(f"decompressed {figures['images']:,} images into {args.out}: "
          f"{figures['bits_per_dim']:.5f} bits/dim, "
          f"{figures['coding_time_sec']:.2f} s coding, {speed}, "
          f"epoch {figures['epoch']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    cli.run_script(main)
