"""Builds a TFDS image data set once, offline for Fashion-MNIST (from Debian's files).

    python scripts/prepare_data.py --dataset fashion_mnist [--data_dir DIR]
    python scripts/prepare_data.py --dataset folder:PATH [--image_size H,W]

A folder of your own images needs no preparation; this only decodes it into its cache ahead of
a run (vae/data/folder.py), at the --image_size a run's data.image_size will give.

mnist, fashion_mnist and kmnist are built without TensorFlow (vae/data/mnist_builder.py); TFDS builds
any other data set with TensorFlow, which `pip install -e '.[tfds-build]'` adds (this script says
so when it is missing).
"""

import os
import sys

from vae import cli, cli_flags
from vae.data import folder, prepare, source


def build_parser() -> cli_flags.ArgumentParser:
    parser = cli_flags.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist",
                        help="TFDS name, e.g. mnist, kmnist; or folder:PATH, a folder of images")
    parser.add_argument("--image_size", type=cli_flags.integer_list(1), default=None,
                        help="folder:PATH only: H,W to resize its images to (data.image_size)")
    parser.add_argument("--data_dir", default="", help="TFDS data dir (default: TFDS's own)")
    parser.add_argument("--manual_dir", default=None, help="a directory of already-downloaded files")
    parser.add_check(check)
    return parser


def check(args) -> str | None:
    if not args.dataset.strip():
        return "argument --dataset: must name a TFDS data set"
    if args.image_size is not None and (len(args.image_size) != 2 or not folder.is_folder(args.dataset)):
        return "argument --image_size: takes H,W, for a --dataset folder:PATH"
    if args.manual_dir is not None and not os.path.isdir(args.manual_dir):
        return f"argument --manual_dir: {args.manual_dir!r} is not a directory"
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.start()
    try:
        if folder.is_folder(args.dataset):
            print(folder.prepare(args.dataset, tuple(args.image_size or ())))
            return 0
        path = prepare.prepare(args.dataset, args.data_dir or None, args.manual_dir)
    except (source.DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.dataset} is prepared in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
