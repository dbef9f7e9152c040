"""The simulator's mechanisms, each measured by its signature (issue 10, docs/simulator.md).

Each function runs the ordinary recipes, trainer and losses (or, for the absorption pilot, the one training
step of copd_lab.algorithm.update) on the simulator and returns the numbers its signature is read from. Nothing here
is tuned toward any method: a signature is what the knob does, whichever method it then favours.

* drift: independent experts leave the base (top-k overlap with it falls) and each other (symmetric KL
  between experts grows); `sim.styles = 1` turns the equally rewarded styles off.
* conflict: the exact gradient cosine between domains at the base, and mixed RLVR's worst-domain deficit
  against that domain's expert, as `sim.conflict` grows.
* transfer: an expert's accuracy gain on the other domains, as `sim.shared_skill` grows.
* absorption: OPD gain of students at graded overlap with one fixed teacher (the paper's pilot).
* merge damage: best branch minus the merged model against the branches' symmetric KL before the merge.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import torch

from copd_lab.algorithm import update
from copd_lab.config import ExperimentConfig, MergeConfig
from copd_lab.experiment import cached_comparison
from copd_lab.local_world import make_world
from copd_lab.records.measure import Meter
from copd_lab.sim.world import SimWorld
from copd_lab.world import NonFiniteError, Request


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
    mean over experts) and the symmetric KL between experts (first measurement after the start, and last)."""
    m = _run(cfg, "base", "experts").metrics
    gap = m[(m.method == "experts") & (m.pair != "")]
    to_base = gap[(gap.metric == "overlap") & gap.pair.str.endswith("<-base")].groupby("step").value.mean()
    between = gap[(gap.metric == "symmetric_kl") & ~gap.pair.str.endswith("<-base")].groupby("step").value.mean()
    between = between[between.index > 0]
    return {"overlap_first": to_base.iloc[0], "overlap_last": to_base.iloc[-1],
            "overlap_drop": to_base.iloc[0] - to_base.iloc[-1], "kl_first": between.iloc[0],
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


def _train(world, cfg: ExperimentConfig, requests: list[Request], steps: int) -> None:
    def stop(row: int, what: str) -> None:
        raise NonFiniteError(f"absorption pilot: request {requests[row]} went non-finite ({what})")

    for _ in range(steps):
        update.train_step(world, cfg, requests, stop)


def absorption(cfg: ExperimentConfig, student_steps: tuple[int, ...] = (50, 100, 200, 400),
               temperatures: tuple[float, ...] = (0.5, 1.0, 2.0),
               between: tuple[float, ...] = (0.25, 0.5, 0.75)) -> pd.DataFrame:
    """The paper's pilot: one fixed teacher (the first domain's expert), students at graded overlap with it, then
    `distill_steps` of OPD from the teacher on its prompts. Students: the base; GRPO on each domain for a number of
    steps at a sampling temperature (the paper's way); and points on the line from the base to the teacher,
    θ_0 + α (θ_teacher − θ_0), which reach the overlaps near the teacher's. One row per student: its top-k overlap
    with the teacher before OPD, its accuracy gain from OPD (points), and the fraction of its accuracy gap to the
    teacher that OPD closed (NaN where it was not behind by a point)."""
    world = make_world(cfg)
    students = [(0, 0, 1.0)] + [(d, n, t) for d in range(len(cfg.domains)) for n in student_steps for t in temperatures]
    teacher, first = 1, 2
    world.reset(first + len(students) + len(between), cfg.seed)
    _train(world, cfg, [Request(teacher, (0,), stream="pilot/teacher")], cfg.expert_steps)
    for i, alpha in enumerate(between):
        world.merge([teacher], first + len(students) + i, MergeConfig("task_arithmetic", scale=alpha))
    for temperature in temperatures:  # the students of one temperature train side by side
        hot = dataclasses.replace(cfg, grpo=dataclasses.replace(cfg.grpo, temperature=temperature))
        rows = [(first + i, d, n) for i, (d, n, t) in enumerate(students) if t == temperature and n]
        for tick in range(max((n for _, _, n in rows), default=0)):
            requests = [Request(slot, (d,), stream=f"pilot/student{slot}") for slot, d, n in rows if tick < n]
            _train(world, hot, requests, 1)
    slots = [first + i for i in range(len(students) + len(between))]
    meter = Meter(cfg, world, lambda *row: None)
    with torch.no_grad():
        overlap = meter.gap([(s, teacher) for s in slots], {s: "pilot" for s in slots}, full=False)[:, 0].tolist()
        before = world.exact_accuracy([Request(s, (0,)) for s in [teacher] + slots]).tolist()
    target, before = before[0], before[1:]
    _train(world, cfg, [Request(s, (0,), teacher=teacher, beta=cfg.opd.beta, stream=f"pilot/opd{s}") for s in slots],
           cfg.distill_steps)
    with torch.no_grad():
        after = world.exact_accuracy([Request(s, (0,)) for s in slots]).tolist()
    behind = [target - b for b in before]
    kind = [f"grpo {cfg.domains[d]} {n} steps τ={t:g}" if n else "base" for d, n, t in students]
    return pd.DataFrame({"student": kind + [f"base + {a:g} (teacher - base)" for a in between], "overlap": overlap,
                         "gain": [100 * (a - b) for a, b in zip(after, before)],
                         "absorbed": [(a - b) / gap if gap > 0.01 else math.nan
                                      for a, b, gap in zip(after, before, behind)]})


def fit(x: list[float], y: list[float]) -> dict[str, float]:
    """Least-squares line y = slope·x + intercept and Pearson's r (pairs with a NaN are left out)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    slope, intercept = np.polyfit(x, y, 1)
    r = float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else math.nan
    return {"slope": float(slope), "intercept": float(intercept), "r": r, "x_min": float(x.min()),
            "x_max": float(x.max()), "n": int(len(x))}


def merge_damage(cfg: ExperimentConfig) -> dict[str, float]:
    """CoPD's best branch minus its merged model (overall accuracy, points), and the branches' mean symmetric KL
    at their last measurement before the merge."""
    c = _run(dataclasses.replace(cfg, copd=dataclasses.replace(cfg.copd, report_branches=True)), "copd")
    branches = [f"copd[{d}]" for d in cfg.domains]
    damage = 100 * (c.results.loc[branches, "overall"].max() - c.results.loc["copd", "overall"])
    m = c.metrics
    kl = m[(m.method == "copd") & (m.metric == "symmetric_kl") & (m.pair != "") & ~m.pair.str.endswith("<-base")]
    return {"damage": float(damage), "branch_kl": float(kl[kl.step == kl.step.max()].value.mean())}
