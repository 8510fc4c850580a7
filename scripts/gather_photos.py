"""Gathers 25 real photographs of different sizes from Debian's wallpaper packages into a folder.

    python scripts/gather_photos.py [--out DIR] [--max_side 1024]     (make photos)

DIR defaults to $XDG_DATA_HOME/vae/photos (~/.local/share/vae/photos), where configs/photos.py
looks.

The photographs (no drawings or renders) of three packages under free licences: mate-backgrounds
(its nature/ photos, GPL-2+), lomiri-wallpapers-16.04 and lomiri-wallpapers-20.04 (CC-BY-4.0,
CC-BY-SA-3.0/4.0, CC0-1.0); each package's copyright file is copied beside them (licences/),
with the authors the CC licences ask to be credited. Installed packages are read where they
are; otherwise `apt-get download` fetches them (no root needed, network once, a package list
from `apt-get update`) and they are unpacked in a temporary folder. Each photo is shrunk to at
most --max_side pixels on its longer side (0: kept as it is; the shape is kept) and written as
PNG, so the folder is `data.name=folder:DIR` for configs/photos.py. Fails with one line where a
package cannot be had.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from vae import cli_flags

BACKGROUNDS = Path("usr/share/backgrounds")
PHOTOS = {
    "mate-backgrounds": [f"mate/nature/{name}.jpg" for name in (
        "Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops", "Storm",
        "TwoWings", "Wood", "YellowFlower")],
    "lomiri-wallpapers-16.04": [f"{name}.jpg" for name in (
        "Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Picture_0B_by_freespace",
        "Picture_1A_by_freespace", "Wine_by_Jakkub_Mede", "aitzgorri_by_Aitzol_Berasategi",
        "free_by_Peter_Nerlich", "friends_by_Aitzol_Berasategi", "life_by_Aitzol_Berasategi",
        "picosdeeuropa_by_Aitzol_Berasategi", "seeding_by_Clements_Engelhardt",
        "sunset_by_Aitzol_Berasategi")],
    "lomiri-wallpapers-20.04": ["Kleiber_by_Lukas_Baubkus.jpg"],
}


class GatherError(RuntimeError):
    """A package or photo that cannot be had; the message says what to do."""


def package_root(package: str, scratch: Path) -> Path:
    """The root the package's files lie under: / where it is installed, else its unpacked download."""
    if all((Path("/") / BACKGROUNDS / rel).is_file() for rel in PHOTOS[package]):
        return Path("/")
    where = scratch / package
    where.mkdir()
    quick = ["-o", "Acquire::Retries=0", "-o", "Acquire::http::Timeout=20",
             "-o", "Acquire::https::Timeout=20"]
    fetched = subprocess.run(["apt-get", "download", *quick, package], cwd=where, capture_output=True,
                             text=True)
    debs = list(where.glob("*.deb"))
    if fetched.returncode != 0 or not debs:
        said = (fetched.stderr.strip().splitlines() or ["(nothing)"])[-1]
        raise GatherError(f"cannot fetch the Debian package {package} (apt-get download: {said}); it needs "
                          f"the network once and a package list (`sudo apt-get update`), or install it "
                          f"(`sudo apt-get install {package}`)")
    subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(where / "root")], check=True)
    return where / "root"


def gather(out: Path, max_side: int) -> list[Path]:
    """Writes every photo of PHOTOS into `out` as PNG and the packages' copyright files into
    `out/licences`; returns the photos written."""
    from PIL import Image

    written = []
    with tempfile.TemporaryDirectory() as scratch:
        roots = {package: package_root(package, Path(scratch)) for package in PHOTOS}  # all fetched first
        (out / "licences").mkdir(parents=True, exist_ok=True)
        for package, root in roots.items():
            copyright_file = root / "usr/share/doc" / package / "copyright"
            (out / "licences" / f"{package}.copyright").write_bytes(copyright_file.read_bytes())
            for rel in PHOTOS[package]:
                with Image.open(root / BACKGROUNDS / rel) as image:
                    photo = image.convert("RGB")
                scale = max_side / max(photo.size) if max_side else 1.0
                if scale < 1:
                    size = (max(1, round(photo.width * scale)), max(1, round(photo.height * scale)))
                    photo = photo.resize(size, Image.Resampling.LANCZOS)
                target = out / f"{Path(rel).stem}.png"
                photo.save(target)
                written.append(target)
    return written


def build_parser() -> cli_flags.ArgumentParser:
    parser = cli_flags.ArgumentParser(description=__doc__.splitlines()[0])
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local/share")
    parser.add_argument("--out", default=str(Path(data_home) / "vae" / "photos"),
                        help="the folder to write the photos into (created)")
    parser.add_argument("--max_side", type=cli_flags.integer(0), default=1024,
                        help="shrink each photo to at most this many pixels on its longer side (0: keep)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        written = gather(Path(args.out).expanduser(), args.max_side)
    except GatherError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{len(written)} photos in {args.out} (train on them: --config configs/photos.py "
          f"--config.data.name=folder:{args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
