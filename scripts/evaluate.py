"""Test-set log-likelihood of a trained workdir (importance-weighted bound) and its negative ELBO.

    python scripts/evaluate.py --workdir runs/default --iw-samples 5000

Writes WORKDIR/eval.json (or --out/eval.json) and prints it. Nats per image.
"""

import argparse
import json
import sys
from pathlib import Path

from vae import cli, evaluation, workdir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--iw-samples", type=int, default=5000, help="importance samples k per image")
    parser.add_argument("--checkpoint", choices=("best", "latest"), default="best",
                        help="best: lowest validation -ELBO (the latest where the run has no validation "
                             "split); latest: the newest checkpoint")
    parser.add_argument("--epoch", type=int, default=None, help="one of the latest checkpoints, by epoch")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per device call (default: 32 per CPU device); no effect on the result")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="samples decoded at once per image (default: about 1024 rows per CPU device); "
                             "no effect on the result")
    parser.add_argument("--max-examples", type=int, default=None, help="only the first N test images")
    parser.add_argument("--out", default=None, help="output directory (default: the workdir)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.iw_samples < 1 or any(v is not None and v < 1 for v in (args.batch_size, args.chunk_size)):
        parser.error("--iw-samples, --batch-size and --chunk-size must be >= 1")
    cli.quiet_logs()
    with cli.user_errors():
        if not Path(args.workdir).is_dir():
            raise workdir.WorkdirError(f"workdir {args.workdir} does not exist")
        result = evaluation.evaluate_workdir(
            args.workdir, args.iw_samples, epoch=args.epoch, checkpoint=args.checkpoint,
            batch_size=args.batch_size, chunk_size=args.chunk_size, max_examples=args.max_examples,
            progress=not args.no_progress)
        out = Path(args.out or args.workdir)
        out.mkdir(parents=True, exist_ok=True)
        workdir.atomic_write_text(out / "eval.json", json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"test NLL {result['test/nll']:.2f} nats (k={result['iw_samples']}, {result['checkpoint']} "
          f"checkpoint, epoch {result['epoch']}), negative ELBO "
          f"{result['test/elbo']:.2f}, {result['test/active_units']} active units, "
          f"{result['iwae_time_sec']:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
