"""Where in a two-knob plane of the simulator CoPD does or does not beat other methods (issue 10).

    python benchmarks/sim_knobs.py --rows sim.style_habit=0,0.5,1 --cols sim.conflict=0,0.25,0.5 --seeds 5

Every cell runs the methods for `--seeds` seeds and prints, per method, the overall exact held-out accuracy
(mean ± sample std over seeds, ddof = 1), then CoPD minus each other method, paired by seed (mean ± sample std
of the per-seed differences, copd_lab.results.paired_difference). One seed: no ±.
"""

from __future__ import annotations

import argparse
import math
import time

import pandas as pd

from copd_lab.config_io import load_config
from copd_lab.experiment import run_comparison
from copd_lab.results import paired_difference


def axis(text: str) -> tuple[str, list[str]]:
    key, _, values = text.partition("=")
    return key, values.split(",")


def spread(mean: float, std: float, signed: bool = False) -> str:
    """mean ± std, the std left out where it is NaN (one seed)."""
    cell = f"{mean:+.1f}" if signed else f"{mean:.1f}"
    return cell if math.isnan(std) else f"{cell} ± {std:.1f}"


def over_seeds(scores: pd.Series) -> str:
    return spread(scores.mean(), scores.std(ddof=1) if len(scores) > 1 else math.nan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="sim.style_habit=0,0.5,1", help="knob=v1,v2,... of the table's rows")
    parser.add_argument("--cols", default="sim.conflict=0,0.25,0.5", help="knob=v1,v2,... of its columns")
    parser.add_argument("--methods", default="mixed,mopd,copd", help="compared methods; copd is the reference")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    args = parser.parse_args()
    start = time.perf_counter()
    (row_key, row_values), (col_key, col_values) = axis(args.rows), axis(args.cols)
    methods = args.methods.split(",")
    others = [m for m in methods if m != "copd"]
    cells = {}
    for r in row_values:
        for c in col_values:
            cfg = load_config(None, args.set + [f"{row_key}={r}", f"{col_key}={c}", f"seeds={args.seeds}",
                                                f"methods={methods}"])
            result = run_comparison(cfg, progress=False)
            score = result.metrics[result.metrics.metric.str.startswith("final_acc_exact/")]
            overall = score.groupby(["branch", "seed"]).value.mean().unstack("seed") * 100  # model x seed
            cells[r, c] = {m: overall.loc[m] for m in methods}  # indexed by seed: differences pair by it
    print(f"rows: {row_key}; columns: {col_key}; {args.seeds} seeds a cell ({cfg.seed}..{cfg.seed + args.seeds - 1}); "
          "overall exact held-out accuracy (%)\n")
    print(f"| {row_key} \\ {col_key} | " + " | ".join(col_values) + " |")
    print("|---|" + "---|" * len(col_values))
    for r in row_values:
        for m in methods:
            print(f"| {r}: {m} | " + " | ".join(over_seeds(cells[r, c][m]) for c in col_values) + " |")
        for m in others:
            diffs = [paired_difference(cells[r, c]["copd"], cells[r, c][m]) for c in col_values]
            print(f"| {r}: copd − {m} | " + " | ".join(spread(mean, std, signed=True) for mean, std, _ in diffs) + " |")
    if args.seeds > 1:
        print(f"\nmean ± sample std over {args.seeds} seeds (ddof = 1); copd − x: of the per-seed differences")
    print(f"\n{len(cells)} cells in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
