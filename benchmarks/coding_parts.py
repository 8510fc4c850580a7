"""Where an 8-bit model's coding time goes, per sub-pixel, in one block of the codec's size: each
part of `codec.compress` and `codec.decode` timed alone on that block (random latents, the model's
mean image as the pixels), medians of a few repetitions, compilation not counted.

    python benchmarks/coding_parts.py --workdir runs/photos [--repeats 5] [--block_size ROWS]

Encoding: p(x|z)'s parameters (the float64 decoder and the rounding to integers), q(z|x), the
pushed rounds' probabilities (every round's counts, with the margins and the figures' log p(x|z)),
constriction's pushes. Decoding: the first round (with the parameters' integers), then the 3 other
rounds and constriction's 4 pops, each apart. The block is the codec's: 42 tiles of a photo model
(a folder's run: `codec.tile_block_size`), 100 images of another. Prints one line of nanoseconds
per sub-pixel; timings are of this machine as it was: say whether it was shared.
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

# benchmarks/ is the repository's, beside scripts/ (the package installs only vae)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="an 8-bit model's run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--block_size", type=int, default=None, help="rows a block (default: the codec's)")
    args = parser.parse_args(argv)

    import constriction
    import jax

    from vae.coding import codec, fixed_point, pixel_code
    from vae.data import folder

    loaded = codec.load(args.workdir)
    if loaded.family not in fixed_point.EIGHT_BIT:
        sys.exit(f"{args.workdir}: a {loaded.family} model; this benchmark times the 8-bit pixel code")
    tiled = folder.is_folder(loaded.config.data.name)
    default_block = codec.tile_block_size(loaded.image_shape) if tiled else codec.DEFAULT_BLOCK_SIZE
    block = args.block_size or default_block
    host = loaded.host(block)
    sub_pixels = block * host.num_pixels
    rng = np.random.default_rng(0)
    zs = [rng.standard_normal((block, size)) for size in host.layer_sizes]
    symbols = np.clip(np.rint(host.pixel_mean(zs)), 0, 255).astype(np.uint8)
    parameters = host.pixel_parameters(zs, 0.0)
    code = pixel_code.PixelCode(host.family, host.num_pixels, block)
    rounds = host.pixel_probabilities(parameters, symbols)[0]
    coder = constriction.stream.stack.AnsCoder()
    code.push(coder, symbols, rounds)
    words = coder.get_compressed()

    def median_ns(run) -> float:
        run()
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return statistics.median(times) / sub_pixels * 1e9

    def push():
        code.push(constriction.stream.stack.AnsCoder(), symbols, rounds)

    parts = {
        "parameters": median_ns(lambda: jax.block_until_ready(host.pixel_parameters(zs, 0.0).integers)),
        "q(z|x)": median_ns(lambda: host.posterior(0, symbols, [])),
        "rounds' probabilities": median_ns(lambda: host.pixel_probabilities(parameters, symbols)),
        "pushes": median_ns(push),
    }
    first, later, pops = [], [], []
    for _ in range(args.repeats + 1):
        decoder = constriction.stream.stack.AnsCoder(words)
        start = time.perf_counter()
        integers, probabilities, state = jax.block_until_ready(host.pixel_search(parameters))
        first.append(time.perf_counter() - start)
        part = np.zeros(len(probabilities), np.int32)
        round_time = pop_time = 0.0
        for r, (step, count) in enumerate(code.schedule):
            if r:
                start = time.perf_counter()
                with jax.enable_x64(True):
                    probabilities, state = jax.block_until_ready(
                        code._next_round(integers, state, part, code.schedule[r - 1][0], step, count))
                round_time += time.perf_counter() - start
            start = time.perf_counter()
            part[:] = decoder.decode(pixel_code._PARTS, np.asarray(probabilities))
            pop_time += time.perf_counter() - start
        later.append(round_time)
        pops.append(pop_time)
    for name, values in (("first round", first), ("3 later rounds", later), ("4 pops", pops)):
        parts[name] = statistics.median(values[1:]) / sub_pixels * 1e9
    print(f"{args.workdir}: K = {loaded.config.model.mixture_components}, block of {block} "
          f"({sub_pixels} sub-pixels); ns per sub-pixel:")
    print("  " + ", ".join(f"{name} {value:.0f}" for name, value in parts.items()))
    encode = sum(parts[n] for n in ("parameters", "q(z|x)", "rounds' probabilities", "pushes"))
    decode = sum(parts[n] for n in ("parameters", "q(z|x)", "first round", "3 later rounds", "4 pops"))
    print(f"  encoding {encode:.0f}, decoding {decode:.0f} (the pixel code's parts; the latents, the "
          f"first image and the file are not counted)")


if __name__ == "__main__":
    main()
