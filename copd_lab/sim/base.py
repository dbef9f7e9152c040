"""The base π_0 of every simulator run: a random network given a short supervised warm start.

The paper's experts start from a capable instruct model (about 55 % accurate) that RL sharpens with small
updates, which is also why simple parameter merging works there. So the toy base is not random weights:
it is fitted for `sim.base_steps` Adam steps to the right answers of every domain, written in a style drawn
uniformly at random, on pretraining prompts of its own (disjoint from the train and eval prompts). The base
then knows part of every rule and spreads over the styles; RL picks a style and sharpens the rule.
It depends only on the task (cfg, number of domains), not on the run seed, and is built once per process.
"""

from __future__ import annotations

import functools
import math

import torch

from copd_lab.config import SimConfig
from copd_lab.sim import net
from copd_lab.sim.tasks import SimTasks, answer_digits
from copd_lab.streams import stream_seed

PRETRAIN_PROMPTS = 256  # pretraining prompts per domain: one full batch per warm-start step


@functools.lru_cache(maxsize=16)
def base_weights(cfg: SimConfig, n_domains: int) -> torch.Tensor:
    """[P] the flat weights of the base (read-only by convention: callers copy them)."""
    tasks = SimTasks.build(cfg, n_domains)
    f, h, t, v, q, m = cfg.features, cfg.hidden, cfg.answer_len, cfg.vocab_size, cfg.digits, cfg.styles
    shapes = net.param_shapes(f, h, n_domains, t, v)
    gen = torch.Generator().manual_seed(stream_seed(cfg.task_seed, "sim/base"))  # apart from the task's stream
    scale = {"features_in": 1 / math.sqrt(f), "domain": 2.0, "out_weight": 0.1 / math.sqrt(h), "out_bias": 0.0,
             "bigram": 0.0}
    flat = torch.cat([torch.randn(torch.Size(shape).numel(), generator=gen) * scale[name] * cfg.init_scale
                      for name, shape in shapes.items()])[None]
    if cfg.base_steps == 0:
        return flat[0]
    domain = torch.arange(n_domains).repeat_interleave(PRETRAIN_PROMPTS)
    x = torch.randn(len(domain), f, generator=gen)
    digits = answer_digits(tasks.rules, x, domain)  # [n, T]
    where, first = torch.zeros(1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long)
    flat.requires_grad_(True)
    moment1, moment2, count = torch.zeros_like(flat), torch.zeros_like(flat), torch.zeros(1, 1)
    for _ in range(cfg.base_steps):
        style = torch.randint(m, (len(domain), 1), generator=gen)
        path = digits + style * q  # [n, T] the right answer in a random style
        prev = torch.cat([torch.full_like(path[:, :1], v), path[:, :-1]], 1)
        blocks = net.split(flat, shapes)
        hidden = net.prompt_logits(blocks, where, x[None], domain[None], t)
        logp = net.logprobs(hidden, blocks["bigram"].reshape(v + 1, v), first, prev[None])
        loss = -logp.gather(-1, path[None, ..., None]).mean()
        (grad,) = torch.autograd.grad(loss, flat)
        with torch.no_grad():
            net.adam_step_(flat, grad, moment1, moment2, count, cfg.base_lr)  # the world's own Adam
    return flat.detach()[0]
