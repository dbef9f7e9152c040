"""The simulator's mechanism table: each mechanism's signature at defaults and with its knob turned (issue 10).

    python benchmarks/sim_mechanisms.py --seeds 5

Every number is mean ± sample std (ddof = 1) over run seeds s..s+n-1 (s = --seed, n = --seeds) on one task, task
seed t+s (t = sim.task_seed, 0 by default), except the gradient cosine and the base's own figures, which depend on
no run seed: their spread is over task seeds t+s..t+s+n-1 (the first of them the runs' task). One seed: no ±.
Merge damage pools its points over the seeds and fits one line. The seeds used are printed above
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
from copd_lab.studies.absorption import absorption_pilot, pilot_summary
from copd_lab.studies.divergence import divergence_summary, divergence_trace
from copd_lab.world import Request

WRITES_SOME = (0.1, 0.3, 0.5, 0.7, 0.9)  # pilot students' shares of the teacher's format, none at 0
SHORT_OPD = 20  # a short OPD budget for the pilot (CoPD's Phase II is 8 steps; static OPD's stage distill_steps)


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
    parser.add_argument("--ceiling-steps", type=int, default=3000,
                        help="supervised steps of the single-model ceiling's pooled fit (converged at 3000)")
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
        row("drift", knob, setting, "  drop of that overlap; share of measurements where it does not rise",
            f"{spread([d['overlap_drop'] for d in drift])}; {spread([d['overlap_monotone'] for d in drift], 2)}")
        row("drift", knob, setting, "experts' nucleus overlap (0.9 of the mass, ≤ 10 tokens) with the base, first → "
            "last", f"{spread([d['nucleus_first'] for d in drift])} → {spread([d['nucleus_last'] for d in drift])}")
        row("drift", knob, setting, "symmetric KL between experts, first → last",
            f"{spread([d['kl_first'] for d in drift], 2)} → {spread([d['kl_last'] for d in drift], 2)}")
        row("drift", knob, setting, "  growth (last / first)", spread([d["kl_growth"] for d in drift], 1))

    ceiling = {h: [mech.pooled_fit_ceiling(mech.with_sim(t, conflict=1 - s, capacity=h), args.ceiling_steps)
                   for t in tasks]
               for h in (0, cfg.sim.capacity)}
    for h, values in ceiling.items():
        row("capacity", "sim.capacity", f"{h}" + (" (default)" if h == cfg.sim.capacity else " (off)"),
            f"single-model ceiling at conflict {1 - s:g}: pooled supervised fit, greedy held-out %", spread(values, 1))
    free = [mech.pooled_fit_ceiling(mech.with_sim(t, conflict=0.0), args.ceiling_steps) for t in tasks]
    row("capacity", "sim.capacity", f"{cfg.sim.capacity} (default), conflict 0",
        "the same fit with no conflict: the class's ceiling from finite prompts (T digits all right)", spread(free, 1))

    for capacity in (0, cfg.sim.capacity):
        note = "linear policy, " if capacity == 0 else ""
        for shared, conflict, what in ((s, 0.0, "0 (off)"), (s, c, f"{c:g} (default)"), (s, 1 - s, f"{1 - s:g} (max)"),
                                       (0.0, 0.0, "0, shared_skill 0"), (0.0, 1.0, "1, shared_skill 0")):
            knobs = {"shared_skill": shared, "conflict": conflict, "capacity": capacity}
            cosine = [mech.base_gradient_cosine(mech.with_sim(t, **knobs)) for t in tasks]
            row("conflict", "sim.conflict", f"{note}{what}", "exact gradient cosine between domains at the base",
                spread(cosine))
            if shared == s:
                deficit = [mech.mixed_deficit(mech.with_sim(r, **knobs)) for r in runs]
                row("conflict", "sim.conflict", f"{note}{what}",
                    "mixed RLVR's worst-domain deficit vs the expert (points)",
                    spread([d["worst_deficit"] for d in deficit], 1))

    for shared, conflict, note in ((0.0, 0.0, "0, conflict 0"), (s, 0.0, f"{s:g}, conflict 0"),
                                   (1.0, 0.0, "1, conflict 0"), (0.0, c, f"0, conflict {c:g}"),
                                   (s, c, f"{s:g}, conflict {c:g} (defaults)")):
        gains = [mech.transfer(mech.with_sim(r, shared_skill=shared, conflict=conflict)) for r in runs]
        row("transfer", "sim.shared_skill", note, "expert's gain over the base: own domain; other domains (points)",
            f"{spread([g['own_gain'] for g in gains], 1)}; {spread([g['off_gain'] for g in gains], 1)}")

    k = len(cfg.domains)
    for conflict in (0.0, c, 1 - s):
        equal, quarter = ([mech.share_gain(mech.with_sim(r, conflict=conflict), share) for r in runs]
                          for share in (1 / k, 0.25))
        row("pooled shares", "mixed.weights", f"conflict {conflict:g}",
            f"mixed RLVR's gain on {cfg.domains[0]} (points): equal share; 25 % share; paired difference",
            f"{spread(equal, 1)}; {spread(quarter, 1)}; {spread(np.subtract(quarter, equal), 1)}")

    uneven = {"pretrain_mix": (3.0,) + (1.0,) * (k - 1)}  # a base pretrained mostly on the first domain
    mix = "pretrain_mix 3:1:1" if k == 3 else "pretrain_mix 3:1.."
    for note, knobs in ((f"defaults (capacity {cfg.sim.capacity}, conflict {c:g}, equal pretraining)", {}),
                        (f"{mix}, capacity 0, conflict 0", {**uneven, "capacity": 0, "conflict": 0.0}),
                        (f"{mix}, capacity 0, conflict {c:g}", {**uneven, "capacity": 0}),
                        (f"{mix}, capacity 0, conflict {1 - s:g}", {**uneven, "capacity": 0, "conflict": 1 - s}),
                        (f"{mix}, capacity 16, conflict {1 - s:g}", {**uneven, "capacity": 16, "conflict": 1 - s}),
                        (f"{mix}, capacity {cfg.sim.capacity}, conflict {1 - s:g}", {**uneven, "conflict": 1 - s}),
                        (f"equal pretraining, capacity 0, conflict {1 - s:g}", {"capacity": 0,
                                                                                      "conflict": 1 - s})):
        summary = [divergence_summary(divergence_trace(mech.with_sim(r, **knobs))) for r in runs]
        row("divergence", "sim.conflict, sim.capacity, sim.pretrain_mix", note,
            "mixed RLVR: worst domain's lowest gain over the base (points); evaluations below it (of 30); "
            "experts: lowest own-domain gain; mixed's largest shortfall against an expert at the end",
            f"{spread([x['mixed_worst_dip'] for x in summary], 1)}; "
            f"{spread([x['mixed_evals_below'] for x in summary], 1)}; "
            f"{spread([x['expert_own_min'] for x in summary], 1)}; "
            f"{spread([x['mixed_shortfall'] for x in summary], 1)}")
        row("divergence", "", note, "mixed RLVR's mean exact gradient cosine between domains during training",
            spread([x["mixed_grad_cosine"] for x in summary]))

    for rho in (cfg.sim.style_private, 1.0, 0.0):
        summary = [pilot_summary(absorption_pilot(mech.with_sim(r, style_private=rho))) for r in runs]
        setting = f"{rho:g}" + (" (default)" if rho == cfg.sim.style_private else "")
        row("absorption", "sim.style_private", setting,
            "pilot: r(overlap, OPD gain); partial r given headroom; r(headroom, gain)",
            f"{spread([x['r'] for x in summary], 2)}; {spread([x['partial_r'] for x in summary], 2)}; "
            f"{spread([x['r_headroom'] for x in summary], 2)}")
        row("absorption", "", setting, "  students' overlap range; headroom range (points); mean OPD gain",
            f"{np.mean([x['overlap_min'] for x in summary]):.2f}-{np.mean([x['overlap_max'] for x in summary]):.2f}; "
            f"{np.mean([x['headroom_min'] for x in summary]):.1f}-{np.mean([x['headroom_max'] for x in summary]):.1f}"
            f"; {spread([x['gain_mean'] for x in summary], 1)}")
        for steps, shares in ((cfg.distill_steps, WRITES_SOME), (SHORT_OPD, None), (SHORT_OPD, WRITES_SOME)):
            short = [dataclasses.replace(mech.with_sim(r, style_private=rho), distill_steps=steps) for r in runs]
            other = [pilot_summary(absorption_pilot(r, **({"shares": shares} if shares else {}))) for r in short]
            row("absorption", "", setting, f"  {steps} OPD steps, " + ("every student writing some of the teacher's "
                "format (λ 0.1-0.9)" if shares else "the same students") + ": r; partial r",
                f"{spread([x['r'] for x in other], 2)}; {spread([x['partial_r'] for x in other], 2)}")

    for rho in (0.0, cfg.sim.style_private, 1.0):
        lengths = tuple(max(1, round(cfg.expert_steps * f)) for f in (1 / 8, 1 / 4, 1 / 2, 1, 2))
        trace = pd.concat([mech.merge_vs_drift(mech.with_sim(r, style_private=rho), lengths) for r in runs])
        line = mech.fit(trace.branch_kl.tolist(), trace.damage.tolist())
        row("merge damage", "sim.style_private", f"{rho:g}" + (" (default)" if rho == cfg.sim.style_private else ""),
            f"experts' own-domain loss in the merge (points) vs their symmetric KL, {lengths[0]}-{lengths[-1]} steps",
            f"slope {line['slope']:.2f}, r = {line['r']:.2f} over KL {line['x_min']:.2f}-{line['x_max']:.2f}")

    for length in (cfg.sim.answer_len, max(1, cfg.sim.answer_len // 2), 1):
        shortfall = {combine: [mech.length_shortfall(mech.with_sim(r, conflict=0.0), length, combine) for r in runs]
                     for combine in ("mean", "tokens")}
        row("answer lengths", "sim.answer_lens, opd.combine", f"{cfg.domains[0]} {length} tokens, others "
            f"{cfg.sim.answer_len}; conflict 0", "MOPD's shortfall on it vs its expert (points): combine mean; "
            "tokens; paired difference",
            f"{spread(shortfall['mean'], 1)}; {spread(shortfall['tokens'], 1)}; "
            f"{spread(np.subtract(shortfall['tokens'], shortfall['mean']), 1)}")

    for rl, opd in ((cfg.copd.rl_steps, cfg.copd.opd_steps), (2 * cfg.copd.rl_steps, 2 * cfg.copd.opd_steps)):
        longer = [dataclasses.replace(r, copd=dataclasses.replace(r.copd, rl_steps=rl, opd_steps=opd,
                                                                  cycles=max(1, cfg.copd.cycles * cfg.copd.rl_steps
                                                                             // rl))) for r in runs]
        for metric in ("overlap", "nucleus_overlap", "symmetric_kl"):
            tooth = [mech.sawtooth(r, metric) for r in longer]
            row("saw-tooth", "copd.rl_steps, copd.opd_steps", f"S_RL {rl}, S_OPD {opd}",
                f"CoPD's edge {metric}: mean change over a Phase I; over a Phase II; share of phases I, II that move "
                "as the paper draws; amplitude",
                f"{spread([t['phase1'] for t in tooth])}; {spread([t['phase2'] for t in tooth])}; "
                f"{spread([t['phase1_right'] for t in tooth], 2)}, {spread([t['phase2_right'] for t in tooth], 2)}; "
                f"{spread([t['amplitude'] for t in tooth])}")

    for rho, steps in ((cfg.sim.style_private, cfg.expert_steps), (0.0, cfg.expert_steps), (1.0, cfg.expert_steps),
                       (1.0, 2 * cfg.expert_steps)):
        evolved = [mech.coevolution(dataclasses.replace(mech.with_sim(r, style_private=rho), expert_steps=steps))
                   for r in runs]
        row("co-evolution", "sim.style_private, expert_steps", f"{rho:g}" +
            (" (default)" if rho == cfg.sim.style_private else "") + f", experts {steps} steps",
            "CoPD − copd_fixed_experts, overall (points, paired by seed); experts' symmetric KL at their end",
            f"{spread([e['copd_minus_fixed'] for e in evolved], 1)}; {spread([e['experts_kl'] for e in evolved], 2)}")

    print(f"run seeds {seeds(r.seed for r in runs)} on task seed {cfg.sim.task_seed}; base and gradient-cosine "
          f"rows over task seeds {seeds(task_seeds)}\n")
    print("| mechanism | knob | setting | signature | value |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    if args.seeds > 1:
        print(f"\nmean ± sample std over {args.seeds} seeds (ddof = 1); the merge damage: one line over all its runs")
    print(f"\n{args.seeds} seed(s) in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
