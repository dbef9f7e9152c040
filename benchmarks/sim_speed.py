"""Simulator speed: the playground's default comparison, and CoPD as branches and edges grow.

    python benchmarks/sim_speed.py            # prints a table, last line default_comparison_s=<s>

Target (DESIGN.md section 6): the default comparison (every method, 3 branches, 200 RL steps per
expert, 64 rollouts per step) in <= 1 s on 2 CPU cores, warm (the playground re-runs it in one process).
"""

from __future__ import annotations

import argparse
import statistics
import time

from copd_lab.config import load_config
from copd_lab.experiment import run_comparison
from copd_lab.recipes import build_recipe


def timed(overrides: list[str], repeats: int) -> tuple[float, object]:
    cfg = load_config(None, overrides)
    run_comparison(cfg, progress=False)  # warm-up: imports, allocator, first-call dispatch
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run_comparison(cfg, progress=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--branches", type=int, nargs="+", default=[3, 10, 30])
    args = parser.parse_args()
    rows = []
    default_s, result = timed([], args.repeats)
    steps = result.metrics[result.metrics.metric == "steps"].value.sum()
    rows.append(("default comparison (7 methods)", 3, "hub", 4, 600, int(steps), default_s))
    for k in args.branches:
        domains = [f"d{i}" for i in range(k)]
        for topology in ("hub", "all_pairs"):
            # training cost only: measuring the gap of all K(K-1) ordered pairs is timed separately below
            overrides = [f"domains={domains}", "methods=['copd']", f"copd.topology='{topology}'",
                         f"copd.hub='{domains[0]}'", "copd.cycles=2", "sim.prompts_per_domain=8",
                         "metrics.gap_every=100000", "metrics.gap_at_phase_end=false"]
            seconds, result = timed(overrides, args.repeats)
            recipe = build_recipe("copd", load_config(None, overrides))
            edges = len(recipe.stages[1].edges)
            ticks = sum(s.steps for s in recipe.stages)
            branch_steps = sum(recipe.steps_per_branch().values())
            rows.append((f"CoPD K={k} {topology}", k, topology, edges, ticks, branch_steps, seconds))
        gap_overrides = overrides[:-2] + ["metrics.gap_every=10", "metrics.gap_at_phase_end=false"]
        seconds, _ = timed(gap_overrides, args.repeats)
        rows.append((f"  + gap of {k * k} pairs every 10 ticks", k, topology, edges, ticks, branch_steps, seconds))
    head = f"{'case':<34}{'K':>4}{'edges':>7}{'ticks':>7}{'branch-steps':>14}{'seconds':>9}{'ms/tick':>9}" \
           f"{'us/branch-step':>16}"
    print(head)
    for name, k, _, edges, ticks, branch_steps, seconds in rows:
        print(f"{name:<34}{k:>4}{edges:>7}{ticks:>7}{branch_steps:>14}{seconds:>9.3f}{1e3 * seconds / ticks:>9.2f}"
              f"{1e6 * seconds / branch_steps:>16.0f}")
    print(f"default_comparison_s={default_s:.3f}")


if __name__ == "__main__":
    main()
