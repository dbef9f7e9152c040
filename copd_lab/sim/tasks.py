"""Synthetic token-level tasks with the paper's mechanisms behind knobs (DESIGN.md section 2).

A prompt is (domain d, content s). Its answer is T digits a(d, s) in [0, Q). The answer may be written
in any of M behaviour patterns: pattern m writes digit a_t as token m*Q + a_t, so a response must pick a
pattern at its first token and keep it. Every pattern earns the same reward, so experts trained apart
can drift to different patterns (a behavioural gap) while staying accurate.

* shared_skill: the fraction of contents whose answer is the same in every domain, so learning one
  domain transfers to the others through the shared content embedding.
* the policy's hidden width (SimConfig.hidden) is the shared capacity: contents with domain-private
  answers compete for it, so mixed training can conflict.

Reward (a graded verifier): the best pattern's fraction of right positions; correct = all right.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from copd_lab.config import SimConfig


@dataclass(frozen=True)
class SimTasks:
    """The answers of every (domain, content) prompt, and the verifier."""

    targets: torch.Tensor  # [D, S, T] digit of each answer position
    shared: torch.Tensor  # [S] True where the content's answer is shared by all domains
    digits: int  # Q
    patterns: int  # M

    @property
    def vocab_size(self) -> int:
        return self.digits * self.patterns  # as SimConfig.vocab_size

    @classmethod
    def build(cls, cfg: SimConfig, n_domains: int, seed: int) -> SimTasks:
        """Draw the answers from `seed` (the task, unlike the run, does not change with the run seed
        unless you ask: pass the same seed for comparable runs)."""
        gen = torch.Generator().manual_seed(seed)
        s, t, q = cfg.prompts_per_domain, cfg.answer_len, cfg.digits
        common = torch.randint(q, (s, t), generator=gen)
        private = torch.randint(q, (n_domains, s, t), generator=gen)
        order = torch.randperm(s, generator=gen)
        shared = torch.zeros(s, dtype=torch.bool)
        shared[order[: round(cfg.shared_skill * s)]] = True
        targets = torch.where(shared[None, :, None], common[None], private)
        tasks = cls(targets, shared, q, cfg.patterns)
        # cached for the hot path: one row [M, T] per prompt id d * S + s
        object.__setattr__(tasks, "_answers", tasks.answer_tokens.flatten(0, 1))
        return tasks

    @property
    def answer_tokens(self) -> torch.Tensor:
        """[D, S, M, T] the token sequence of every answer in every pattern (m*Q + digit)."""
        blocks = torch.arange(self.patterns).view(1, 1, -1, 1) * self.digits
        return self.targets[:, :, None] + blocks

    def score(self, domain: torch.Tensor, content: torch.Tensor, tokens: torch.Tensor):
        """Rewards and correctness [...] of responses tokens [..., T] to prompts (domain, content)."""
        return self.score_prompts(domain * self.targets.shape[1] + content, tokens)

    def score_prompts(self, prompt: torch.Tensor, tokens: torch.Tensor):
        """`score` of prompts given as one id d * S + s each (the simulator world has them at hand)."""
        answers = self._answers.index_select(0, prompt.reshape(-1))
        hits = tokens.unsqueeze(-2) == answers.view(*prompt.shape, *answers.shape[1:])  # [..., M, T]
        reward = hits.float().mean(-1).amax(-1)
        return reward, (reward == 1.0).float()
