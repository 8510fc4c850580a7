"""Photos at full size, losslessly: an 8-bit colour model's bits-back code against PNG, WebP and
JPEG XL lossless, photo by photo.

    python benchmarks/benchmark_photos.py --workdir runs/photos --out docs/codecs_photos  # its test photos
    python benchmarks/benchmark_photos.py --workdir runs/photos --images photos/ --out docs/codecs_photos \
        [--block_size TILES] [--jpegxl_efforts 7,9]
    python benchmarks/benchmark_photos.py --render_only --out docs/codecs_photos  # OUT.md from OUT.json

Every PNG or JPEG in --images (a folder, as scripts/compress.py takes it; by default the photos of
the run's own folder that fall in --split, which it never trained on) is
read at its own size, grey or colour as it is (`image_files.read_photos`: a colour photo on a grey
model, or transparent pixels, are refused), and coded:

    ours, one file a photo   `codec.compress` of the photo alone (its name recorded), as
                             scripts/compress.py --images PHOTO writes it: the model's tiles, one
                             bits-back chain; timed each way (compiling excluded) and decoded back
    ours, all in one file    every photo in one file (one chain), decoded back
    PNG                      Pillow, optimize=True, compress_level=9
    WebP lossless            Pillow, lossless, quality 100, method 6
    JPEG XL lossless         imagecodecs, at each effort of --jpegxl_efforts (where imagecodecs has
                             JPEG XL)

Every file is decoded and checked pixel for pixel (AssertionError where one is not). Writes
OUT.json (every figure) and OUT.md: bits/dim (bits / sub-pixels) per photo and in all, and ours'
coding speed in megapixels/s each way. Timings are of this machine as it was: say whether it was
shared.
"""

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

# benchmarks/ is the repository's, beside scripts/ (the package installs only vae)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from benchmarks import codecs_8bit, host  # noqa: E402
from scripts.docs.markdown import shown_path  # noqa: E402
from vae import cli  # noqa: E402
from vae.coding import codec, image_files  # noqa: E402
from vae.data import folder  # noqa: E402


def standard_codecs(jpegxl_efforts: list[int]) -> dict:
    """name -> (encode an h x w or h x w x 3 uint8 image, decode it given its shape)."""
    found = {"PNG": (codecs_8bit.png, codecs_8bit._png_decode),
             "WebP lossless": (codecs_8bit.webp, codecs_8bit._webp_decode)}
    if codecs_8bit.imagecodecs is not None and codecs_8bit.imagecodecs.JPEGXL.available:
        for effort in jpegxl_efforts:
            found[f"JPEG XL e{effort}"] = (codecs_8bit.jpegxl(effort), codecs_8bit._jpegxl_decode)
    return found


def _plain(image: np.ndarray) -> np.ndarray:
    """h x w for grey, h x w x 3 for colour: what the image codecs take."""
    return image[..., 0] if image.shape[-1] == 1 else image


class Ours:
    """The model's code (its compiled functions kept by `codec.Loaded`, one set per block size)."""

    def __init__(self, workdir: str, block_size: int | None):
        self.loaded = codec.load(workdir)
        self.block_size = block_size or codec.tile_block_size(self.loaded.image_shape)

    def code(self, images: list, names: list) -> dict:
        """One file of `images`: its bytes, the figures each way, checked pixel for pixel."""
        data, figures = codec.compress(self.loaded, images, file_names=names, block_size=self.block_size,
                                       progress=False)
        opened = codec.open_loaded(self.loaded, data, names[0])
        decoded, back = codec.decode(opened, progress=False)
        for name, image, out in zip(names, images, decoded):
            if not np.array_equal(np.asarray(out), image):
                raise AssertionError(f"the bits-back file did not decode {name} pixel for pixel")
        pixels = sum(i.shape[0] * i.shape[1] for i in images)
        return {"bytes": len(data), "compress_sec": figures["coding_time_sec"],
                "decompress_sec": back["coding_time_sec"],
                "compress_megapixels_per_sec": pixels / 1e6 / figures["coding_time_sec"],
                "decompress_megapixels_per_sec": pixels / 1e6 / back["coding_time_sec"],
                "elbo_bits_per_dim": figures["elbo_bits_per_dim"], "tiles": figures.get("tiles", len(images))}


def held_out(config, split: str) -> image_files.Inputs:
    """The photos of the run's own folder (data.name=folder:PATH) in `split`: photos it did not
    train on ('test', or 'validation', which chose the checkpoint)."""
    if not folder.is_folder(config.data.name):
        raise image_files.InputError(f"the run trained on {config.data.name}, not a folder of photos; "
                                     "give the photos with --images")
    source = folder.open_folder(config.data)
    files = [source.listing.files[i] for i in source.split_indices(split)]
    return image_files.Inputs(tuple(source.listing.root / f for f in files), tuple(files))


def measure(workdir: str, images: str | None, split: str, block_size: int | None,
            jpegxl_efforts: list[int]) -> dict:
    ours = Ours(workdir, block_size)
    inputs = image_files.find([images]) if images else held_out(ours.loaded.config, split)
    if inputs.array is not None:
        raise image_files.InputError(f"{images} is an array; give a folder of photos (PNG or JPEG)")
    photos = image_files.read_photos(inputs, ours.loaded.image_shape).images
    others = standard_codecs(jpegxl_efforts)
    rows = []
    for name, image in zip(inputs.names, photos):
        row = {"name": name, "height": image.shape[0], "width": image.shape[1], "channels": image.shape[2],
               "sub_pixels": image.size, "ours": ours.code([image], [name]), "codecs": {}}
        for codec_name, (encode, decode) in others.items():
            start = time.perf_counter()
            data = encode(_plain(image))
            seconds = time.perf_counter() - start
            if not np.array_equal(np.asarray(decode(data, _plain(image).shape)), _plain(image)):
                raise AssertionError(f"{codec_name} did not decode {name} pixel for pixel")
            row["codecs"][codec_name] = {"bytes": len(data), "encode_sec": seconds}
        rows.append(row)
        print(f"{name}: {image.shape[1]}x{image.shape[0]}, ours {8 * row['ours']['bytes'] / image.size:.3f} "
              f"bits/dim, {row['ours']['compress_megapixels_per_sec']:.3f} / "
              f"{row['ours']['decompress_megapixels_per_sec']:.3f} MP/s", file=sys.stderr)
    together = ours.code(photos, list(inputs.names))
    return {"workdir": workdir, "images": images or f"the run's {split} photos",
            "block_size": ours.block_size, "tile_shape": ours.loaded.image_shape,
            "epoch": ours.loaded.epoch, "photos": rows, "ours_one_file": together,
            "codecs": list(others), "cpu": host.cpu_name(), "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg(), "python": platform.python_version(),
            "date": datetime.date.today().isoformat()}


def _bits_per_dim(total_bytes: float, dims: int) -> str:
    return f"{8 * total_bytes / dims:.3f}"


def markdown(result: dict, command: str) -> str:
    rows, names = result["photos"], result["codecs"]
    dims = sum(row["sub_pixels"] for row in rows)
    pixels = sum(row["height"] * row["width"] for row in rows)
    head = ["photo", "size", "ours (one file each)", *names, "ours: compress MP/s", "decompress MP/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        ours = row["ours"]
        cells = [row["name"], f"{row['width']}x{row['height']}{' grey' if row['channels'] == 1 else ''}",
                 _bits_per_dim(ours["bytes"], row["sub_pixels"]),
                 *(_bits_per_dim(row["codecs"][n]["bytes"], row["sub_pixels"]) for n in names),
                 f"{ours['compress_megapixels_per_sec']:.3f}", f"{ours['decompress_megapixels_per_sec']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    total = {n: sum(row["codecs"][n]["bytes"] for row in rows) for n in names}
    ours_total = sum(row["ours"]["bytes"] for row in rows)
    compress_sec = sum(row["ours"]["compress_sec"] for row in rows)
    decompress_sec = sum(row["ours"]["decompress_sec"] for row in rows)
    lines.append("| " + " | ".join([
        f"**all {len(rows)}**", f"{pixels / 1e6:.2f} MP", _bits_per_dim(ours_total, dims),
        *(_bits_per_dim(total[n], dims) for n in names),
        f"{pixels / 1e6 / compress_sec:.3f}", f"{pixels / 1e6 / decompress_sec:.3f}"]) + " |")
    one = result["ours_one_file"]
    h, w, c = result["tile_shape"]
    return "\n".join([
        "# Photos at full size, losslessly", "",
        f"Bits per sub-pixel (bits/dim) of each photo, coded losslessly at its own size: the model of "
        f"`{shown_path(result['workdir'])}` (epoch {result['epoch']}) on its {h}x{w}x{c} tiles, one file a "
        "photo "
        f"(`scripts/compress.py --images PHOTO`), against PNG (Pillow, optimize), WebP lossless (Pillow, "
        "method 6) and JPEG XL lossless (imagecodecs, at each effort). Every file decoded and checked pixel "
        "for pixel.", "",
        *lines, "",
        f"All {len(rows)} photos in one file (one bits-back chain): {one['bytes']:,} bytes, "
        f"{_bits_per_dim(one['bytes'], dims)} bits/dim; coding {one['compress_megapixels_per_sec']:.3f} "
        f"megapixels/s compressing, {one['decompress_megapixels_per_sec']:.3f} decompressing (compiling "
        f"excluded; blocks of {result['block_size']} tiles).", "",
        f"Measured {result['date']} on {result['cpu']} ({result['cpu_count']} cores; load average "
        f"{result['load_average'][0]:.1f} at the end: the machine may have been shared), with", "",
        f"    {command}", ""])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None, help="an 8-bit model's run")
    parser.add_argument("--images", default=None,
                        help="a folder of photos (PNG or JPEG); default: --split of the run's own folder")
    parser.add_argument("--split", default="test", choices=("test", "validation"),
                        help="without --images: which held-out photos of the run's folder")
    parser.add_argument("--out", required=True, help="writes OUT.json and OUT.md")
    parser.add_argument("--block_size", type=int, default=None,
                        help="tiles per model call (default: compress.py's, codec.tile_block_size)")
    parser.add_argument("--jpegxl_efforts", default="7,9", help="JPEG XL efforts, comma-separated")
    parser.add_argument("--render_only", action="store_true",
                        help="measure nothing: write OUT.md again from OUT.json")
    args = parser.parse_args(argv)
    if not args.render_only and args.workdir is None:
        parser.error("--workdir is required (but with --render_only)")
    out = Path(args.out)
    if args.render_only:
        result = json.loads(Path(f"{out}.json").read_text())
        command = result["command"]
    else:
        efforts = [int(e) for e in args.jpegxl_efforts.split(",") if e]
        with cli.user_errors():
            result = measure(args.workdir, args.images, args.split, args.block_size, efforts)
        photos = f" --images {shown_path(args.images)}" if args.images else f" --split {args.split}"
        command = ("python benchmarks/benchmark_photos.py --workdir " + shown_path(args.workdir) + photos
                   + f" --out {args.out}"
                   + (f" --block_size {args.block_size}" if args.block_size else "")
                   + f" --jpegxl_efforts {args.jpegxl_efforts}")
        result["command"] = command
        out.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{out}.json").write_text(json.dumps(result, indent=1) + "\n")
    Path(f"{out}.md").write_text(markdown(result, command))
    print(markdown(result, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
