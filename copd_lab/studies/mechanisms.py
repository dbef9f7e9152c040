"""The simulator's mechanisms, each measured by its signature (issues 10 and 22, docs/simulator.md).

Each function runs the ordinary recipes, trainer and losses (or the one training step of
copd_lab.algorithm.update) on the simulator and returns the numbers its signature is read from. Nothing here
is tuned toward any method: a signature is what the knob does, whichever method it then favours.

* drift: independent experts leave the base (top-k overlap with it falls) and each other (symmetric KL
  between experts grows); `sim.styles = 1` turns the equally rewarded styles off.
* capacity: the single-model ceiling (a pooled supervised fit) as `sim.capacity` grows.
* conflict: the exact gradient cosine between domains at the base, and mixed RLVR's worst-domain deficit
  against that domain's expert, as `sim.conflict` grows.
* transfer: an expert's accuracy gain on the other domains, as `sim.shared_skill` grows.
* pooled shares: mixed RLVR's gain on a domain as its share of the pooled batch (`mixed.weights`) moves.
* absorption: copd_lab.studies.absorption (the headroom-controlled pilot); divergence: copd_lab.studies.divergence.
* merge damage: the experts' own-domain loss in the merge against their distance, as they train longer.
* co-evolution: CoPD against CoPD graded by the finished experts.
* saw-tooth: CoPD's edge overlap (or distance) through its Phase I and Phase II.
* answer lengths: MOPD's shortfall on a domain with short answers, its batches combined by token-mean or not.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import torch

from copd_lab.config import ExperimentConfig
from copd_lab.experiment import cached_comparison
from copd_lab.records.measure import Meter
from copd_lab.sim.base import initial_weights, supervised_fit
from copd_lab.sim.tasks import SimTasks
from copd_lab.sim.world import SimWorld
from copd_lab.studies.training import train
from copd_lab.world import Request


def with_sim(cfg: ExperimentConfig, **sim) -> ExperimentConfig:
    return dataclasses.replace(cfg, sim=dataclasses.replace(cfg.sim, **sim))


def _run(cfg: ExperimentConfig, *methods: str):
    """The comparison of `methods` under cfg, cached: drift, transfer, the task-vector ratio and mixed RLVR's
    deficit read the same experts' run (a method's rows do not depend on the methods beside it)."""
    return cached_comparison(dataclasses.replace(cfg, methods=methods))


def _off(domains: tuple[str, ...], domain: str) -> list[str]:
    return [d for d in domains if d != domain]


def drift(cfg: ExperimentConfig) -> dict[str, float]:
    """Independent experts: their top-k overlap with the base on their own rollouts (first and last measurement,
    mean over experts; the same for the nucleus overlap) and the symmetric KL between experts (first measurement
    after the start, and last)."""
    m = _run(cfg, "base", "experts").metrics
    gap = m[(m.method == "experts") & (m.pair != "")]
    to_base = gap[(gap.metric == "overlap") & gap.pair.str.endswith("<-base")].groupby("step").value.mean()
    nucleus = gap[(gap.metric == "nucleus_overlap") & gap.pair.str.endswith("<-base")].groupby("step").value.mean()
    between = gap[(gap.metric == "symmetric_kl") & ~gap.pair.str.endswith("<-base")].groupby("step").value.mean()
    between = between[between.index > 0]
    return {"overlap_first": to_base.iloc[0], "overlap_last": to_base.iloc[-1],
            "overlap_drop": to_base.iloc[0] - to_base.iloc[-1], "nucleus_first": nucleus.iloc[0],
            "nucleus_last": nucleus.iloc[-1], "overlap_monotone": float((to_base.diff().dropna() <= 0).mean()),
            "kl_first": between.iloc[0],
            "kl_last": between.iloc[-1], "kl_growth": between.iloc[-1] / max(between.iloc[0], 1e-12)}


def base_gradient_cosine(cfg: ExperimentConfig) -> float:
    """Mean cosine between every pair of domains' exact gradients of expected held-out accuracy at the base
    (no sampling noise: the sampled GRPO gradients of one step are nearly orthogonal whatever the task)."""
    world = SimWorld(cfg.sim, cfg.domains)
    world.reset(1, cfg.seed)
    grads = torch.cat([world.flat_grads(world.exact_accuracy([Request(0, (d,))], grad=True).sum(), [0])
                       for d in range(len(cfg.domains))])
    unit = grads / grads.norm(dim=1, keepdim=True).clamp(min=1e-12)
    cosine = unit @ unit.T
    k = len(cfg.domains)
    return float((cosine.sum() - cosine.trace()) / (k * (k - 1)))


def pooled_fit_ceiling(cfg: ExperimentConfig, steps: int = 3000, lr: float = 0.02, batch: int = 3072) -> float:
    """The single-model ceiling of the policy class: greedy held-out accuracy (mean over domains) of one model
    fitted, supervised, to the right answers of every domain's train prompts pooled (all in style 0), from the
    base's random initialisation. Mixed RLVR and a merged model live in this class: they cannot beat it."""
    k = len(cfg.domains)
    tasks = SimTasks.build(cfg.sim, k)
    n = k * cfg.sim.train_prompts
    flat, gen = initial_weights(cfg.sim, k)
    habits = torch.zeros(k, cfg.sim.styles)
    habits[:, 0] = 1.0
    fitted = supervised_fit(flat, dataclasses.replace(cfg.sim, base_lr=lr), k, tasks.features[:n], tasks.domain[:n],
                            tasks.digits_of[:n], habits, steps, gen, batch=batch)
    world = SimWorld(cfg.sim, cfg.domains)
    world.reset(1, cfg.seed)
    world.set_slot(0, fitted[0])
    with torch.no_grad():
        greedy = world.sample([Request(0, (d,)) for d in range(k)], 0, 1, 1.0, greedy=True, every_prompt=True)
    return 100 * float(greedy.correct.mean())


def mixed_deficit(cfg: ExperimentConfig) -> dict[str, float]:
    """Mixed RLVR against the experts: its worst-domain deficit (expert on its domain minus mixed there), and
    its mean accuracy minus the experts' mean own-domain accuracy."""
    experts, mixed = _run(cfg, "base", "experts").results, _run(cfg, "mixed").results
    deficits = [experts.loc[f"expert:{d}", d] - mixed.loc["mixed", d] for d in cfg.domains]
    return {"worst_deficit": 100 * max(deficits), "mean_deficit": 100 * float(np.mean(deficits))}


def transfer(cfg: ExperimentConfig) -> dict[str, float]:
    """Each expert's gain over the base on its own domain and, averaged, on the other domains (points)."""
    r = _run(cfg, "base", "experts").results
    own = [r.loc[f"expert:{d}", d] - r.loc["base", d] for d in cfg.domains]
    off = [(r.loc[f"expert:{d}", _off(cfg.domains, d)] - r.loc["base", _off(cfg.domains, d)]).mean()
           for d in cfg.domains]
    return {"own_gain": 100 * float(np.mean(own)), "off_gain": 100 * float(np.mean(off))}


def task_vector_ratio(cfg: ExperimentConfig) -> float:
    """The experts' task vector norm |θ_k − θ_0| over the base's norm |θ_0| at the end (mean over experts)."""
    m = _run(cfg, "base", "experts").metrics
    norms = m[(m.metric == "task_vector_norm")].groupby("branch").value.last()
    base = SimWorld(cfg.sim, cfg.domains).base.norm().item()
    return float(norms.mean() / base)


def fit(x: list[float], y: list[float]) -> dict[str, float]:
    """Least-squares line y = slope·x + intercept and Pearson's r (pairs with a NaN are left out)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    slope, intercept = np.polyfit(x, y, 1)
    r = float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else math.nan
    return {"slope": float(slope), "intercept": float(intercept), "r": r, "x_min": float(x.min()),
            "x_max": float(x.max()), "n": int(len(x))}


def merge_vs_drift(cfg: ExperimentConfig, steps: tuple[int, ...] = (25, 50, 100, 200, 400)) -> pd.DataFrame:
    """Merge damage against the experts' distance: independent experts trained `steps` steps (longer: farther
    apart), averaged (merge.method). One row per length: the experts' mean symmetric KL between each other (each
    pair on its teacher's domain) and the damage, the mean over domains of (the domain's expert − the merged model)
    on that domain (points)."""
    k = len(cfg.domains)
    rows = []
    for n in steps:
        world = SimWorld(cfg.sim, cfg.domains)
        world.reset(k + 2, cfg.seed)
        train(world, cfg, [Request(1 + d, (d,), stream="experts") for d in range(k)], n)
        world.merge(list(range(1, k + 1)), k + 1, cfg.merge)
        with torch.no_grad():
            accuracy = world.exact_accuracy([Request(s, (d,)) for s in range(1, k + 2) for d in range(k)]).view(
                k + 1, k)
        pairs = [(1 + a, 1 + b) for a in range(k) for b in range(k) if a != b]
        gap = Meter(cfg, world, lambda *row: None).gap(pairs, {1 + d: "experts" for d in range(k)}, full=False,
                                                       on=[b - 1 for _, b in pairs])
        rows.append({"steps": n, "branch_kl": float(gap[:, 1].mean()),
                     "damage": 100 * float(np.mean([accuracy[d, d] - accuracy[k, d] for d in range(k)]))})
    return pd.DataFrame(rows)


def share_gain(cfg: ExperimentConfig, share: float) -> float:
    """Mixed RLVR's gain over the base on the first domain (points) when that domain has `share` of the pooled
    batch and the others split the rest equally."""
    k = len(cfg.domains)
    weights = (share,) + ((1 - share) / (k - 1),) * (k - 1)
    mixed = _run(dataclasses.replace(cfg, mixed=dataclasses.replace(cfg.mixed, weights=weights)), "base", "mixed")
    first = cfg.domains[0]
    return 100 * float(mixed.results.loc["mixed", first] - mixed.results.loc["base", first])


def length_shortfall(cfg: ExperimentConfig, first_length: int, combine: str) -> float:
    """MOPD's shortfall on the first domain (its expert there minus MOPD there, points) when that domain's answers
    are `first_length` tokens and the others' answer_len, with MOPD's batches combined by `combine` (opd.combine:
    mean, each domain's batch alike; tokens, one token-mean over them all, as naive multi-teacher OPD): Open-MOPD's
    token budget, misallocated by unequal answer lengths."""
    lengths = (first_length,) + (cfg.sim.answer_len,) * (len(cfg.domains) - 1)
    run = _run(dataclasses.replace(with_sim(cfg, answer_lens=lengths), opd=dataclasses.replace(cfg.opd,
                                                                                               combine=combine)),
               "base", "experts", "mopd")
    first = cfg.domains[0]
    return 100 * float(run.results.loc[f"expert:{first}", first] - run.results.loc["mopd", first])


def sawtooth(cfg: ExperimentConfig, metric: str = "overlap") -> dict[str, float]:
    """CoPD's edge gap through its phases (the paper's saw-tooth): the mean change of `metric` between branches (its
    edges, each on its teacher's domain) over each Phase I and each Phase II, and the share of phases that move
    the way the paper draws it (overlap falls in Phase I and rises in Phase II; a distance the other way). The
    gap is measured at every phase end (metrics.gap_at_phase_end): the tick before the next phase starts."""
    c = _run(dataclasses.replace(cfg, metrics=dataclasses.replace(cfg.metrics, gap_at_phase_end=True)), "copd")
    m = c.metrics
    gap = m[(m.method == "copd") & (m.metric == metric) & (m.pair != "") & ~m.pair.str.endswith("<-base")]
    series = gap.groupby("step").value.mean()
    period, rl = cfg.copd.rl_steps + cfg.copd.opd_steps, cfg.copd.rl_steps
    starts = [0] + [k * period + period - 1 for k in range(cfg.copd.cycles - 1)]
    ends1 = [k * period + rl - 1 for k in range(cfg.copd.cycles)]
    ends2 = [k * period + period - 1 for k in range(cfg.copd.cycles)]
    phase1 = [series[e] - series[b] for b, e in zip(starts, ends1) if b in series and e in series]
    phase2 = [series[e] - series[b] for b, e in zip(ends1, ends2) if b in series and e in series]
    sign = 1 if "overlap" in metric else -1  # overlap should fall in Phase I; a distance rise
    return {"phase1": float(np.mean(phase1)), "phase2": float(np.mean(phase2)),
            "phase1_right": float(np.mean([sign * d < 0 for d in phase1])),
            "phase2_right": float(np.mean([sign * d > 0 for d in phase2])),
            "amplitude": float(np.mean(np.abs(phase1 + phase2)))}


def coevolution(cfg: ExperimentConfig) -> dict[str, float]:
    """What co-evolving teachers add: CoPD minus CoPD graded by the finished experts (copd_fixed_experts), overall
    (points), and the finished experts' symmetric KL between each other at their end."""
    c = _run(cfg, "base", "experts", "copd", "copd_fixed_experts")
    m = c.metrics
    kl = m[(m.method == "experts") & (m.metric == "symmetric_kl") & (m.pair != "") & ~m.pair.str.endswith("<-base")]
    return {"copd_minus_fixed": 100 * float(c.results.loc["copd", "overall"] -
                                            c.results.loc["copd_fixed_experts", "overall"]),
            "experts_kl": float(kl[kl.step == kl.step.max()].value.mean())}
