"""Builds a TFDS image data set once, offline for Fashion-MNIST (from Debian's files).

    python scripts/prepare_data.py --dataset fashion_mnist [--data_dir DIR]

mnist, fashion_mnist and kmnist are built without TensorFlow (vae/data/mnist_builder.py); TFDS builds
any other data set with TensorFlow, which `pip install -e '.[tfds-build]'` adds (this script says
so when it is missing).
"""

import os
import sys

from vae import cli
from vae import cli_flags as flags
from vae.data import prepare as data_prepare
from vae.data import source as data_source


def parse(argv):
    parser = flags.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist", help="TFDS name, e.g. mnist, kmnist")
    parser.add_argument("--data_dir", default="", help="TFDS data dir (default: TFDS's own)")
    parser.add_argument("--manual_dir", default=None, help="a directory of already-downloaded files")
    args = parser.parse_args(argv)
    if not args.dataset.strip():
        parser.error("argument --dataset: must name a TFDS data set")
    if args.manual_dir is not None and not os.path.isdir(args.manual_dir):
        parser.error(f"argument --manual_dir: {args.manual_dir!r} is not a directory")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    cli.start()
    try:
        path = data_prepare.prepare(args.dataset, args.data_dir or None, args.manual_dir)
    except (data_source.DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.dataset} is prepared in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
