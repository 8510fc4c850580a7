"""Images from a trained workdir: prior samples, reconstructions, interpolations, traversals, manifold.

    python scripts/sample.py --workdir runs/default [--mode prior|reconstruct|interpolate|traverse|manifold]
        [--num 64] [--temperature 1.0] [--pixels mean|draw] [--seed 0] [--epoch N] [--out DIR]

Writes WORKDIR/<mode>.png (or into --out; <mode>_draw.png with --pixels draw) and prints its
path. Images are grey or colour, as the data set's. `--pixels mean` (the default) shows the
likelihood's means: each pixel's probability of being on for the Bernoulli likelihood, each
sub-pixel's expected level for the 8-bit ones; `--pixels draw` shows one draw x ~ p(x|z) of every
pixel: what the model would store (8-bit), or a binarised image (Bernoulli).
"""

import math
from pathlib import Path

import jax
import numpy as np

from vae import cli, cli_flags, kl
from vae.analysis import plotting, sampling
from vae.data import dataset
from vae.train import trained
from vae.workdir import files

MODES = ("prior", "reconstruct", "interpolate", "traverse", "manifold")
MAX_IMAGES = 10_000  # one picture: a grid of more is unreadable (and --mode prior's memory grows)
MAX_STEPS = 100  # --mode manifold decodes steps² images


def build_parser() -> cli_flags.ArgumentParser:
    parser = cli_flags.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--mode", choices=MODES, default="prior")
    parser.add_argument("--num", type=cli_flags.integer(1, MAX_IMAGES), default=64,
                        help="prior samples, or test images to use")
    parser.add_argument("--temperature", type=cli_flags.real(0.0), default=1.0,
                        help="prior std for --mode prior")
    parser.add_argument("--steps", type=cli_flags.integer(2, MAX_STEPS), default=10,
                        help="images along each line or sweep")
    parser.add_argument("--pixels", choices=("mean", "draw"), default="mean",
                        help="the likelihood's means, or a draw x ~ p(x|z) of every pixel")
    parser.add_argument("--seed", type=cli_flags.integer(0, cli_flags.SEED_MAX), default=0)
    cli_flags.add_checkpoint_arguments(parser)
    parser.add_argument("--out", default=None, help="output directory (default: the workdir)")
    return parser


def test_images(config, num: int, seed: int) -> np.ndarray:
    """num test images (as the model sees them), chosen by seed, as floats in [0, 1]."""
    images, _ = dataset.load_test_set(config.data)
    chosen = np.random.default_rng(seed).choice(len(images), size=min(num, len(images)), replace=False)
    return images[np.sort(chosen)].astype(np.float32) / 255.0


def render(mode, config, model, epoch, args) -> tuple[np.ndarray, int, str, list | None]:
    """(images, columns, title, row labels) for one mode."""
    key = jax.random.key(args.seed)  # the codes: the same pictures as ever for a seed
    draw_key = jax.random.fold_in(key, 1) if args.pixels == "draw" else None  # the pixels' draws
    where = f"{config.data.name}, epoch {epoch}"
    if draw_key is not None:
        where += ", pixels drawn from p(x|z)"
    if mode == "prior":
        ncols = math.ceil(math.sqrt(args.num))
        return (sampling.prior_samples(model, key, args.num, args.temperature, draw_key), ncols,
                f"{args.num} prior samples (T={args.temperature:g}), {where}", None)
    if mode == "reconstruct":
        x = test_images(config, args.num, args.seed)
        return (sampling.reconstructions(model, x, draw_key), 2 * min(8, len(x)),
                f"test images and their reconstructions, {where}", None)
    if mode == "interpolate":
        x = test_images(config, 2 * max(1, args.num // 8), args.seed)
        pairs = len(x) // 2
        return (sampling.interpolations(model, x[:pairs], x[pairs:2 * pairs], args.steps, draw_key),
                args.steps, f"latent interpolations between test images, {where}", None)
    if mode == "traverse":
        x = test_images(config, 1, args.seed)[0]
        kl_per_dim = _kl_per_dim(args.workdir, model, x)
        order = np.argsort(-kl_per_dim)[: min(args.num, model.latent_dim)]
        labels = [f"z{d} ({kl_per_dim[d]:.1f} nats)" for d in order]
        return (sampling.traversal(model, x, order, args.steps, draw_key=draw_key), args.steps,
                f"latents swept over ±3 prior std, by KL, {where}", labels)
    images = sampling.manifold(model, args.steps, draw_key)
    return images, args.steps, f"decoder over a grid of prior quantiles, {where}", None


def _kl_per_dim(path, model, x) -> np.ndarray:
    """Each code dimension's KL: the run's latest test KL per dimension of the code (the last
    latent_dim entries: a hierarchical model lists z1's units, then z2's), or, without those
    metrics (or with a prior that does not factorise), this image's KL from N(0, I)."""
    records = [r for r in files.read_metrics(Path(path)) if "test/kl_per_dim" in r]
    if records:
        return np.asarray(records[-1]["test/kl_per_dim"])[-model.latent_dim:]
    mean, log_var = model.encode(x.reshape(1, -1))
    return np.asarray(kl.standard_normal_kl_per_dim(mean, log_var)[0])


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cli.start()
    with cli.user_errors():
        config, model, epoch = trained.load_trained(args.workdir, args.epoch, args.checkpoint)
        if args.mode == "manifold" and model.latent_dim != 2:
            raise cli.UsageError(
                f"--mode manifold needs a 2-D latent space; {args.workdir} has model.latent_dim="
                f"{model.latent_dim} (train one with --config.model.latent_dim=2)")
        images, ncols, title, labels = render(args.mode, config, model, epoch, args)
        if not np.all(np.isfinite(images)):
            raise cli.UsageError(f"the decoder's output is not finite (--mode {args.mode}, --temperature "
                                 f"{args.temperature:g}); a smaller --temperature keeps it finite")
        out = Path(args.out or args.workdir)
        out.mkdir(parents=True, exist_ok=True)
        name = args.mode + ("_draw" if args.pixels == "draw" else "")
        path = plotting.save_image_grid(images, out / f"{name}.png", ncols, title, labels)
    print(path)
    return 0


if __name__ == "__main__":
    cli.run_script(main)
