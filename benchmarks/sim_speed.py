"""Simulator speed: the playground's default comparison, and CoPD as branches and edges grow.

    python benchmarks/sim_speed.py            # prints a table, last line default_comparison_s=<s>

Target (docs/design.md §6): the default comparison (every method, 3 branches, 200 RL steps per
expert, 64 rollouts per step) in <= 1 s on 2 CPU cores, warm (the playground re-runs it in one process), and
with 5 seeds in <= 2 s. The last two lines: default_comparison_s=<s>, default_comparison_5seeds_s=<s>.

Columns: seconds is the whole run (median of --repeats); gap s the part of it spent measuring the
behavioural gap (Meter.measure_groups: every run measures all ordered pairs at tick 0, whose cost grows
as K^2 pairs x K domains of eval prompts); train ms/tick the rest per tick.
"""

from __future__ import annotations

import argparse
import statistics
import time

from copd_lab.algorithm.recipes import build_recipe
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


def timed(overrides: list[str], repeats: int) -> tuple[float, float, object]:
    """Median seconds of a whole run, median seconds of its gap measurement, and the last result."""
    cfg = load_config(None, overrides)
    run_comparison(cfg, progress=False)  # warm-up: imports, allocator, first-call dispatch
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
                         f"copd.hub='{domains[0]}'", "copd.cycles=2", "sim.eval_prompts=16",
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
    head = f"{'case':<34}{'K':>4}{'edges':>7}{'ticks':>7}{'branch-steps':>14}{'seconds':>9}{'ms/tick':>9}" \
           f"{'us/branch-step':>16}{'gap s':>8}{'train ms/tick':>15}"
    print(head)
    for name, k, _, edges, ticks, branch_steps, seconds, gap in rows:
        print(f"{name:<34}{k:>4}{edges:>7}{ticks:>7}{branch_steps:>14}{seconds:>9.3f}{1e3 * seconds / ticks:>9.2f}"
              f"{1e6 * seconds / branch_steps:>16.0f}{gap:>8.3f}{1e3 * (seconds - gap) / ticks:>15.2f}")
    print(f"default_comparison_s={default_s:.3f}")
    print(f"default_comparison_5seeds_s={seeds5_s:.3f}")


if __name__ == "__main__":
    main()
