"""Test-set log-likelihood of a trained workdir (importance-weighted bound) and its negative ELBO.

    python scripts/evaluate.py --workdir runs/default --iw_samples 5000

Keeps every evaluation in WORKDIR/evals/ (named by k, checkpoint, epoch and test images; or in
--out/evals/) and makes WORKDIR/eval.json the strongest of them (most test images, then most
importance samples), so a quick look never replaces the headline number; prints it. Nats per
image. Over several processes it takes train.py's joining flags (--coordinator_address,
--num_processes, --process_id) and splits the images over every process's devices; process 0
writes and prints.
"""

import json
import math
import sys
from pathlib import Path

from vae import cli, cli_flags
from vae.analysis import iwae
from vae.train import distributed
from vae.workdir import files

MAX_DRAWS_PER_CALL = iwae.MAX_DRAWS_PER_CALL


def build_parser() -> cli_flags.ArgumentParser:
    parser = cli_flags.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--iw_samples", type=cli_flags.integer(1), default=5000,
                        help="importance samples k per image")
    cli_flags.add_checkpoint_arguments(parser)
    parser.add_argument("--batch_size", type=cli_flags.integer(1), default=None,
                        help="images per device call (default: 32 per CPU device); no effect on the result")
    parser.add_argument("--chunk_size", type=cli_flags.integer(1), default=None,
                        help="samples decoded at once per image (default: about 1024 rows per CPU device); "
                             "no effect on the result")
    parser.add_argument("--max_examples", type=cli_flags.integer(1), default=None,
                        help="only the first N test images")
    parser.add_argument("--out", default=None, help="output directory (default: the workdir)")
    cli_flags.add_progress_argument(parser)
    cli_flags.add_settings_arguments(parser, distributed.Settings, distributed.FLAGS_TITLE)
    parser.add_check(check)
    return parser


def check(args) -> str | None:
    sizes = {flag: v for flag, v in (("--batch_size", args.batch_size), ("--chunk_size", args.chunk_size))
             if v is not None}
    if math.prod(sizes.values()) > MAX_DRAWS_PER_CALL:  # checked again once the defaults are known
        return (f"argument {'/'.join(sizes)}: batch x chunk is the number of images the decoder "
                f"holds at once, at most {MAX_DRAWS_PER_CALL:,}; got "
                f"{' x '.join(f'{v:,}' for v in sizes.values())}")
    return None


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cli.start()
    with cli.distributed_run(cli_flags.settings_from(args, distributed.Settings)):
        if not Path(args.workdir).is_dir():
            raise files.WorkdirError(f"workdir {args.workdir} does not exist")
        writer = distributed.is_writer()
        result = iwae.evaluate_workdir(
            args.workdir, args.iw_samples, epoch=args.epoch, checkpoint=args.checkpoint,
            batch_size=args.batch_size, chunk_size=args.chunk_size, max_examples=args.max_examples,
            progress=writer and not args.no_progress)
        if writer:
            kept, headline = files.save_evaluation(Path(args.out or args.workdir), result)
    if not writer:
        return 0
    print(json.dumps(result, indent=2))
    print(f"test NLL {result['test/nll']:.2f} nats = {result['test/nll_bits_per_dim']:.4f} bits/dim "
          f"(k={result['iw_samples']}, {result['checkpoint']} checkpoint, epoch {result['epoch']}), negative "
          f"ELBO {result['test/elbo']:.2f}, {result['test/active_units']} active units, "
          f"{result['iwae_time_sec']:.0f} s", file=sys.stderr)
    print(f"kept in {kept}; " + ("eval.json now holds it" if headline is result else
                                 f"eval.json keeps the stronger k={headline['iw_samples']} evaluation of "
                                 f"{headline['num_examples']} images"), file=sys.stderr)
    return 0


if __name__ == "__main__":
    cli.run_script(main)
