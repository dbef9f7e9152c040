"""One training step of a tick's requests on any world: sample, score the teachers, then GRPO (Eq. 7) or
OPD (Eq. 8) loss per request and an optimizer update of every student slot.

Each request is one batch of one slot: a GRPO batch on its own prompts, or an OPD batch on a neighbour's
prompts graded token by token by that neighbour (`request.teacher`). A slot with several requests in
the tick gets the mean of their losses: one update on B_nat ∪ (∪_j B_j) (COPD_NOTES.md 1.3).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

import torch

from copd_lab import losses, metrics
from copd_lab.config import ExperimentConfig
from copd_lab.policy import Request, World


def train_step(world: World, cfg: ExperimentConfig, requests: list[Request],
               on_non_finite: Callable[[torch.Tensor, torch.Tensor], None]) -> torch.Tensor:
    """Update the requests' slots; return each request's training signal (mean reward of a GRPO batch,
    sampled reverse KL to the teacher of an OPD batch), not yet synced to Python.

    on_non_finite(row_loss, finite): called before the update when a row's loss is NaN or inf; it raises.
    """
    g, c = cfg.grpo, cfg.opd
    batch = world.sample(requests, g.prompts_per_step, g.group_size, g.temperature)
    students = [r.slot for r in requests]
    teachers = [r.teacher for r in requests]
    # most ticks have no OPD request: their OPD terms are skipped (a tick costs mostly per-op overhead)
    any_opd = any(t >= 0 for t in teachers)
    is_opd = torch.tensor([t >= 0 for t in teachers]) if any_opd else None
    beta = torch.tensor([r.beta for r in requests]) if any_opd else None
    # each branch's loss is the mean of its requests' losses: one update on B_nat ∪ (∪_j B_j)
    requests_of = Counter(students)
    share = torch.tensor([1.0 / requests_of[s] for s in students]) if len(requests_of) < len(students) else None
    full = c.estimator != "sampled" and any_opd
    with torch.no_grad():
        teacher_lp = world.token_logprobs(batch, teachers, grad=False) if any_opd else None
        teacher_full = world.full_logprobs(batch, [max(t, 0) for t in teachers], grad=False) if full else None
        ref_lp = world.token_logprobs(batch, [0] * len(requests), grad=False) if g.kl_coef > 0 else None
    grpo_adv = losses.group_advantages(batch.rewards, g.group_size, g.scale_by_std)[..., None]
    for _ in range(g.epochs):
        if full:
            student_full = world.full_logprobs(batch, students, grad=True)
            lp = student_full.gather(-1, batch.tokens[..., None]).squeeze(-1)
        else:
            lp = world.token_logprobs(batch, students, grad=True)
        adv = grpo_adv
        if any_opd:
            adv = torch.where(is_opd[:, None, None], losses.opd_sampled_advantage(teacher_lp, lp, beta), adv)
        row_loss = losses.clipped_pg_loss(lp, batch.sample_logprobs, adv, batch.mask, g.clip_low,
                                          g.clip_high, g.aggregation)
        if full:  # top-k / full-vocabulary reverse KL replaces the sampled-token PG on OPD rows
            kl = (losses.topk_reverse_kl(student_full, teacher_full, batch.mask, c.topk)
                  if c.estimator == "topk" else losses.full_reverse_kl(student_full, teacher_full, batch.mask))
            row_loss = torch.where(is_opd, beta * losses.aggregate(kl, batch.mask, g.aggregation), row_loss)
        if ref_lp is not None:
            row_loss = row_loss + g.kl_coef * losses.kl_penalty(lp, ref_lp, batch.mask, g.aggregation)
        loss = (row_loss if share is None else row_loss * share).sum()  # x * 1.0 is x
        if not math.isfinite(loss.item()):  # stop before the update: the weights stay the last good ones
            finite = torch.isfinite(row_loss)  # (one sync on the sum, not isfinite's four ops every tick)
            if not bool(finite.all()):  # finite rows whose sum overflowed are not an error
                on_non_finite(row_loss, finite)
        world.step(loss, students)
    with torch.no_grad():  # per-row training signals, synced to Python only when flushed
        signal = batch.rewards.mean(1)
        if any_opd:
            reverse_kl = metrics.sampled_reverse_kl(lp.detach(), teacher_lp, batch.mask)
            signal = torch.where(is_opd, reverse_kl, signal)
    return signal
