"""The base π_0 of every simulator run: a random network given a short supervised warm start.

The paper's experts start from a capable instruct model (about 55 % accurate) that RL sharpens with small
updates, which is also why simple parameter merging works there. So the toy base is not random weights:
it is fitted for `sim.base_steps` Adam steps to the right answers of every domain, on pretraining prompts of
its own (disjoint from the train and eval prompts), each written in a style drawn from its domain's habits
(uniform, plus `sim.style_habit` on the domain's own style d mod M), with a little mass on a Zipf-ordered
tail of filler tokens. The base then knows part of every rule, spreads over the styles as its domain's
habits do, and has a tail whose order small updates do not shuffle; RL picks a style and sharpens the rule.
It depends only on the task (cfg, number of domains), not on the run seed, and is built once per process.
"""

from __future__ import annotations

import functools
import math

import torch

from copd_lab.config import SimConfig
from copd_lab.sim import net
from copd_lab.sim.tasks import SimTasks, answer_digits, draw_features
from copd_lab.streams import stream_seed

PRETRAIN_PROMPTS = 256  # pretraining prompts per domain: one full batch per warm-start step
FILLER_MASS = 0.05  # target probability of the filler tail in the warm start (label smoothing over it)


@functools.lru_cache(maxsize=16)
def base_weights(cfg: SimConfig, n_domains: int) -> torch.Tensor:
    """[P] the flat weights of the base (read-only by convention: callers copy them)."""
    tasks = SimTasks.build(cfg, n_domains)
    flat, gen = initial_weights(cfg, n_domains)
    if cfg.base_steps == 0:
        return flat[0]
    domain = torch.arange(n_domains).repeat_interleave(pretrain_counts(cfg, n_domains))
    x = draw_features(cfg, domain, n_domains, gen)
    # each domain's habitual style: style d mod M with the extra probability style_habit
    m = cfg.styles
    habits = torch.full((n_domains, m), (1 - cfg.style_habit) / m)
    habits[torch.arange(n_domains), torch.arange(n_domains) % m] += cfg.style_habit
    return supervised_fit(flat, cfg, n_domains, x, domain, answer_digits(tasks.rules, x, domain), habits,
                          cfg.base_steps, gen)[0]


def pretrain_counts(cfg: SimConfig, n_domains: int) -> torch.Tensor:
    """[D] pretraining prompts of each domain: PRETRAIN_PROMPTS each, or D x PRETRAIN_PROMPTS split by
    sim.pretrain_mix (rounded)."""
    if not cfg.pretrain_mix:
        return torch.full((n_domains,), PRETRAIN_PROMPTS)
    share = torch.tensor(cfg.pretrain_mix, dtype=torch.float64)
    return (share / share.sum() * n_domains * PRETRAIN_PROMPTS).round().long()


def initial_weights(cfg: SimConfig, n_domains: int) -> tuple[torch.Tensor, torch.Generator]:
    """[1, P] random weights before any fit, and the generator the warm start goes on drawing from."""
    shape = net.NetShape.of(cfg, n_domains)
    gen = torch.Generator().manual_seed(stream_seed(cfg.task_seed, "sim/base"))  # apart from the task's stream
    # the blocks of the shared rule and the hidden layer draw apart: the others start as without them
    extra = torch.Generator().manual_seed(stream_seed(cfg.task_seed, "sim/base/capacity"))
    # near-uniform at first; the hidden layer's units read x at unit scale, and each domain gates every unit
    scale = {"weight": 0.1 / math.sqrt(shape.inputs), "bias": 0.0, "style": 0.0, "bigram": 0.0,
             "rule": 0.1 / math.sqrt(shape.inputs), "hidden": 1 / math.sqrt(shape.features), "hidden_bias": 0.0,
             "gate": 1.0}
    flat = torch.cat([torch.randn(torch.Size(size).numel(), generator=extra if i >= 4 else gen) * scale[name] *
                      cfg.init_scale for i, (name, size) in enumerate(net.param_shapes(shape).items())])[None]
    return flat, gen


def supervised_fit(flat: torch.Tensor, cfg: SimConfig, n_domains: int, x: torch.Tensor, domain: torch.Tensor,
                   digits: torch.Tensor, habits: torch.Tensor, steps: int, gen: torch.Generator,
                   batch: int = 0) -> torch.Tensor:
    """[1, P] `flat` after `steps` Adam steps (lr sim.base_lr) of cross-entropy on the right answers `digits` [n, T]
    of prompts x [n, F] of domains `domain` [n], each written in a style drawn from its domain's row of `habits`
    [D, M], with FILLER_MASS on a Zipf-ordered tail of filler tokens. batch: prompts drawn per step (0: all)."""
    shape = net.NetShape.of(cfg, n_domains)
    shapes, q, m, v = net.param_shapes(shape), cfg.digits, cfg.styles, cfg.vocab_size
    where, first = torch.zeros(1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long)
    rows_of = net.previous_rows(q, m, v)
    flat = flat.clone().requires_grad_(True)
    moment1, moment2, count = torch.zeros_like(flat), torch.zeros_like(flat), torch.zeros(1, 1)
    # a long tail of wrong tokens with a stable order (Zipf weights), as a pretrained model's tail is
    tail = 1 / torch.arange(1, cfg.filler + 1)
    tail = FILLER_MASS * tail / tail.sum() if cfg.filler else tail
    for _ in range(steps):
        rows = torch.randint(len(domain), (batch,), generator=gen) if batch else None
        x_step, domain_step, digits_step = (x, domain, digits) if rows is None else (x[rows], domain[rows],
                                                                                     digits[rows])
        style = torch.multinomial(habits[domain_step], 1, generator=gen)
        path = digits_step + style * q  # [n, T] the right answer in the domain's style of this example
        prev = torch.cat([torch.full_like(path[:, :1], v), path[:, :-1]], 1)
        blocks = net.split(flat, shapes)
        hidden = net.prompt_logits(blocks, where, x_step[None], domain_step[None], shape)
        logp = net.logprobs(hidden, blocks["bigram"].reshape(-1, v), first, prev[None], rows_of)[0]  # [n, T, V]
        loss = -(1 - FILLER_MASS * bool(cfg.filler)) * logp.gather(-1, path[..., None]).mean()
        if cfg.filler:
            loss = loss - (logp[..., q * m:] * tail).sum(-1).mean()
        (grad,) = torch.autograd.grad(loss, flat)
        with torch.no_grad():
            net.adam_step_(flat, grad, moment1, moment2, count, cfg.base_lr)  # the world's own Adam
    return flat.detach()
