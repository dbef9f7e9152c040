"""The absorption pilot, built as the paper built it (docs/paper.md §2.2): one fixed teacher, students of equal skill
at graded behavioural distance from it, the same OPD budget for each; does the gain rise with the overlap?

The paper's students come from one base sampled at different temperatures, so their skill is alike and only their
behaviour differs. Here a student is the base taught, by a short supervised fit on *the base's own sampled
answers*, to write them in a mix of the teacher's format and another one: the answers (so the skill they carry)
are the base's, only the format moves, graded by the teacher's share λ of the mix. Whatever skill the fit moves
anyway is measured (`headroom`: the teacher's accuracy minus the student's) and partialled out of the correlation:
a gain that follows the headroom is not absorption (issue 22: the first pilot's r = −0.78 was headroom).
Overlap and gain are measured on the domain OPD acts on: the teacher's.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from copd_lab.config import ExperimentConfig
from copd_lab.math import metrics
from copd_lab.math.losses import TopK
from copd_lab.sim.base import supervised_fit
from copd_lab.sim.world import SimWorld
from copd_lab.studies.training import train
from copd_lab.world import Request

TEACHER, FIRST_STUDENT = 1, 2  # slots: 0 the base, 1 the teacher, then the students
RESTYLE_STEPS = 60  # supervised steps that move a student's format (lr sim.base_lr, the warm start's)
RESTYLE_PROMPTS = 1024  # prompts of the teacher's domain whose base answers a student learns to rewrite


def style_mass(world: SimWorld, slot: int, domain: int) -> torch.Tensor:
    """[M] the mass a slot's first token puts on each style, on average over the domain's eval prompts."""
    with torch.no_grad():
        batch = world.sample([Request(slot, (domain,), stream="pilot/style")], 0, 1, 1.0, every_prompt=True)
        first = world.full_logprobs(batch, [slot], grad=False)[0, :, 0].exp()  # [prompts, V]
    q, m = world.cfg.digits, world.cfg.styles
    return first[:, : q * m].view(-1, m, q).sum(-1).mean(0)


def overlap_on(world: SimWorld, cfg: ExperimentConfig, pairs: list[tuple[int, int]], domain: int) -> list[float]:
    """Top-k overlap O_k of (student, teacher) slots on the student's rollouts of one domain's eval prompts."""
    students = [s for s, _ in pairs]
    with torch.no_grad():
        batch = world.sample([Request(s, (domain,), stream="pilot/overlap") for s in students], 0, 1,
                             cfg.grpo.temperature, every_prompt=True)
        p = world.full_logprobs(batch, students, grad=False)
        q = world.full_logprobs(batch, [t for _, t in pairs], grad=False)
        k = cfg.metrics.topk
        return metrics.topk_overlap(p, q, batch.mask, k, (TopK(p, k), TopK(q, k))).tolist()


def absorption_pilot(cfg: ExperimentConfig, shares: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0),
                     others: int = 3) -> pd.DataFrame:
    """One row per student: the teacher's share λ of its format mix, the other format, its overlap with the
    teacher before OPD, its headroom (the teacher's exact accuracy minus its own, points) and its OPD gain after
    `distill_steps` of OPD from the teacher on the teacher's domain (points). The teacher: the first domain's expert
    (`expert_steps` of GRPO); the other formats: the `others` styles the teacher uses least."""
    world = SimWorld(cfg.sim, cfg.domains)
    m = cfg.sim.styles
    pairs = [(share, other) for other in range(min(others, m - 1)) for share in shares]
    world.reset(FIRST_STUDENT + len(pairs), cfg.seed)
    train(world, cfg, [Request(TEACHER, (0,), stream="pilot/teacher")], cfg.expert_steps)
    mass = style_mass(world, TEACHER, 0)
    order = mass.argsort(descending=True).tolist()
    own, rest = order[0], order[:0:-1]  # the teacher's format, then the others from the least used up
    # the base's own sampled answers on the teacher's domain: what every student learns to rewrite
    with torch.no_grad():
        drawn = world.sample([Request(0, (0,), stream="pilot/answers")], RESTYLE_PROMPTS, 1, 1.0)
    prompt = drawn.payload.prompt[0]
    digits = drawn.tokens[0] % cfg.sim.digits  # a filler token's digit is arbitrary: the base's noise, kept
    x, domain = world.tasks.features[prompt], world.tasks.domain[prompt]
    gen = torch.Generator().manual_seed(cfg.seed)
    for i, (share, other) in enumerate(pairs):
        habits = torch.zeros(len(cfg.domains), m)
        habits[:, own], habits[:, rest[other]] = share, 1 - share
        fitted = supervised_fit(world.base[None], cfg.sim, len(cfg.domains), x, domain, digits, habits,
                                RESTYLE_STEPS, gen)
        world.set_slot(FIRST_STUDENT + i, fitted[0])
    slots = [FIRST_STUDENT + i for i in range(len(pairs))]
    overlap = overlap_on(world, cfg, [(s, TEACHER) for s in slots], 0)
    with torch.no_grad():
        before = world.exact_accuracy([Request(s, (0,)) for s in [TEACHER] + slots]).tolist()
    target, before = before[0], before[1:]
    train(world, cfg, [Request(s, (0,), teacher=TEACHER, beta=cfg.opd.beta, stream=f"pilot/opd{s}") for s in slots],
          cfg.distill_steps)
    with torch.no_grad():
        after = world.exact_accuracy([Request(s, (0,)) for s in slots]).tolist()
    return pd.DataFrame({"teacher_share": [s for s, _ in pairs], "other_style": [rest[o] for _, o in pairs],
                         "overlap": overlap, "headroom": [100 * (target - b) for b in before],
                         "gain": [100 * (a - b) for a, b in zip(after, before)]})


def partial_r(x: list[float], y: list[float], z: list[float]) -> float:
    """Pearson's r of x and y with z partialled out (each residualised on z by least squares)."""
    x, y, z = (np.asarray(v, float) for v in (x, y, z))
    design = np.stack([z, np.ones_like(z)], 1)
    rx = x - design @ np.linalg.lstsq(design, x, rcond=None)[0]
    ry = y - design @ np.linalg.lstsq(design, y, rcond=None)[0]
    return float(np.corrcoef(rx, ry)[0, 1]) if rx.std() > 1e-12 and ry.std() > 1e-12 else math.nan


def pilot_summary(rows: pd.DataFrame) -> dict[str, float]:
    """r(overlap, gain), r(headroom, gain), the partial r(overlap, gain | headroom), and the spread of overlap and
    headroom the students cover."""
    r = lambda a, b: float(np.corrcoef(rows[a], rows[b])[0, 1])  # noqa: E731
    return {"r": r("overlap", "gain"), "r_headroom": r("headroom", "gain"),
            "partial_r": partial_r(rows.overlap, rows.gain, rows.headroom),
            "overlap_min": float(rows.overlap.min()), "overlap_max": float(rows.overlap.max()),
            "headroom_min": float(rows.headroom.min()), "headroom_max": float(rows.headroom.max()),
            "gain_mean": float(rows.gain.mean())}

