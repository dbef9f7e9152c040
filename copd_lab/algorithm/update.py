"""One training step of a tick's requests on any world: sample, score the teachers, then GRPO (Eq. 7) or
OPD (Eq. 8) loss per request and an optimizer update of every student slot.

Each request is one batch of one slot: a GRPO batch on its own prompts, or an OPD batch on a neighbour's
prompts graded token by token by that neighbour (`request.teacher`). A slot with several requests in
the tick gets the mean of their losses: one update on B_nat ∪ (∪_j B_j) (docs/paper.md §1.3).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

import torch

from copd_lab.config import ExperimentConfig
from copd_lab.math import losses, metrics
from copd_lab.world import Request, World


def train_step(world: World, cfg: ExperimentConfig, requests: list[Request],
               on_non_finite: Callable[[int, str], None]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Update the requests' slots; return each request's training signal (mean reward of a GRPO batch,
    sampled reverse KL to the teacher of an OPD batch) and, when a request pools domains, each request's rollouts
    per domain [R, D] (the shares its batches realised), not yet synced to Python.

    on_non_finite(request index, what): called when a request's loss is NaN or inf ("loss is nan", before the
    update), or when the update made its slot's weights NaN or inf ("weights", before they are used); it raises.
    """
    g, c = cfg.grpo, cfg.opd
    batch = world.sample(requests, g.prompts_per_step, g.group_size, g.temperature)
    students = [r.slot for r in requests]
    teachers = [r.teacher for r in requests]
    # most ticks have no OPD request: their OPD terms are skipped (a tick costs mostly per-op overhead)
    opd_rows = [i for i, t in enumerate(teachers) if t >= 0]
    is_opd = torch.tensor([t >= 0 for t in teachers]) if opd_rows else None
    beta = torch.tensor([r.beta for r in requests]) if opd_rows else None
    # each branch's loss weighs its requests' losses (opd.combine): one update on B_nat ∪ (∪_j B_j)
    tokens = batch.mask.sum((1, 2)).tolist() if c.combine == "tokens" else None
    weights = batch_weights(requests, c.combine, c.rlvr_weight, tokens)
    share = torch.tensor(weights) if any(w != 1.0 for w in weights) else None
    full = c.estimator != "sampled" and bool(opd_rows)
    constant = world.max_new_tokens  # Dr.GRPO divides by N x the longest completion, whatever this batch's padding
    with torch.no_grad():
        # the student's and the teacher's log-probs, scored side by side: of the sampled tokens for Eq. 8's
        # advantage, or whole distributions for the top-k / full reverse KL
        pair = world.pair_logprobs(batch, opd_rows, full) if opd_rows else None
        ref_lp = world.token_logprobs(batch, [0] * len(requests), grad=False) if g.kl_coef > 0 else None
    adv = losses.group_advantages(batch.rewards, g.group_size, g.scale_by_std)[..., None]
    if pair is not None and not full:  # fixed for the batch, as GRPO's advantage is (also with epochs > 1)
        opd_adv = losses.opd_sampled_advantage(pair[1], pair[0], beta)
        if c.normalize:
            opd_adv = losses.normalize_per_batch(opd_adv, batch.mask)
        adv = torch.where(is_opd[:, None, None], opd_adv, adv)
    for _ in range(g.epochs):
        if full:
            student_full = world.full_logprobs(batch, students, grad=True)
            lp = student_full.gather(-1, batch.tokens[..., None]).squeeze(-1)
        else:
            lp = world.token_logprobs(batch, students, grad=True)
        row_loss = losses.clipped_pg_loss(lp, batch.sample_logprobs, adv, batch.mask, g.clip_low,
                                          g.clip_high, g.aggregation, constant)
        if full:  # top-k / full-vocabulary reverse KL replaces the sampled-token PG on OPD rows
            kl = losses.reverse_kl_surrogate(student_full, pair[0], pair[1], batch.mask,
                                             c.topk if c.estimator == "topk" else None)
            row_loss = torch.where(is_opd, beta * losses.aggregate(kl, batch.mask, g.aggregation, constant), row_loss)
        if ref_lp is not None:
            row_loss = row_loss + g.kl_coef * losses.kl_penalty(lp, ref_lp, batch.mask, g.aggregation, constant)
        loss = (row_loss if share is None else row_loss * share).sum()  # x * 1.0 is x
        if not math.isfinite(loss.item()):  # stop before the update: the weights stay the last good ones
            finite = torch.isfinite(row_loss)  # (one sync on the sum, not isfinite's four ops every tick)
            if not bool(finite.all()):  # finite rows whose sum overflowed are not an error
                row = int((~finite).nonzero()[0])
                on_non_finite(row, f"loss is {row_loss[row].item()}")
        world.step(loss, students)
        bad = world.non_finite(students)  # caught before the next forward uses them
        if bad:
            on_non_finite(students.index(bad[0]), "weights")
    with torch.no_grad():  # per-row training signals, synced to Python only when flushed
        signal = batch.rewards.mean(1)
        if opd_rows:
            student_lp, teacher_lp = pair if not full else (
                x.gather(-1, batch.tokens[..., None]).squeeze(-1) for x in pair)
            signal = torch.where(is_opd, metrics.sampled_reverse_kl(student_lp, teacher_lp, batch.mask), signal)
        pooled = any(len(r.domains) > 1 for r in requests)
        per_domain = torch.nn.functional.one_hot(batch.domain, len(world.domains)).sum(1) if pooled else None
    return signal, per_domain


def batch_weights(requests: list[Request], combine: str = "mean", rlvr_weight: float = 0.5,
                  tokens: list[float] | None = None) -> list[float]:
    """The weight of each request's loss in its slot's update (opd.combine).

    mean: a slot's batches weigh alike (1 / its number of batches). split: a slot's own GRPO batch weighs
    rlvr_weight and its OPD batches share 1 − rlvr_weight equally; a slot with only one kind gives it all.
    tokens: each batch its share of the slot's tokens (`tokens`, per request): with token-mean batches, the
    token-mean of their union.
    """
    if combine == "tokens":
        total = Counter()
        for r, n in zip(requests, tokens):
            total[r.slot] += n
        return [n / total[r.slot] if total[r.slot] else 0.0 for r, n in zip(requests, tokens)]
    native = Counter(r.slot for r in requests if r.teacher < 0)
    opd = Counter(r.slot for r in requests if r.teacher >= 0)
    out = []
    for r in requests:
        n_native, n_opd = native[r.slot], opd[r.slot]
        if combine == "mean" or not (n_native and n_opd):
            out.append(1.0 / (n_native + n_opd))
        elif r.teacher < 0:
            out.append(rlvr_weight / n_native)
        else:
            out.append((1.0 - rlvr_weight) / n_opd)
    return out
