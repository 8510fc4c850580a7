"""What a user can hand scripts/compress.py and scripts/decompress.py by mistake: each is one line,
exit status 2 and nothing written (never a traceback). A .npy file's header is checked before the
model loads, so those cases need no trained run."""

import errno
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_in_process
from tests.test_compress_files import ok, one_line_error
from tests.test_folder_data import write_16_bit_png


def compress(workdir, out, *args):
    return run_in_process("compress.py", "--workdir", workdir, "--out", out, "--noprogress", *args)


def decompress(workdir, file, out, *args):
    return run_in_process("decompress.py", "--workdir", workdir, file, "--out", out, "--noprogress", *args)


def npy_bytes(array, **options):
    buffer = io.BytesIO()
    np.save(buffer, array, **options)
    return buffer.getvalue()


def declared_npy(shape) -> bytes:
    """A .npy file whose header declares uint8 `shape`, with 100 bytes of data."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return buffer.getvalue() + bytes(100)


class Marker:
    """Unpickling it would create the file `path`: a .npy file of Python objects must not be."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def zip_bytes():
    buffer = io.BytesIO()
    np.savez(buffer, images=np.zeros((2, 28, 28), np.uint8))
    return buffer.getvalue()


GOOD = npy_bytes(np.zeros((3, 28, 28), np.uint8))
ARRAYS = {  # file bytes -> what the one line says
    "empty": (b"", "x.npy is empty"),
    "zip": (zip_bytes(), "x.npy is a zip file (an .npz archive of arrays?), not a .npy array"),
    "text": (b"0 255 0\n255 0 255\n", "x.npy is not a .npy file"),
    "truncated": (GOOD[:-100], "x.npy cannot be read as a .npy array: it is damaged or truncated"),
    "huge declared shape": (declared_npy((10 ** 10, 28, 28)), "it is damaged or truncated"),
    "garbled header": (GOOD.replace(b"(3, 28, 28)", b"(3, 28, 28 "), "cannot be read as a .npy array"),
    "float with NaN": (npy_bytes(np.full((3, 28, 28), np.nan)),
                       "x.npy holds float64 values; compress.py codes uint8 arrays"),
    "int64": (npy_bytes(np.zeros((3, 28, 28), np.int64)), "x.npy holds int64 values"),
    "one image": (npy_bytes(np.zeros((28, 28), np.uint8)), "shape (28, 28); compress.py codes N x H x W or "
                  "N x H x W x C arrays of images (one image: save x[None]"),
    "five axes": (npy_bytes(np.zeros((1, 2, 28, 28, 1), np.uint8)),
                  "holds an array of shape (1, 2, 28, 28, 1)"),
    "no images": (npy_bytes(np.zeros((0, 28, 28), np.uint8)), "x.npy holds no images (shape (0, 28, 28))"),
}


@pytest.mark.parametrize("case", ARRAYS)
def test_a_npy_file_that_is_not_a_uint8_image_array(tmp_path, case):
    """Refused from its header before the model loads: --workdir names no run at all."""
    data, message = ARRAYS[case]
    (tmp_path / "x.npy").write_bytes(data)
    out = tmp_path / "x.bbans"
    one_line_error(compress(tmp_path / "no_run", out, "--images", tmp_path / "x.npy"), message, out)


def test_a_npy_file_of_python_objects_is_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    (tmp_path / "x.npy").write_bytes(npy_bytes(np.array([Marker(marker)], dtype=object), allow_pickle=True))
    out = tmp_path / "x.bbans"
    one_line_error(compress(tmp_path / "no_run", out, "--images", tmp_path / "x.npy"),
                   "it is damaged or truncated, or holds Python objects", out)
    assert not marker.exists()


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def declared_png(width, height):
    """A PNG whose header declares width x height 8-bit grey pixels, with 100 bytes of them."""
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(bytes(100))) + png_chunk(b"IEND", b""))


def tiff_bytes():
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(buffer, format="TIFF")
    return buffer.getvalue()


def truncated_png():
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()[:-30]


IMAGES = {  # file bytes -> what the one line says
    "text named .png": (b"not an image\n", "x.png cannot be read as an image: UnidentifiedImageError"),
    "truncated": (truncated_png(), "x.png cannot be read as an image: OSError"),
    "decompression bomb": (declared_png(100_000, 100_000), "x.png cannot be read as an image: "
                           "DecompressionBombError"),
    "TIFF named .png": (tiff_bytes(), "x.png is a TIFF file, not a PNG or JPEG"),
}


@pytest.mark.parametrize("case", IMAGES)
def test_an_image_file_that_cannot_be_read(tiny_run, tmp_path, case):
    data, message = IMAGES[case]
    (tmp_path / "x.png").write_bytes(data)
    out = tmp_path / "x.bbans"
    one_line_error(compress(tiny_run, out, "--images", tmp_path / "x.png"), message, out)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_a_16_bit_png_is_refused(tiny_run, tmp_path, channels):
    """Grey, grey and alpha, RGB and RGBA, black and white (what the Bernoulli model would code,
    read as 8 bits): 8 bits cannot give the file back."""
    levels = np.zeros((28, 28, channels), np.uint16)
    levels[::2, ::3] = 65535
    if channels in (2, 4):
        levels[..., -1] = 65535  # opaque
    write_16_bit_png(tmp_path / "deep.png", levels)
    out = tmp_path / "x.bbans"
    one_line_error(compress(tiny_run, out, "--images", tmp_path / "deep.png", "--channels", "grey"),
                   "deep.png is a 16-bit PNG, and the models read and code 8-bit pixels", out)


def test_a_folder_without_images_and_an_array_of_another_image_shape(tiny_run, tmp_path):
    (tmp_path / "photos" / "sub").mkdir(parents=True)
    (tmp_path / "photos" / ".hidden.png").write_bytes(b"")
    out = tmp_path / "x.bbans"
    one_line_error(compress(tiny_run, out, "--images", tmp_path / "photos"), "no images in the folder", out)
    (tmp_path / "x.npy").write_bytes(npy_bytes(np.zeros((3, 27, 28), np.uint8)))
    one_line_error(compress(tiny_run, out, "--images", tmp_path / "x.npy"),
                   "x.npy has shape (3, 27, 28); this model codes N x 28 x 28 x 1 or N x 28 x 28 arrays", out)


@pytest.fixture(scope="module")
def coded(tiny_run, tmp_path_factory):
    """Files of tiny_run's model: an array of 3 images, and 2 PNG files (a.png, b.png)."""
    path = tmp_path_factory.mktemp("coded")
    images = np.zeros((3, 28, 28), np.uint8)
    images[:, ::2, ::3] = 255
    np.save(path / "x.npy", images)
    ok(compress(tiny_run, path / "array.bbans", "--images", path / "x.npy"))
    for name, image in zip(("a.png", "b.png"), images):
        Image.fromarray(image).save(path / name)
    ok(compress(tiny_run, path / "two.bbans", "--images", path / "a.png", path / "b.png"))
    return path, images


def test_an_out_whose_suffix_says_another_kind_of_file(tiny_run, coded, tmp_path):
    """An array goes to a .npy file, never as .npy bytes in x.png; named images go to a folder
    (one image: or a .png path), never into a folder made of x.npy or x.png."""
    path, images = coded
    for out in (tmp_path / "x.png", tmp_path / "restored"):
        one_line_error(decompress(tiny_run, path / "array.bbans", out),
                       "the compressed file holds an array, which decompress.py writes as the .npy file it "
                       "was: give --out a path ending in .npy", out)
    for out in (tmp_path / "x.png", tmp_path / "x.npy", tmp_path / "x.jpg"):
        one_line_error(decompress(tiny_run, path / "two.bbans", out),
                       "the compressed file holds 2 images from image files, which decompress.py writes as "
                       "PNG files: give --out a folder to write them into", out)
    ok(decompress(tiny_run, path / "array.bbans", tmp_path / "x.NPY"))
    np.testing.assert_array_equal(np.load(tmp_path / "x.NPY"), images)
    ok(decompress(tiny_run, path / "two.bbans", tmp_path / "restored"))
    with Image.open(tmp_path / "restored" / "b.png") as image:
        np.testing.assert_array_equal(np.asarray(image), images[1])


def test_a_failed_png_write_leaves_the_file_that_was_there(tiny_run, coded, tmp_path, monkeypatch):
    """A full disk while a PNG is written (--overwrite): one line, the old file whole, no
    temporary file left."""
    path, _ = coded
    restored = tmp_path / "restored"
    restored.mkdir()
    (restored / "a.png").write_bytes(b"keep me")

    def full_disk(image, fp, filename):
        fp.write(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setitem(Image.SAVE, "PNG", full_disk)
    one_line_error(decompress(tiny_run, path / "two.bbans", restored, "--overwrite"),
                   "No space left on device")
    assert (restored / "a.png").read_bytes() == b"keep me"
    assert sorted(p.name for p in restored.iterdir()) == ["a.png"]
