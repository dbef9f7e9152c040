"""The simulator's tasks: domains as related rules over shared input features (a teacher-student model).

A prompt is a feature vector x ~ N(0, I_F) of one domain d. Its answer is T digits in [0, Q): digit t is
argmax_q (G_{d,t} x)_q, where domain d's "teacher" G_d mixes a rule C common to all domains with a rule of
its own:

    G_d = √s · C + √(1-s) · (√(1-c) · Z_d + √c · shift_d(C))

* s = shared_skill: how much of every rule is common, so that learning one domain transfers to the others;
* c = conflict: how much of a domain's own rule reads the same features as C but writes other digits
  (C's digit rows shifted by (d+1)·⌊Q/(D+1)⌋): the same input asks for different outputs in different domains,
  so domains pull the shared weights apart; at c = 0 the own rules Z_d are independent draws.

Train and eval prompts are disjoint draws, so accuracy on eval prompts measures a learnt rule, not a
memorised answer. An answer may be written in any of M styles: style m writes digit q as token m·Q + q,
and a response must keep the style its first token chose; tokens from M·Q on are filler, never right.
Every style earns the same reward, so experts trained apart can drift to different styles (a behavioural
gap) while staying accurate. The reward is binary (right or not), so expected reward = expected accuracy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from copd_lab.config import SimConfig
from copd_lab.streams import stream_seed


def teachers(cfg: SimConfig, n_domains: int, gen: torch.Generator) -> torch.Tensor:
    """[D, T, Q, F] every domain's rule G_d (see the module docstring)."""
    t, q, f = cfg.answer_len, cfg.digits, cfg.features
    common = torch.randn(t, q, f, generator=gen)
    own = torch.randn(n_domains, t, q, f, generator=gen)
    step = max(1, q // (n_domains + 1))  # domain d shifts C's digits by (d + 1) * step: none keeps C as it is
    shifted = torch.stack([common.roll((d + 1) * step, dims=1) for d in range(n_domains)])
    s, c = cfg.shared_skill, cfg.conflict
    rules = math.sqrt(s) * common + math.sqrt(1 - s) * (math.sqrt(1 - c) * own + math.sqrt(c) * shifted)
    return rules / rules.norm(dim=-1, keepdim=True)  # rows of one norm: no digit wins by a longer row


def answer_digits(rules: torch.Tensor, features: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
    """[n, T] the right digits of prompts with features [n, F] of domains [n] under rules [D, T, Q, F]."""
    return torch.einsum("ntqf,nf->ntq", rules[domain], features).argmax(-1)


@dataclass(frozen=True)
class SimTasks:
    """Every prompt of the task (train prompts of each domain, then eval prompts of each) and the verifier."""

    rules: torch.Tensor  # [D, T, Q, F] G_d
    features: torch.Tensor  # [n, F] x of every prompt, by prompt id
    domain: torch.Tensor  # [n] its domain
    answers: torch.Tensor  # [n, M, T] its right answer in every style (token ids)
    n_train: int  # train prompts per domain: prompt id d * n_train + i
    n_eval: int  # eval prompts per domain: prompt id D * n_train + d * n_eval + i
    digits: int  # Q
    styles: int  # M
    vocab_size: int  # Q * M + filler

    @classmethod
    def build(cls, cfg: SimConfig, n_domains: int) -> SimTasks:
        """Draw the rules and the prompts from cfg.task_seed (the task, unlike the run, does not change with the
        run seed: runs of one task are comparable)."""
        gen = torch.Generator().manual_seed(stream_seed(cfg.task_seed, "sim/task"))
        rules = teachers(cfg, n_domains, gen)
        domain = torch.cat([torch.arange(n_domains).repeat_interleave(cfg.train_prompts),
                            torch.arange(n_domains).repeat_interleave(cfg.eval_prompts)])
        features = torch.randn(len(domain), cfg.features, generator=gen)
        digits = answer_digits(rules, features, domain)
        answers = digits[:, None] + torch.arange(cfg.styles)[None, :, None] * cfg.digits
        return cls(rules, features, domain, answers, cfg.train_prompts, cfg.eval_prompts, cfg.digits, cfg.styles,
                   cfg.vocab_size)

    def first_prompt(self, domain: torch.Tensor, eval: bool) -> torch.Tensor:
        """The id of the first train (or eval) prompt of each domain in `domain`."""
        return self.rules.shape[0] * self.n_train + domain * self.n_eval if eval else domain * self.n_train

    def score_prompts(self, prompt: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reward, correct) [...] of responses tokens [..., T] to prompts `prompt` [...] (ids): right when the
        response is the right answer in one style; the reward is the correctness."""
        answers = self.answers.index_select(0, prompt.reshape(-1)).view(*prompt.shape, *self.answers.shape[1:])
        correct = (tokens.unsqueeze(-2) == answers).all(-1).any(-1).float()  # [...]: one style's answer, in full
        return correct, correct
