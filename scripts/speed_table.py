"""The speed table, written from one `scripts/benchmark.py` JSON: docs/benchmarks.md and the
README's short speed table (between its `speed-table` markers), never typed by hand.

    python scripts/benchmark.py --torch --config configs/mlp_small.py --config configs/vae.py \
        --config configs/paper_hvae.py --config configs/paper_vampprior.py --config configs/conv.py \
        --out docs/bench/speed.json
    python scripts/speed_table.py docs/bench/speed.json [--readme README.md] [--out docs/benchmarks.md]

Every share is of the fp32 matmul ceiling measured in the same process: the higher of its two
measurements (before the first config and after the last), so a ceiling measured while the
machine was busy does not flatter the shares. Imports no JAX.
"""

import json
import os
import sys
from pathlib import Path

# scripts/docs/markdown.py is the repository's, imported as scripts.docs.markdown from its root
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts.docs import markdown  # noqa: E402
from vae import cli_flags  # noqa: E402

SECTION = "speed-table"  # the README's generated block: <!-- speed-table:begin --> ... :end -->


def build_parser() -> cli_flags.ArgumentParser:
    parser = cli_flags.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="the output of scripts/benchmark.py --out")
    parser.add_argument("--out", default="docs/benchmarks.md", help="the page to write")
    parser.add_argument("--readme", default="README.md",
                        help="the README whose speed table to replace ('' for none)")
    return parser


def ceiling_gflops(result: dict) -> float:
    measured = [result["matmul_ceiling"]["gflops"]]
    if "matmul_ceiling_at_end" in result:
        measured.append(result["matmul_ceiling_at_end"]["gflops"])
    return max(measured)


def rows(result: dict) -> list[dict]:
    """One row per config and batch size: rates and their shares of the ceiling."""
    ceiling = ceiling_gflops(result) * 1e9
    table = []
    for entry in result["configs"]:
        for run in entry["runs"]:
            flops = run.get("matmul_flops", entry["matmul_flops"])
            iwae = run["iwae"]
            row = {
                "config": entry["config_file"] + "".join(f" {o}" for o in entry.get("overrides", [])),
                "batch_size": run["batch_size"], "devices": run["devices"],
                "train": run["train"]["images_per_sec"],
                "train_share": run["train"]["images_per_sec"] * flops["train_per_image"] / ceiling,
                "eval": run["elbo_eval"]["images_per_sec"],
                "eval_share": run["elbo_eval"]["images_per_sec"] * flops["elbo_eval_per_image"] / ceiling,
                "iwae": [(i["k"], i["images_per_sec"],
                          i["samples_per_sec"] * flops["iwae_decoder_per_sample"] / ceiling,
                          i["samples_per_sec"] * flops["iwae_per_sample"] / ceiling)
                         for i in [iwae, *run.get("iwae_more", [])]],
                "compile_sec": run["compile_sec"], "step_p50_ms": run["step_time_ms"]["p50"],
                "others_cpu": max(run["train"].get("others_cpu") or [0.0]),
            }
            if "torch" in run:
                row["torch"] = run["torch"]
            table.append(row)
    return table


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def speed_table(result: dict) -> str:
    lines = ["| config (batch) | training images/s | of ceiling | ELBO evaluation images/s | of ceiling "
             "| IWAE images/s (k) | decoder of ceiling | all IWAE matmuls of ceiling |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows(result):
        rates = "; ".join(f"{_rate(rate)} (k={k:,})" for k, rate, _, _ in r["iwae"])
        shares = "; ".join(f"{share:.0%}" for _, _, share, _ in r["iwae"])
        all_shares = "; ".join(f"{share:.0%}" for _, _, _, share in r["iwae"])
        lines.append(f"| `{r['config']}` ({r['batch_size']}) | {_rate(r['train'])} | {r['train_share']:.0%} "
                     f"| {_rate(r['eval'])} | {r['eval_share']:.0%} | {rates} | {shares} | {all_shares} |")
    return "\n".join(lines) + "\n"


def ratio_note(r: dict) -> str:
    """What "JAX is" means: a median of per-epoch ratios, beside the ratio of the medians."""
    t = r["torch"]
    return ("\"JAX is\" is the median, over the alternated epochs, of JAX's images/s over the PyTorch "
            "loop's in the epoch beside it; the ratios of the medians above are "
            f"{r['train'] / t['idiomatic_images_per_sec']:.2f}x and "
            f"{r['train'] / t['tuned_images_per_sec']:.2f}x.")


def torch_table(result: dict) -> str:
    torch_rows = [r for r in rows(result) if "torch" in r]
    if not torch_rows:
        return ""
    lines = ["| trainer | images/s | JAX is |", "| --- | ---: | ---: |"]
    for r in torch_rows:
        t = r["torch"]
        project = f"**this project**, `{r['config']}` (batch {r['batch_size']})"
        lines += [f"| {project} | **{_rate(r['train'])}** | |",
                  f"| PyTorch, idiomatic (DataLoader, `torch.bernoulli`, Adam) | "
                  f"{_rate(t['idiomatic_images_per_sec'])} | {t['jax_over_idiomatic']:.2f}x as fast |",
                  f"| PyTorch, tuned (one tensor + `randperm`, fused Adam, {t['threads']} threads) | "
                  f"{_rate(t['tuned_images_per_sec'])} | {t['jax_over_tuned']:.2f}x as fast |"]
    notes = [ratio_note(r) for r in torch_rows]
    return "\n".join(lines + [""] + notes[:1] + [n for n in notes[1:] if n != notes[0]]) + "\n"


def provenance(result: dict, source: str) -> str:
    m = result["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
    busiest = max((r["others_cpu"] for r in rows(result)), default=0.0)
    start = result["matmul_ceiling"]["gflops"]
    end = result.get("matmul_ceiling_at_end", {}).get("gflops", 0.0)
    return (f"Measured by `python {result['command']}` ({source}) on {m['cpu']}, {m['cores']} cores, "
            f"{m['backend']}; {versions}. fp32 matmul ceiling {start:,.0f} GFLOP/s before the first "
            f"config and {end:,.0f} after the last; shares are of the higher, "
            f"{ceiling_gflops(result):,.0f} GFLOP/s. Other "
            f"processes took at most {busiest:.0%} of the CPUs during a timed training epoch. Medians over "
            "the epochs after the first; the PyTorch loops alternate with JAX one epoch at a time.")


def page(result: dict, source: str) -> str:
    parts = ["# Benchmarks", "",
             "Written by `scripts/speed_table.py` from one run of `scripts/benchmark.py`, which builds "
             "and times exactly the programs `scripts/train.py` and `scripts/evaluate.py` run: the "
             "training epoch, the negative-ELBO evaluation and the importance-weighted bound. Each "
             "share is of the fp32 matmul ceiling measured in the same process, with the matmul FLOPs "
             "counted on the traced programs at the batch sizes that run (the IWAE columns: its "
             "decoder's matmuls, the hot loop of a one-level model; and all its matmuls, which for the "
             "HVAE include q(z1 | x, z2) and p(z1 | z2) per sample).", "",
             speed_table(result)]
    torch = torch_table(result)
    if torch:
        parts += ["## Against PyTorch, one process, runs alternated", "", torch]
    parts += [provenance(result, source), ""]
    return "\n".join(parts)


def readme_section(result: dict, source: str, page_link: str) -> str:
    """The README's short version: one config's training rate (the first measured against PyTorch,
    else the first) beside the PyTorch loops, the machine, and a link to the whole page."""
    table = rows(result)
    r = next((row for row in table if "torch" in row), table[0])
    lines = [f"| trainer, `{r['config']}` (batch {r['batch_size']}) | training images/s | JAX is |",
             "| --- | ---: | ---: |", f"| **this project** | **{_rate(r['train'])}** | |"]
    if "torch" in r:
        t = r["torch"]
        lines += [f"| PyTorch, idiomatic (DataLoader, `torch.bernoulli`, Adam) | "
                  f"{_rate(t['idiomatic_images_per_sec'])} | {t['jax_over_idiomatic']:.2f}x as fast |",
                  f"| PyTorch, tuned (one tensor + `randperm`, fused Adam, {t['threads']} threads) | "
                  f"{_rate(t['tuned_images_per_sec'])} | {t['jax_over_tuned']:.2f}x as fast |", "",
                  ratio_note(r)]
    m = result["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items() if k in ("jax", "torch"))
    script = result["command"].split()[0]
    lines += ["", f"From {source}, written by `python {script} ...` on {m['cpu']}, {m['cores']} cores, "
                  f"{m['backend']} ({versions}); every config, the command and the machine's load: "
                  f"[{Path(page_link).name}]({page_link})."]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = json.loads(Path(args.json).read_text())
    except (OSError, json.JSONDecodeError) as e:
        print(f"error: {args.json} is not a scripts/benchmark.py JSON: {e}", file=sys.stderr)
        return 2
    Path(args.out).write_text(page(result, args.json))
    print(args.out)
    if args.readme:
        readme = Path(args.readme)
        try:
            page_link = os.path.relpath(args.out, readme.parent)
            text = markdown.replace_section(readme.read_text(), SECTION,
                                            readme_section(result, args.json, page_link), args.readme)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        readme.write_text(text)
        print(args.readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
