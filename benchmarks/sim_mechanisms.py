"""The simulator's mechanism table: each mechanism's signature at defaults and with its knob turned (issue 10).

    python benchmarks/sim_mechanisms.py --seeds 5

Every number is mean ± sample std (ddof = 1) over run seeds s..s+n-1 (s = --seed, n = --seeds) on one task, task
seed t+s (t = sim.task_seed, 0 by default), except the gradient cosine and the base's own figures, which depend on
no run seed: their spread is over task seeds t+s..t+s+n-1 (the first of them the runs' task). One seed: no ±.
Absorption and merge damage pool their points over the seeds and fit one line. The seeds used are printed above
the table. See docs/simulator.md for what each row means.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import pandas as pd

from copd_lab.config_io import load_config
from copd_lab.sim.world import SimWorld
from copd_lab.studies import mechanisms as mech
from copd_lab.world import Request


def spread(values: list[float], digits: int = 3) -> str:
    """Mean ± sample std (ddof = 1); the mean alone for one value (its std is undefined)."""
    values = np.asarray(values, float)
    mean = f"{values.mean():.{digits}f}"
    return f"{mean} ± {values.std(ddof=1):.{digits}f}" if len(values) > 1 else mean


def seeds(values) -> str:
    values = list(values)
    return f"{values[0]}..{values[-1]}" if len(values) > 1 else str(values[0])


def base_figures(cfg) -> dict[str, float]:
    """The base's exact held-out accuracy (min and max over domains) and its first-token entropy."""
    world = SimWorld(cfg.sim, cfg.domains)
    world.reset(1, 0)
    accuracy = world.exact_accuracy([Request(0, (d,)) for d in range(len(cfg.domains))])
    batch = world.sample([Request(0, (d,)) for d in range(len(cfg.domains))], 0, 1, 1.0, every_prompt=True)
    first = world.full_logprobs(batch, [0] * len(cfg.domains), grad=False)[:, :, 0]
    return {"acc_min": 100 * float(accuracy.min()), "acc_max": 100 * float(accuracy.max()),
            "entropy": float(-(first.exp() * first).sum(-1).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every run (e.g. expert_steps=50)")
    args = parser.parse_args()
    start = time.perf_counter()
    cfg = load_config(None, args.set)
    cfg = mech.with_sim(cfg, task_seed=cfg.sim.task_seed + args.seed)  # --seed moves the task as well as the runs
    runs = [dataclasses.replace(cfg, seed=args.seed + i, seeds=1) for i in range(args.seeds)]
    task_seeds = [cfg.sim.task_seed + i for i in range(args.seeds)]
    tasks = [mech.with_sim(r, task_seed=t) for r, t in zip(runs, task_seeds)]
    s, c = cfg.sim.shared_skill, cfg.sim.conflict
    rows = []

    def row(mechanism: str, knob: str, setting: str, signature: str, value: str) -> None:
        rows.append((mechanism, knob, setting, signature, value))

    base = [base_figures(t) for t in tasks]
    row("base", "sim.base_steps", f"{cfg.sim.base_steps} (default)", "exact held-out accuracy, worst / best domain %",
        f"{spread([b['acc_min'] for b in base], 1)} / {spread([b['acc_max'] for b in base], 1)}")
    row("base", "", "", "first-token entropy (nats)", spread([b["entropy"] for b in base], 2))
    row("base", "sim.lr", f"{cfg.sim.lr:g} (default)", "experts' ‖θ_k − θ_0‖ / ‖θ_0‖",
        spread([mech.task_vector_ratio(r) for r in runs]))

    for knob, setting, knobs in (("sim.styles", f"{cfg.sim.styles} (default)", {}), ("sim.styles", "1 (off)",
                                                                                    {"styles": 1}),
                                 ("sim.style_habit", "0", {"style_habit": 0.0})):
        drift = [mech.drift(mech.with_sim(r, **knobs)) for r in runs]
        row("drift", knob, setting, "experts' top-10 overlap with the base, first → last",
            f"{spread([d['overlap_first'] for d in drift])} → {spread([d['overlap_last'] for d in drift])}")
        row("drift", knob, setting, "  drop of that overlap", spread([d["overlap_drop"] for d in drift]))
        row("drift", knob, setting, "symmetric KL between experts, first → last",
            f"{spread([d['kl_first'] for d in drift], 2)} → {spread([d['kl_last'] for d in drift], 2)}")
        row("drift", knob, setting, "  growth (last / first)", spread([d["kl_growth"] for d in drift], 1))

    for shared, conflict, note in ((s, 0.0, "0 (off)"), (s, c, f"{c:g} (default)"), (s, 1 - s, f"{1 - s:g} (max)"),
                                   (0.0, 0.0, "0, shared_skill 0"), (0.0, 1.0, "1, shared_skill 0")):
        cosine = [mech.base_gradient_cosine(mech.with_sim(t, shared_skill=shared, conflict=conflict)) for t in tasks]
        row("conflict", "sim.conflict", note, "exact gradient cosine between domains at the base", spread(cosine))
        if shared == s:
            deficit = [mech.mixed_deficit(mech.with_sim(r, conflict=conflict)) for r in runs]
            row("conflict", "sim.conflict", note, "mixed RLVR's worst-domain deficit vs the expert (points)",
                spread([d["worst_deficit"] for d in deficit], 1))

    for shared, conflict, note in ((0.0, 0.0, "0, conflict 0"), (s, 0.0, f"{s:g}, conflict 0"),
                                   (1.0, 0.0, "1, conflict 0"), (0.0, c, f"0, conflict {c:g}"),
                                   (s, c, f"{s:g}, conflict {c:g} (defaults)")):
        gains = [mech.transfer(mech.with_sim(r, shared_skill=shared, conflict=conflict)) for r in runs]
        row("transfer", "sim.shared_skill", note, "expert's gain over the base: own domain; other domains (points)",
            f"{spread([g['own_gain'] for g in gains], 1)}; {spread([g['off_gain'] for g in gains], 1)}")

    pilot = pd.concat([mech.absorption(r) for r in runs])
    for name, column in (("OPD gain (points)", "gain"), ("fraction of the gap to the teacher closed", "absorbed")):
        line = mech.fit(pilot.overlap.tolist(), pilot[column].tolist())
        row("absorption", "pilot", f"{line['n']} students", f"{name} vs overlap with the teacher",
            f"slope {line['slope']:.2f}, r = {line['r']:.2f} over overlap {line['x_min']:.2f}-{line['x_max']:.2f}")

    damage = [mech.merge_damage(dataclasses.replace(r, opd=dataclasses.replace(r.opd, beta=beta)))
              for r in runs for beta in (0.0, 0.3, 1.0)]
    line = mech.fit([d["branch_kl"] for d in damage], [d["damage"] for d in damage])
    row("merge damage", "opd.beta", "0, 0.3, 1", "best CoPD branch − merged (points) vs the branches' symmetric KL",
        f"slope {line['slope']:.2f}, r = {line['r']:.2f} over KL {line['x_min']:.2f}-{line['x_max']:.2f} "
        f"(damage over its {len(damage)} runs {spread([d['damage'] for d in damage], 1)})")

    print(f"run seeds {seeds(r.seed for r in runs)} on task seed {cfg.sim.task_seed}; base and gradient-cosine "
          f"rows over task seeds {seeds(task_seeds)}\n")
    print("| mechanism | knob | setting | signature | value |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    if args.seeds > 1:
        print(f"\nmean ± sample std over {args.seeds} seeds (ddof = 1); the merge damage: over all its runs")
    print(f"\n{args.seeds} seed(s) in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
