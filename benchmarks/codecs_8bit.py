"""Standard lossless codecs on 8-bit images, for comparison with an 8-bit likelihood's -ELBO and
IWAE NLL (`scripts/benchmark_codecs.py --eight_bit`).

Each codec compresses the same N uint8 images (N x H x W grey, N x H x W x 1 read as grey, or
N x H x W x 3 colour) two ways: the whole set at once (the image codecs get one mosaic of
`codecs.MOSAIC_COLUMNS` images per row, zero-padded to a full last row; the byte codecs one
stream of the raw bytes, image after image, in C order: colour pixels interleaved) and one image
at a time (a complete file per image, its own header included). Every file, the mosaic's and each
image's, is decoded again and checked to be exactly the pixels encoded. JPEG XL and zstd need
`imagecodecs` (PyPI; zstd falls back to the `zstandard` package); without them those rows are
left out.

    PNG             Pillow, mode L or RGB, optimize=True, compress_level=9
    WebP lossless   Pillow, lossless=True, quality=100, method=6 (its slowest, smallest); grey
                    images are coded as RGB (WebP has no grey mode) and decoded back to grey
                    only if every pixel's three channels are equal
    JPEG XL         imagecodecs, lossless, effort 10 (`JPEGXL_EFFORT`, libjxl's slowest). On the
                    10,000 Fashion-MNIST test images (2 shared cores): the whole set 3.2505 bits/dim
                    in 85 s against 3.6604 in 30 s at effort 9 (-11.2%), one file per image 4.0730
                    in 182 s against 4.2999 in 53 s (-5.3%); about 4.5 min in all against 1.5
    bz2 / xz / zstd level 9 / preset 9 | extreme (`codecs.xz_compress`) / level 22 (zstd's
                    highest), of the raw bytes

Sizes go out as bytes, bits/dim (bits / (N · H · W · C)) and nats/image (bits · ln 2 / N), the
units of the model's -ELBO and IWAE NLL in eval.json; the encode seconds of the whole set and of
the files one per image separately, and the seconds the lossless checks took.
"""

import bz2
import datetime
import hashlib
import io
import lzma
import math
import os
import platform
import time

import numpy as np
from PIL import Image

from benchmarks import codecs, host
from scripts.docs.markdown import shown_command, shown_path

JPEGXL_EFFORT = 10
ZSTD_LEVEL = 22

try:
    import imagecodecs
except ImportError:  # JPEG XL (and zstd, unless `zstandard` is there) is measured only with imagecodecs
    imagecodecs = None

try:
    import zstandard
except ImportError:
    zstandard = None


def as_images(images: np.ndarray) -> np.ndarray:
    """N x H x W (grey) or N x H x W x 3 (colour) uint8; N x H x W x 1 becomes N x H x W."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"8-bit images are uint8, got {images.dtype}")
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3) or 0 in images.shape:
        raise ValueError(f"8-bit images are N x H x W, N x H x W x 1 or N x H x W x 3, got {images.shape}")
    return np.ascontiguousarray(images)


def mosaic_columns(num_images: int) -> int:
    """Images a row in the whole-set mosaic: `codecs.MOSAIC_COLUMNS`, or all of them if fewer."""
    return min(num_images, codecs.MOSAIC_COLUMNS)


def mosaic_shape(images_shape) -> list[int]:
    """The whole-set mosaic's shape for images of `images_shape` (`as_images`'s)."""
    n, h, w, *channels = images_shape
    columns = mosaic_columns(n)
    return [math.ceil(n / columns) * h, columns * w, *channels]


def sizes(total_bytes: float, num_images: int, dims_per_image: int) -> dict:
    """Bits/dim and nats/image of `total_bytes` for `num_images` images of `dims_per_image` values."""
    bits = 8 * total_bytes
    return {"bits_per_dim": bits / (num_images * dims_per_image),
            "nats_per_image": bits * math.log(2) / num_images}


# --- The codecs: encode(pixels) -> bytes, decode(bytes, shape) -> pixels --------------------------


def _pillow(image: np.ndarray, **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, **save)
    return buffer.getvalue()


def png(image):
    return _pillow(image, format="PNG", optimize=True, compress_level=9)


def _png_decode(data, shape):
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


def webp(image):
    return _pillow(image, format="WEBP", lossless=True, quality=100, method=6)


def _webp_decode(data, shape):
    """The RGB(A) WebP decodes to, as the shape encoded: None where a grey pixel's channels differ
    or a pixel is not opaque."""
    with Image.open(io.BytesIO(data)) as image:
        rgba = np.asarray(image.convert("RGBA"))
    rgb = rgba[..., :3]
    if not (rgba[..., 3] == 255).all():
        return None
    if len(shape) == 2:
        return rgb[..., 0] if (rgb == rgb[..., :1]).all() else None
    return rgb


def jpegxl(effort: int = JPEGXL_EFFORT):
    return lambda image: imagecodecs.jpegxl_encode(image, lossless=True, effort=effort)


def _jpegxl_decode(data, shape):
    return imagecodecs.jpegxl_decode(data)


def _bytes_codec(compress, decompress):
    return (lambda pixels: compress(pixels.tobytes()),
            lambda data, shape: np.frombuffer(decompress(data), np.uint8).reshape(shape))


def _zstd():
    """zstd at its highest level: imagecodecs', else the `zstandard` package's; None without either."""
    if imagecodecs is not None and imagecodecs.ZSTD.available:
        return lambda b: imagecodecs.zstd_encode(b, level=ZSTD_LEVEL), imagecodecs.zstd_decode
    if zstandard is not None:
        return (lambda b: zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(b),
                lambda d: zstandard.ZstdDecompressor().decompress(d))
    return None


def image_codecs(jpegxl_effort: int = JPEGXL_EFFORT) -> dict:
    """name -> (encode one H x W or H x W x 3 uint8 image, decode it back given its shape)."""
    found = {"PNG (optimize, level 9)": (png, _png_decode), "WebP lossless (method 6)": (webp, _webp_decode)}
    if imagecodecs is not None and imagecodecs.JPEGXL.available:
        found[f"JPEG XL lossless (effort {jpegxl_effort})"] = (jpegxl(jpegxl_effort), _jpegxl_decode)
    return found


def byte_codecs() -> dict:
    """name -> (encode an array's raw bytes, decode them back given its shape)."""
    found = {"bz2 -9 (raw bytes)": _bytes_codec(lambda b: bz2.compress(b, 9), bz2.decompress),
             "xz -9e (raw bytes)": _bytes_codec(codecs.xz_compress, lzma.decompress)}
    zstd = _zstd()
    if zstd is not None:
        found[f"zstd -{ZSTD_LEVEL} (raw bytes)"] = _bytes_codec(*zstd)
    return found


# --- Measuring ------------------------------------------------------------------------------------


def _lossless(decoded, pixels) -> bool:
    return decoded is not None and np.array_equal(np.asarray(decoded), pixels)


def measure(images: np.ndarray, jpegxl_effort: int = JPEGXL_EFFORT, progress=None) -> list[dict]:
    """One row per codec: bytes, bits/dim and nats/image for the whole set and per image, the
    encode seconds of each; every file decoded and checked lossless (AssertionError if not)."""
    images = as_images(images)
    n, dims = len(images), math.prod(images.shape[1:])
    tiled = codecs.mosaic(images, columns=mosaic_columns(n))
    rows = []
    for kind, found, whole_input in (("image", image_codecs(jpegxl_effort), tiled),
                                     ("bytes", byte_codecs(), images)):
        for name, (encode, decode) in found.items():
            start = time.perf_counter()
            whole = encode(whole_input)
            whole_sec = time.perf_counter() - start
            start = time.perf_counter()
            files = [encode(image) for image in images]
            per_image_sec = time.perf_counter() - start
            start = time.perf_counter()
            if not _lossless(decode(whole, whole_input.shape), whole_input):
                raise AssertionError(f"{name} did not decode the whole set losslessly")
            for i, (data, image) in enumerate(zip(files, images)):
                if not _lossless(decode(data, image.shape), image):
                    raise AssertionError(f"{name} did not decode image {i} losslessly")
            decode_sec = time.perf_counter() - start
            per_image = sum(map(len, files))
            whole_sizes, per_image_sizes = sizes(len(whole), n, dims), sizes(per_image, n, dims)
            rows.append({
                "codec": name, "kind": kind,
                "whole_bytes": len(whole), "whole_bits_per_dim": whole_sizes["bits_per_dim"],
                "whole_nats_per_image": whole_sizes["nats_per_image"], "whole_encode_sec": whole_sec,
                "per_image_bytes": per_image / n, "per_image_total_bytes": per_image,
                "per_image_bits_per_dim": per_image_sizes["bits_per_dim"],
                "per_image_nats_per_image": per_image_sizes["nats_per_image"],
                "per_image_encode_sec": per_image_sec, "decode_check_sec": decode_sec, "lossless": True})
            if progress:
                progress(rows[-1])
    return rows


def model_rows(evaluation: dict, dims_per_image: int) -> list[dict]:
    """The model's -ELBO and IWAE NLL (eval.json's nats/image, `scripts/evaluate.py`) in the
    codecs' units; eval.json's own bits/dim beside them where it has one."""
    rows = []
    for key, bits_key, figure in (("test/nll", "test/nll_bits_per_dim", "iwae_nll"),
                                  ("test/elbo", "test/bits_per_dim", "neg_elbo")):
        if evaluation.get(key) is None:
            continue
        nats = float(evaluation[key])
        bits_per_dim = nats / (dims_per_image * math.log(2))
        row = {"figure": figure, "nats_per_image": nats, "bits_per_dim": bits_per_dim,
               "eval_bits_per_dim": evaluation.get(bits_key)}
        if figure == "iwae_nll":
            row["iw_samples"] = evaluation.get("iw_samples")
        rows.append(row)
    return rows


def images_digest(images: np.ndarray) -> str:
    """SHA-256 of the images' shape and bytes: which images a table measured."""
    digest = hashlib.sha256(repr(tuple(images.shape)).encode())
    digest.update(np.ascontiguousarray(images).tobytes())
    return digest.hexdigest()


def machine() -> dict:
    """The CPU, its cores and the codecs' library versions (no JAX: this module does not start it)."""
    cpu = host.cpu_name()
    import PIL
    from PIL import features

    versions = {"python": platform.python_version(), "numpy": np.__version__, "pillow": PIL.__version__,
                "pillow_libwebp": features.version("webp"), "pillow_zlib": features.version("zlib")}
    if imagecodecs is not None:
        found = imagecodecs.version(dict)
        versions |= {k: found[k] for k in ("imagecodecs", "libjxl", "zstd") if k in found}
    elif zstandard is not None:
        versions["zstandard"] = zstandard.__version__
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "versions": versions}


# --- The table ------------------------------------------------------------------------------------


def _best(rows, key):
    return min(rows, key=lambda r: r[key])["codec"] if rows else None


def markdown(result: dict) -> str:
    """OUT.md: the codec table (the best standard codec of each column in bold, and the bits-back
    row where it beats them all), the model's rows where there is an evaluation, the command that
    made it, the date and the machine."""
    n, dims, shape = result["num_images"], result["dims_per_image"], result["image_shape"]
    rows = result["codecs"]
    best_whole, best_per_image = _best(rows, "whole_bytes"), _best(rows, "per_image_total_bytes")
    lines = [f"{n:,} 8-bit test images of {result['data']} (the `{result['split']}` split as it is, "
             f"{' x '.join(map(str, shape))} uint8, not binarised); bits/dim = file bits / "
             f"({n:,} x {dims:,}), nats/image = file bits x ln 2 / {n:,} (the raw pixels: 8 bits/dim, "
             f"{8 * dims * math.log(2):,.1f} nats/image). Every file decoded and checked lossless.", "",
             "| codec | whole set: bytes | bits/dim | nats/image | encode s | "
             "one file per image: mean bytes | bits/dim | nats/image | encode s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def bold(text, on):
        return f"**{text}**" if on else text

    def secs(seconds):
        return f"{seconds:.1f}" if seconds >= 1 else f"{seconds:.2f}"

    for row in sorted(rows, key=lambda r: r["whole_bytes"]):
        whole, each = row["codec"] == best_whole, row["codec"] == best_per_image
        whole_bpd = bold(f"{row['whole_bits_per_dim']:.4f}", whole)
        each_bpd = bold(f"{row['per_image_bits_per_dim']:.4f}", each)
        lines.append(
            f"| {bold(row['codec'], whole or each)} | {row['whole_bytes']:,} | {whole_bpd} | "
            f"{row['whole_nats_per_image']:,.1f} | {secs(row['whole_encode_sec'])} | "
            f"{row['per_image_bytes']:,.1f} | {each_bpd} | {row['per_image_nats_per_image']:,.1f} | "
            f"{secs(row['per_image_encode_sec'])} |")
    bits_back = result.get("bits_back")
    if bits_back:
        c = bits_back["compress"]
        nats = 8 * c["bytes"] * math.log(2) / n
        # In bold where it beats every standard codec of the column.
        beats_whole = all(c["bits_per_dim"] < r["whole_bits_per_dim"] for r in rows)
        each = ""
        if bits_back.get("per_image"):  # each image compressed alone (`codecs.bits_back_per_image`)
            p = bits_back["per_image"]
            beats_each = all(p["per_image_bits_per_dim"] < r["per_image_bits_per_dim"] for r in rows)
            each_bpd = bold(f"{p['per_image_bits_per_dim']:.4f}", beats_each)
            each = (f" {p['per_image_bytes']:,.1f} | {each_bpd} | "
                    f"{8 * p['per_image_bytes'] * math.log(2):,.1f} | {secs(p['time_sec'])} |")
        whole_bpd = bold(f"{c['bits_per_dim']:.4f}", beats_whole)
        lines.append(f"| **bits-back ANS with the VAE** (`scripts/compress.py`, a file) | {c['bytes']:,} | "
                     f"{whole_bpd} | {nats:,.1f} | {secs(c['coding_time_sec'])} |" + (each or " | | | |"))
    evaluation = result.get("evaluation")
    model = result.get("model") or []
    if evaluation:
        on = ("" if evaluation.get("num_examples") in (None, n)
              else f", on its {evaluation['num_examples']:,} test images")
        for row in model:
            label = (f"the model's IWAE NLL, k = {row['iw_samples']:,}" if row["figure"] == "iwae_nll"
                     else "the model's -ELBO")
            lines.append(f"| *{label} (a bound, not a file{on})* | | {row['bits_per_dim']:.4f} | "
                         f"{row['nats_per_image']:,.1f} | | | | | |")
    best = (f"{best_whole}, for the whole set and one file per image" if best_whole == best_per_image
            else f"{best_whole} for the whole set, {best_per_image} one file per image")
    mosaic = " x ".join(f"{d:,}" for d in result["mosaic_shape"])
    beaten = "; the bits-back row in bold where it beats them all" if bits_back else ""
    lines += ["", f"Best of the standard codecs (in bold): {best}{beaten}. Whole set: one {mosaic} "
              f"mosaic ({result['mosaic_columns']} "
              "images a row, zero-padded to a full last row) for the image codecs, one stream of the raw "
              "bytes (image after image) for the others; one file per image: each codec's complete file "
              "(header included) for each image alone. encode s: seconds encoding, the lossless checks "
              f"not counted ({sum(r['decode_check_sec'] for r in rows):.0f} s in all)."]
    reused = {row.get("from_run") for row in rows} - {None}
    if reused:
        lines.append(f"The codec rows are those of the same command's run of {', '.join(sorted(reused))} on "
                     "the same images (checked by their SHA-256; `--codecs_from`): file sizes do not "
                     "change between runs, their encode seconds are that run's.")
    if bits_back:
        c, d = bits_back["compress"], bits_back["decompress"]
        lines.append(f"The bits-back file: {c['bytes']:,} bytes of {n:,} images, "
                     f"{100 * c['overhead_vs_elbo']:+.3f}% over the -ELBO of the same images at the coded "
                     f"latents ({c['elbo_bits_per_dim']:.4f} bits/dim); decompressed exactly: "
                     f"{bits_back['round_trip_exact']}; compress.py {bits_back['compress_wall_sec']:.0f} s, "
                     f"decompress.py {bits_back['decompress_wall_sec']:.0f} s from start to exit "
                     f"({c['images_per_sec']:,.0f} images/s encoding, {d['images_per_sec']:,.0f} decoding, "
                     "in the process, compilation not counted)"
                     + ("; one file per image: each image alone, a whole file as compress.py writes it "
                        "for an array of one image (its encode s: model calls included)."
                        if bits_back.get("per_image") else "; one file per image: not measured for the model "
                        "(`--whole_set_only`)."))
    if result.get("workdir"):
        if evaluation:
            lines.append(f"The model's rows: `{shown_path(result['workdir'])}/eval.json` "
                         "(`scripts/evaluate.py`, "
                         f"epoch {evaluation.get('epoch', '?')}), nats/image as it has them, bits/dim = "
                         f"nats / ({dims:,} x ln 2).")
        else:
            lines.append(f"`{shown_path(result['workdir'])}` has no eval.json: no model rows.")
    run = result["run"]
    m = run["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    others = (f"; other processes used {100 * run['others_cpu']:.0f}% of the CPUs meanwhile"
              if run.get("others_cpu") is not None else "")
    lines.append(f"Made by `{shown_command(run['command'])}` on {run['date']} in {run['wall_sec']:.0f} s, "
                 f"on {m['cpu']} "
                 f"({m['cores']} cores{others}); {versions}.")
    return "\n".join(lines) + "\n"


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
