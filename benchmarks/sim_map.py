"""Where each method wins in the simulator: CoPD − mixed RLVR and CoPD − MOPD over capacity x conflict x the
absorption barrier (sim.style_private) x the base's pretraining mix (sim.pretrain_mix: with conflict and little
capacity an uneven one is what makes mixed RLVR's divergence cost a fall below the base), under the exact and the
greedy score (issue 22).

    python benchmarks/sim_map.py --seeds 5

Each cell is one comparison (base, experts, mixed, mopd, copd) of `--seeds` run seeds side by side; a difference is
paired by seed: mean ± sample std (ddof = 1) of the per-seed difference of overall accuracy, in points. A cell is
marked when the difference is more than two of its stds from 0 (+ CoPD ahead, − behind). Nothing is tuned: the
cells are the knobs' grid, the rest the defaults (docs/simulator.md).
"""

from __future__ import annotations

import argparse
import itertools
import time

from copd_lab.config_io import load_config
from copd_lab.experiment import run_comparison
from copd_lab.results import paired_difference, per_seed_scores

METHODS = "['base', 'experts', 'mixed', 'mopd', 'copd']"
SCORES = ("acc_exact", "acc_greedy")


def cell(diff: tuple[float, float, int]) -> str:
    """A paired difference in points, marked + or − when it is more than two stds from 0."""
    mean, std, n = diff
    mark = "" if n < 2 or abs(mean) <= 2 * std else (" **+**" if mean > 0 else " **−**")
    return f"{100 * mean:+.1f} ± {100 * std:.1f}{mark}" if n > 1 else f"{100 * mean:+.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--capacity", type=int, nargs="+", default=[0, 48])
    parser.add_argument("--conflict", type=float, nargs="+", default=[0.0, 0.25, 0.5])
    parser.add_argument("--private", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    parser.add_argument("--pretrain", nargs="+", default=["equal", "3:1:1"],
                        help="sim.pretrain_mix values: 'equal', or weights joined by ':' (one per domain)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = parser.parse_args()
    start = time.perf_counter()
    head = "| pretrain_mix | capacity | conflict | style_private | " + " | ".join(
        f"CoPD − {other} ({score})" for score in SCORES for other in ("mixed", "MOPD")) + " |"
    lines = [head, "|" + "---|" * (4 + 2 * len(SCORES))]
    for mix, capacity, conflict, private in itertools.product(args.pretrain, args.capacity, args.conflict,
                                                              args.private):
        weights = [] if mix == "equal" else [float(w) for w in mix.split(":")]
        cfg = load_config(None, [f"methods={METHODS}", f"seeds={args.seeds}", f"sim.capacity={capacity}",
                                 f"sim.conflict={conflict}", f"sim.style_private={private}",
                                 f"sim.pretrain_mix={weights}", *args.set])
        metrics = run_comparison(cfg, progress=False).metrics
        cells = []
        for score in SCORES:
            overall = per_seed_scores(metrics, cfg.domains, score)["overall"]
            copd = overall.loc["copd"]
            cells += [cell(paired_difference(copd, overall.loc[other])) for other in ("mixed", "mopd")]
        lines.append(f"| {mix} | {capacity} | {conflict:g} | {private:g} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    print("\n" + "\n".join(lines))
    print(f"\npaired by seed: mean ± sample std over {args.seeds} seeds (ddof = 1) of the per-seed difference, in "
          f"points; **+** / **−**: more than 2 std from 0")
    print(f"\n{len(lines) - 2} cells in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
