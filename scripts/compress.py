"""Compresses images losslessly with a trained VAE: bits-back coding with ANS (BB-ANS).

    python scripts/compress.py --workdir runs/default --out test.bbans     # the run's test split
    python scripts/compress.py --workdir runs/default --out shirt.bbans --images shirt.png
    python scripts/compress.py --workdir runs/default --out photos.bbans --images photos/ [--channels grey]
    python scripts/compress.py --workdir runs/default --out x.bbans --images x.npy [--max_examples N]

--images takes PNG or JPEG files, one folder of them (and its sub-folders; a file in it that is
not a PNG or JPEG is refused), or a uint8 .npy array N x H x W (or N x H x W x C) of the model's
image shape. Image files are coded losslessly at their own size, grey or colour as they are: each
is cut into the model's tiles (its image shape), the edge tiles filled out by repeating the last
row and column, which costs nothing in the file; a grey image on a colour model is coded as
grey (its one channel) and comes back grey. The file records each image's name, size and
channels, and all the tiles of all the files form one bits-back chain. A colour image on a grey
model is refused (it would lose its colour), and so is one with transparent pixels (alpha is not
coded; an alpha channel opaque everywhere is left out, and the output says so); converted
copies are coded only where asked: --channels grey|rgb converts every image, --background COLOUR
flattens transparent pixels onto a colour, --image_size H,W resizes every image; the output then
says (on stderr, and "original": false in the JSON) that what decompress.py gives back is the
copy, not the file. A Bernoulli model codes binarised pixels (all 0/255, or 0/1 in an array); an
8-bit model any. The file is about as long as the images' negative ELBO as coded: sub-pixels and
latents under the coder's integer probabilities, which give every symbol at least 2^-24, so a
model that gives some far less (one far from trained) has a larger -ELBO of its own than the
file. Without --images it codes the test split as every evaluation sees it (binarised once).
Prints the figures as JSON on stdout and one line on stderr. An --out that exists is refused
unless --overwrite; nothing is written on an error.
"""

import json
import sys
from pathlib import Path

from vae import atomic, cli, cli_flags
from vae.coding import codec, image_files, latent_code


def build_parser() -> cli_flags.ArgumentParser:
    parser = cli_flags.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", required=True, help="the compressed file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--images", nargs="+", default=None,
                        help="PNG or JPEG files, a folder of them, or a uint8 .npy array (default: the "
                             "test split)")
    parser.add_argument("--channels", choices=("keep", "grey", "rgb"), default="keep",
                        help="code a copy of every image converted to grey or to colour (RGB)")
    parser.add_argument("--background", default="",
                        help="a colour (white, #rrggbb, ...) transparent pixels are composited onto; "
                             "'' refuses them")
    parser.add_argument("--image_size", type=cli_flags.integer_list(1), default=None,
                        help="H,W: code a copy of every image resized to this size (not the original)")
    parser.add_argument("--max_examples", type=cli_flags.integer(1), default=None,
                        help="only the first N images")
    parser.add_argument("--block_size", type=cli_flags.integer(1, codec.MAX_BLOCK_SIZE),
                        default=None,
                        help="images (tiles, for images of their own sizes) per coder call and per model "
                             f"call (default {codec.DEFAULT_BLOCK_SIZE} images, or tiles of about "
                             f"{codec.TILE_BLOCK_SUB_PIXELS:,} sub-pixels a block)")
    parser.add_argument("--bin_width", type=cli_flags.real(1e-6, 1.0), default=latent_code.DEFAULT_BIN_WIDTH,
                        help="width of the latent bins z is discretised to (default 1/64)")
    parser.add_argument("--latent_range", type=cli_flags.real(1.0, 1000.0),
                        default=latent_code.DEFAULT_HALF_RANGE,
                        help="the bins cover [-R, R] in every latent dimension")
    parser.add_argument("--unordered", action="store_true",
                        help="the images are a set whose order does not matter (an array, not --images "
                             "files): their order is not coded, about log2(N!) bits less; decompress.py "
                             "returns them sorted by their bytes")
    cli_flags.add_checkpoint_arguments(parser)
    cli_flags.add_progress_argument(parser)
    parser.add_check(check)
    return parser


def check(args) -> str | None:
    if args.unordered and args.images and not (len(args.images) == 1 and args.images[0].endswith(".npy")):
        return ("argument --unordered: codes an array of images as a set (the test split, or one .npy); "
                "image files keep their names and order: leave --unordered out")
    if args.image_size is not None and len(args.image_size) != 2:
        return f"argument --image_size: takes H,W, got {','.join(map(str, args.image_size))}"
    return None


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cli.start()
    with cli.user_errors():
        image_files.check_new_file(Path(args.out), args.overwrite)
        inputs = image_files.find(args.images) if args.images else None
        bins = latent_code.LatentBins(args.bin_width, args.latent_range)
        loaded = codec.load(args.workdir, args.epoch, args.checkpoint)
        names, note = None, None
        conversions = dict(channels=args.channels, background=args.background,
                           image_size=args.image_size or ())
        if inputs is None:
            images, what = codec.test_split(loaded)
        elif inputs.array is not None:
            images, what = image_files.read_array(inputs, **conversions), str(inputs.array)
        else:
            if args.max_examples is not None:
                first = args.max_examples
                inputs = image_files.Inputs(inputs.paths[:first], inputs.names[:first])
            photos = image_files.read_photos(inputs, loaded.image_shape, **conversions)
            images, names, what = photos.images, list(inputs.names), "the images"
            note = image_files.copy_note(photos, args.channels, args.background)
        if args.max_examples is not None:
            images, names = images[:args.max_examples], names and names[:args.max_examples]
        data, figures = codec.compress(loaded, images, file_names=names, block_size=args.block_size,
                                       bins=bins, what=what, progress=not args.no_progress,
                                       unordered=args.unordered)
        if names is not None:
            figures["original"] = note is None
        atomic.write_bytes(args.out, data)
    print(json.dumps(figures, indent=2))
    if note:
        print(note, file=sys.stderr)
    print(summary_line(figures, args.out), file=sys.stderr)
    return 0


# The coder's -ELBO this far below the model's: the floor of its counts, not rounding (which moves
# it by thousandths of a percent, docs/compression.md).
FLOOR_NOTE_BELOW = 0.001


def summary_line(figures: dict, out: str) -> str:
    """The line on stderr: the file against the -ELBO it codes (`codec.compress`: sub-pixels and
    latents under the coder's integer probabilities, every symbol at least 2^-24) and the model's
    own -ELBO, with why they differ where that floor made the file shorter than the model's -ELBO."""
    coded, elbo = figures["coded_elbo_bits_per_dim"], figures["elbo_bits_per_dim"]
    floor = (": the coder gives every sub-pixel level and latent bin at least 2^-24, so none costs over "
             "about 24 bits, and the model gives some far less" if coded < (1.0 - FLOOR_NOTE_BELOW) * elbo
             else "")
    tiles = (f" ({figures['tiles']:,} tiles, {figures['pixels'] / 1e6:.3g} megapixels)" if "tiles" in figures
             else "")
    speed = (f"{figures['megapixels_per_sec']:.3g} megapixels/s" if "tiles" in figures
             else f"{figures['images_per_sec']:,.0f} images/s")
    if figures.get("unordered"):
        floor += (f"; a set: its order's {figures['order_bits']:,.0f} bits, "
                  f"{figures['order_bits'] / 8 / figures['bytes']:.2%} of the file, are not coded")
    return (f"compressed {figures['images']:,} images{tiles} into {out}: {figures['bytes']:,} bytes, "
            f"{figures['bits_per_dim']:.5f} bits/dim ({100 * figures['overhead_vs_coded_elbo']:+.2f}% over "
            f"their -ELBO as coded, {coded:.5f}; the model's -ELBO of them {elbo:.5f}{floor}), "
            f"{figures['coding_time_sec']:.2f} s coding, {speed}, "
            f"epoch {figures['epoch']}")


if __name__ == "__main__":
    cli.run_script(main)
