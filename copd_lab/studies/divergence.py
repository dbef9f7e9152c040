"""Mixed RLVR's divergence cost as an optimisation effect (docs/paper.md §8, claim 1; issue 22, item 4).

The paper's evidence that mixed-data RLVR pays for pooling is a capability that falls below the base while another
rises. In the simulator a pooled update moves the shared weights and hidden units every domain reads, so a domain
whose gradient disagrees with the pool's can lose ground while the others gain. This study trains mixed RLVR and
the independent experts side by side in one simulator world (the ordinary training step, copd_lab.algorithm.update)
and, every `every` ticks, measures each model's exact held-out accuracy per domain against the base and the exact
per-domain gradient cosine of mixed RLVR's weights (no sampling noise: the gradients of expected accuracy).
"""

from __future__ import annotations

import pandas as pd
import torch

from copd_lab.config import ExperimentConfig
from copd_lab.sim.world import SimWorld
from copd_lab.studies.training import train
from copd_lab.world import Request

MIXED = 1  # slot of mixed RLVR; the experts' slots follow, one per domain


def divergence_trace(cfg: ExperimentConfig, every: int = 20) -> pd.DataFrame:
    """One row per (tick, model, domain): the model's exact accuracy gain over the base on that domain (points),
    and, for mixed RLVR, the mean exact gradient cosine between that domain and the others at that tick. Mixed
    RLVR takes K x expert_steps steps on the pooled domains (mixed.weights), each expert expert_steps on its own;
    ticks are mixed RLVR's, and an expert's accuracy at tick t is the one after t / K of its steps."""
    k = len(cfg.domains)
    world = SimWorld(cfg.sim, cfg.domains)
    world.reset(2 + k, cfg.seed)
    everything = tuple(range(k))
    mixed = Request(MIXED, everything, stream="mixed", shares=tuple(cfg.mixed.weights))
    experts = [Request(MIXED + 1 + d, (d,), stream="experts") for d in range(k)]
    base = world.exact_accuracy([Request(0, (d,)) for d in range(k)]).tolist()
    rows = []
    for tick in range(0, k * cfg.expert_steps + 1):
        if tick % every == 0:
            rows += _measure(world, tick, base, k)
        if tick == k * cfg.expert_steps:
            break
        requests = [mixed] + (experts if tick % k == 0 else [])  # experts take one step in K: the same budget
        train(world, cfg, requests, 1)
    return pd.DataFrame(rows)


def _measure(world: SimWorld, tick: int, base: list[float], k: int) -> list[dict]:
    slots = [MIXED] + [MIXED + 1 + d for d in range(k)]
    with torch.no_grad():
        accuracy = world.exact_accuracy([Request(s, (d,)) for s in slots for d in range(k)]).view(len(slots), k)
    grads = torch.cat([world.flat_grads(world.exact_accuracy([Request(MIXED, (d,))], grad=True).sum(), [MIXED])
                       for d in range(k)])
    unit = grads / grads.norm(dim=1, keepdim=True).clamp(min=1e-12)
    cosine = unit @ unit.T  # [K, K]
    rows = []
    for i, slot in enumerate(slots):
        model = "mixed" if slot == MIXED else f"expert:{world.domains[i - 1]}"
        for d in range(k):
            others = [float(cosine[d, e]) for e in range(k) if e != d]
            rows.append({"tick": tick, "model": model, "domain": world.domains[d],
                         "gain": 100 * (float(accuracy[i, d]) - base[d]),
                         "grad_cosine": sum(others) / len(others) if slot == MIXED and others else float("nan")})
    return rows


def divergence_summary(trace: pd.DataFrame) -> dict[str, float]:
    """Mixed RLVR's worst dip: the minimum over evaluations (after the start) of its lowest domain's gain over the
    base, and how many evaluations have some domain below the base; the same minimum for each expert on its own
    domain (the lowest of them); mixed RLVR's largest shortfall against a domain's expert on that domain at the
    end (points; the form the cost takes when capacity lets no domain fall); and its mean gradient cosine."""
    later = trace[trace.tick > 0]
    mixed = later[later.model == "mixed"]
    worst = mixed.groupby("tick").gain.min()
    own = later[later.model == "expert:" + later.domain]
    end = later[later.tick == later.tick.max()]
    end_own = end[end.model == "expert:" + end.domain].set_index("domain").gain
    end_mixed = end[end.model == "mixed"].set_index("domain").gain
    return {"mixed_worst_dip": float(worst.min()), "mixed_evals_below": int((worst < 0).sum()),
            "evals": int(len(worst)), "expert_own_min": float(own.gain.min()),
            "mixed_shortfall": float((end_own - end_mixed).max()),
            "mixed_grad_cosine": float(mixed.grad_cosine.mean())}
