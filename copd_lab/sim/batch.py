"""What the simulator world keeps beside a batch and between calls: the inputs that re-score its rollouts, the
sampler's own scores, where a call's rollouts come from, and the logit tables of the slots in use (world.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SimPayload:
    """What re-scoring needs beyond the tokens: each rollout's prompt and previous tokens, and the temperature."""

    content: torch.Tensor  # [R, N] content s of each rollout's prompt
    prompt: torch.Tensor  # [R, N] d * S + s: the prompt's row in a slot's table of prompt logits
    prev: torch.Tensor  # [R, N, T] the token before each position (V = the start token): the bigram's row
    temperature: float
    scored: Scored | None = None  # the sampler's own scores, reused while its tables are current

    def take(self, rows: list[int]) -> SimPayload:
        index = torch.tensor(rows, dtype=torch.long)
        return SimPayload(self.content[index], self.prompt[index], self.prev[index], self.temperature)


@dataclass(frozen=True)
class Scored:
    """Full log-probs [R, N, T, V] of a batch under its samplers' slots, with their graph to `tables`.

    Sampling computes them anyway (its log-probs are π_old), and the training forward, the gap's
    student side and the conflict probe ask for the very same numbers right after: they get these.
    """

    tables: LogitTables
    logp: torch.Tensor
    token: torch.Tensor | None  # [R, N, T] logp at the sampled tokens (at τ = 1: they are π_old), with the graph


@dataclass(frozen=True)
class Layout:
    """Where the rollouts of a sample call come from (cached per request shape)."""

    domain: torch.Tensor  # [R, N] domain d of each rollout; pooled domains split evenly over a request's prompts
    first_prompt: torch.Tensor  # [R, N] d * S: the row of the domain's first prompt in a slot's table
    content: torch.Tensor | None  # [R, N] content s when every eval prompt is visited once, else None (drawn)
    prompt_of: torch.Tensor  # [N] the prompt (of `prompts` drawn) each rollout answers: a prompt's G are adjacent
    mask: torch.Tensor  # [R, N, T] all ones: every sim answer has T tokens


@dataclass
class LogitTables:
    """The logit tables of some slots under the current weights (see SimWorld._tables)."""

    slots: dict[int, int]  # slot -> its block in the tables
    weights: torch.Tensor  # [k, P] the rows of these slots: the leaf the tables' gradient lands on
    prompt: torch.Tensor  # [k * D * S, T, V] hidden-part logits of every (slot, prompt), by row
    bigram: torch.Tensor  # [k * (V + 1), V] bigram logits U of every (slot, previous token), by row
