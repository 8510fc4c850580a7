"""Compresses binarised images losslessly with a trained VAE: bits-back coding with ANS (BB-ANS).

    python scripts/compress.py --workdir runs/default --out test.bbans     # the run's test split
    python scripts/compress.py --workdir runs/default --out x.bbans --images x.npy [--max_examples N]

Without --images it codes the test split as every evaluation sees it (binarised once); --images
takes a uint8 .npy array N x H x W (or N x H x W x C) of the model's image shape, with pixels all
0/1 or all 0/255 for a Bernoulli model (decompression gives back the same array). The file is
about as long as the images' negative ELBO under the model. Prints the figures as JSON on stdout
and one line on stderr: size, bits/dim (every byte of the file), the model's -ELBO of the same
images, coding time and images/s. scripts/decompress.py reads the file with the same workdir.
"""

import json
import sys

import numpy as np

from vae import cli, cli_flags
from vae.coding import codec, latents
from vae.workdir import files


def build_parser() -> cli_flags.ArgumentParser:
    parser = cli_flags.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", required=True, help="the compressed file to write")
    parser.add_argument("--images", default=None,
                        help="a uint8 .npy array to compress instead of the test split")
    parser.add_argument("--max_examples", type=cli_flags.integer(1), default=None,
                        help="only the first N images")
    parser.add_argument("--block_size", type=cli_flags.integer(1, codec.MAX_BLOCK_SIZE),
                        default=codec.DEFAULT_BLOCK_SIZE,
                        help="images per coder call and per model call")
    parser.add_argument("--bin_width", type=cli_flags.real(1e-6, 1.0), default=latents.DEFAULT_BIN_WIDTH,
                        help="width of the latent bins z is discretised to (default 1/64)")
    parser.add_argument("--latent_range", type=cli_flags.real(1.0, 1000.0),
                        default=latents.DEFAULT_HALF_RANGE,
                        help="the bins cover [-R, R] in every latent dimension")
    cli_flags.add_checkpoint_arguments(parser)
    cli_flags.add_progress_argument(parser)
    return parser


def read_images(path: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError:  # not an .npy file, or an object array
        raise cli.UsageError(f"{path} is not a .npy file of a numeric array") from None


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cli.start()
    with cli.user_errors():
        bins = latents.LatentBins(args.bin_width, args.latent_range)
        images = read_images(args.images) if args.images else None
        data, figures = codec.compress_workdir(
            args.workdir, images, max_examples=args.max_examples, block_size=args.block_size, bins=bins,
            epoch=args.epoch, checkpoint=args.checkpoint, what=args.images or "the images",
            progress=not args.no_progress)
        files.atomic_write_bytes(args.out, data)
    print(json.dumps(figures, indent=2))
    print(f"compressed {figures['images']:,} images into {args.out}: {figures['bytes']:,} bytes, "
          f"{figures['bits_per_dim']:.5f} bits/dim (the model's -ELBO of them "
          f"{figures['elbo_bits_per_dim']:.5f}, "
          f"{100 * figures['overhead_vs_elbo']:+.2f}%), {figures['coding_time_sec']:.2f} s coding, "
          f"{figures['images_per_sec']:,.0f} images/s, epoch {figures['epoch']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    cli.run_script(main)
