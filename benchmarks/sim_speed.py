"""Simulator speed: the playground's default comparison, and CoPD as branches and edges grow.

    python benchmarks/sim_speed.py            # prints a table, last line default_comparison_s=<s>

Target (docs/design.md §6): the default comparison (every method, 3 branches, 200 RL steps per
expert, 64 rollouts per step) in <= 1 s on 2 CPU cores, warm (the playground re-runs it in one process), and
with 5 seeds in <= 2 s. The last two lines: default_comparison_s=<s>, default_comparison_5seeds_s=<s>.
Issue 22 (gap cost at large K): a K = 30 comparison of experts and CoPD (hub d0, default steps, gap at
every gap_every and eval tick) in <= 60 s on 2 cores, with metrics.gap_pairs = auto (the hub's edges at
K > 10); `--comparison-pairs auto all` times every ordered pair beside it (minutes), `--comparison 0` skips it.

Columns: seconds is the whole run (median of --repeats; the K = 30 comparison: one cold run); gap s the part
of it spent measuring the behavioural gap (Meter.measure_groups: every run measures the gap at tick 0; the
CoPD K rows measure all ordered pairs, whose cost grows as K^2 pairs x K domains of eval prompts); train
ms/tick the rest per tick.
"""

from __future__ import annotations

import argparse
import statistics
import time

from copd_lab.algorithm.recipes import build_recipe
from copd_lab.config import GAP_PAIRS
from copd_lab.config_io import load_config
from copd_lab.experiment import run_comparison
from copd_lab.records.measure import Meter

_gap_seconds = [0.0]
_measure_groups = Meter.measure_groups


def _timed_measure_groups(self, *args, **kwargs):  # a clock around the library's gap measurement
    start = time.perf_counter()
    try:
        return _measure_groups(self, *args, **kwargs)
    finally:
        _gap_seconds[0] += time.perf_counter() - start


Meter.measure_groups = _timed_measure_groups


def timed(overrides: list[str], repeats: int, warm_up: bool = True) -> tuple[float, float, object]:
    """Median seconds of a whole run, median seconds of its gap measurement, and the last result."""
    cfg = load_config(None, overrides)
    if warm_up:  # imports, allocator, first-call dispatch (a minute-long run need not pay its own twice)
        run_comparison(cfg, progress=False)
    times, gaps, result = [], [], None
    for _ in range(repeats):
        _gap_seconds[0] = 0.0
        start = time.perf_counter()
        result = run_comparison(cfg, progress=False)
        times.append(time.perf_counter() - start)
        gaps.append(_gap_seconds[0])
    return statistics.median(times), statistics.median(gaps), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--branches", type=int, nargs="+", default=[3, 10, 30])
    parser.add_argument("--comparison", type=int, default=30, help="K of the experts + CoPD comparison (0: skip)")
    parser.add_argument("--comparison-pairs", nargs="+", default=["auto"], choices=GAP_PAIRS,
                        help="metrics.gap_pairs of that comparison, a row each (all at K = 30: about 4 minutes)")
    args = parser.parse_args()
    rows = []
    default_s, default_gap, result = timed([], args.repeats)
    steps = result.metrics[result.metrics.metric == "steps"].value.sum()
    rows.append(("default comparison (7 methods)", 3, "hub", 4, 600, int(steps), default_s, default_gap))
    seeds5_s, seeds5_gap, result = timed(["seeds=5"], args.repeats)  # side by side in one world
    steps = result.metrics[result.metrics.metric == "steps"].value.sum()
    rows.append(("  the same, 5 seeds", 3, "hub", 4, 3000, int(steps), seeds5_s, seeds5_gap))
    for k in args.branches:
        domains = [f"d{i}" for i in range(k)]
        for topology in ("hub", "all_pairs"):
            # training cost: the gap is measured only at tick 0 (always); every 10 ticks is timed separately below
            overrides = [f"domains={domains}", "methods=['copd']", f"copd.topology='{topology}'",
                         f"copd.hub='{domains[0]}'", "copd.cycles=2", "sim.eval_prompts=16", "metrics.gap_pairs='all'",
                         "metrics.gap_every=100000", "metrics.gap_at_phase_end=false"]
            seconds, gap, result = timed(overrides, args.repeats)
            recipe = build_recipe("copd", load_config(None, overrides))
            edges = len(recipe.stages[1].edges)
            ticks = sum(s.steps for s in recipe.stages)
            branch_steps = sum(recipe.steps_per_branch().values())
            rows.append((f"CoPD K={k} {topology}", k, topology, edges, ticks, branch_steps, seconds, gap))
        gap_overrides = overrides[:-2] + ["metrics.gap_every=10", "metrics.gap_at_phase_end=false"]
        seconds, gap, _ = timed(gap_overrides, args.repeats)
        rows.append((f"  + gap of {k * k} pairs every 10 ticks", k, topology, edges, ticks, branch_steps, seconds, gap))
    comparison_s = {}
    if args.comparison:  # issue 22's target: the gap measured at its default cadence, on the pairs gap_pairs picks
        domains = [f"d{i}" for i in range(args.comparison)]
        for pairs in args.comparison_pairs:
            overrides = [f"domains={domains}", "methods=['experts', 'copd']", "copd.topology='hub'",
                         f"copd.hub='{domains[0]}'", f"metrics.gap_pairs='{pairs}'"]
            seconds, gap, result = timed(overrides, 1, warm_up=False)
            cfg = load_config(None, overrides)
            ticks = max(sum(s.steps for s in build_recipe(m, cfg).stages) for m in cfg.methods)  # side by side
            steps = result.metrics[result.metrics.metric == "steps"].value.sum()
            edges = len(build_recipe("copd", cfg).stages[1].edges)
            rows.append((f"K={args.comparison} experts+copd, gap {pairs}", args.comparison, "hub", edges, ticks,
                         int(steps), seconds, gap))
            comparison_s[pairs] = seconds
    head = f"{'case':<34}{'K':>4}{'edges':>7}{'ticks':>7}{'branch-steps':>14}{'seconds':>9}{'ms/tick':>9}" \
           f"{'us/branch-step':>16}{'gap s':>8}{'train ms/tick':>15}"
    print(head)
    for name, k, _, edges, ticks, branch_steps, seconds, gap in rows:
        print(f"{name:<34}{k:>4}{edges:>7}{ticks:>7}{branch_steps:>14}{seconds:>9.3f}{1e3 * seconds / ticks:>9.2f}"
              f"{1e6 * seconds / branch_steps:>16.0f}{gap:>8.3f}{1e3 * (seconds - gap) / ticks:>15.2f}")
    for pairs, seconds in comparison_s.items():
        print(f"comparison_k{args.comparison}_gap_{pairs}_s={seconds:.3f}")
    print(f"default_comparison_s={default_s:.3f}")
    print(f"default_comparison_5seeds_s={seeds5_s:.3f}")


if __name__ == "__main__":
    main()
