"""The simulator's tasks: domains as related rules over input features (a teacher-student model).

A prompt of domain d has features x = [u, v_1, ..., v_D]: u ~ N(0, I) are shared features every domain's
prompts have; v_d ~ N(0, I) are the domain's own (its modality), and v_e = 0 for the other domains e. Its
answer is T digits in [0, Q): digit t is argmax_q (G_{d,t} x)_q, where domain d's "teacher" rule is

    G_d x = √s · C u + √c · K_d u + √(1-s-c) · P_d v_d

* s = shared_skill: C is common to every domain, so learning it in one domain transfers to the others;
* c = conflict: K_d reads the same shared features as C but is opposed across domains (the K_d are centred:
  they sum to 0, pairwise correlation -1/(D-1)), so the same input asks different domains for different
  digits and they pull the weights on u apart;
* the rest, P_d, reads only the domain's own features: what an expert learns there cannot touch another domain.
Each part's share of the logit variance is its knob (parts are scaled by 1/√(their feature count)).

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
    t, q, fs, fo = cfg.answer_len, cfg.digits, cfg.shared_features, cfg.own_features
    common = torch.randn(t, q, fs, generator=gen) / math.sqrt(fs)
    draws = torch.randn(n_domains, t, q, fs, generator=gen) / math.sqrt(fs)
    # centred draws, rescaled to unit variance: they sum to 0 over domains (one domain: nothing to oppose)
    opposed = (draws - draws.mean(0)) * math.sqrt(n_domains / (n_domains - 1)) if n_domains > 1 else 0 * draws
    own = torch.randn(n_domains, t, q, fo, generator=gen) / math.sqrt(fo)
    s, c = cfg.shared_skill, cfg.conflict
    rules = torch.zeros(n_domains, t, q, cfg.n_features(n_domains))
    rules[..., :fs] = math.sqrt(s) * common + math.sqrt(c) * opposed
    for d in range(n_domains):
        rules[d, ..., fs + d * fo: fs + (d + 1) * fo] = math.sqrt(max(1 - s - c, 0.0)) * own[d]
    return rules


def draw_features(cfg: SimConfig, domain: torch.Tensor, n_domains: int, gen: torch.Generator) -> torch.Tensor:
    """[n, F] features of prompts of domains `domain` [n]: shared ones, and the domain's own block (others 0)."""
    fs, fo = cfg.shared_features, cfg.own_features
    x = torch.zeros(len(domain), cfg.n_features(n_domains))
    x[:, :fs] = torch.randn(len(domain), fs, generator=gen)
    own = torch.randn(len(domain), fo, generator=gen)
    columns = fs + domain[:, None] * fo + torch.arange(fo)
    return x.scatter_(1, columns, own)


def answer_digits(rules: torch.Tensor, features: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
    """[n, T] the right digits of prompts with features [n, F] of domains [n] under rules [D, T, Q, F]: one matmul
    per domain (rules[domain] would be an [n, T, Q, F] copy: 3 GB at K = 30)."""
    d, t, q, f = rules.shape
    digits = torch.empty(len(domain), t, dtype=torch.long)
    for k in range(d):
        rows = (domain == k).nonzero().squeeze(1)
        if len(rows):
            digits[rows] = (features.index_select(0, rows) @ rules[k].reshape(t * q, f).T).view(-1, t, q).argmax(-1)
    return digits


@dataclass(frozen=True)
class SimTasks:
    """Every prompt of the task (train prompts of each domain, then eval prompts of each) and the verifier."""

    rules: torch.Tensor  # [D, T, Q, F] G_d
    features: torch.Tensor  # [n, F] x of every prompt, by prompt id
    domain: torch.Tensor  # [n] its domain
    answers: torch.Tensor  # [n, M, T] its right answer in every style (token ids)
    digits_of: torch.Tensor  # [n, T] its right digits (the answer in style 0)
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
        features = draw_features(cfg, domain, n_domains, gen)
        digits = answer_digits(rules, features, domain)
        answers = digits[:, None] + torch.arange(cfg.styles)[None, :, None] * cfg.digits
        return cls(rules, features, domain, answers, digits, cfg.train_prompts, cfg.eval_prompts, cfg.digits,
                   cfg.styles, cfg.vocab_size)

    def first_prompt(self, domain: torch.Tensor, eval: bool) -> torch.Tensor:
        """The id of the first train (or eval) prompt of each domain in `domain`."""
        return self.rules.shape[0] * self.n_train + domain * self.n_eval if eval else domain * self.n_train

    def score_prompts(self, prompt: torch.Tensor, tokens: torch.Tensor,
                      mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(reward, correct) [...] of responses tokens [..., T] to prompts `prompt` [...] (ids): right when the
        response is the right answer in one style (on the positions `mask` [..., T] keeps: a domain's shorter
        answers); the reward is the correctness."""
        digits = self.digits_of.index_select(0, prompt.reshape(-1)).view(tokens.shape)
        offset = tokens - digits  # m·Q at every position when the response is the answer in style m
        first = offset[..., :1]
        same = offset == first
        if mask is not None:
            same = same | (mask == 0)
        correct = same.all(-1) & (first[..., 0] % self.digits == 0) & (first[..., 0] >= 0) & \
            (first[..., 0] < self.digits * self.styles)
        correct = correct.float()
        return correct, correct
