"""What the simulator world keeps beside a batch and between calls: the inputs that re-score its rollouts, the
sampler's own scores, where a call's rollouts come from, and the weights of the slots in use (world.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class SimPayload:
    """What re-scoring needs beyond the tokens: each prompt's id, the previous tokens, the temperature."""

    content: torch.Tensor  # [R, P] index of each prompt among its domain's train (or eval) prompts
    prompt: torch.Tensor  # [R, P] prompt id (SimTasks): its features and its answer
    prev: torch.Tensor  # [R, N, T] the token before each position (V = the start token): the bigram's row
    group: int  # rollouts per prompt, adjacent: N = P * group
    temperature: float
    scored: Scored | None = None  # the sampler's own scores, reused while its weights are current

    def take(self, rows: list[int]) -> SimPayload:
        index = torch.tensor(rows, dtype=torch.long)
        return SimPayload(self.content[index], self.prompt[index], self.prev[index], self.group, self.temperature)


@dataclass
class Scored:
    """Full log-probs [R, N, T, V] of a batch under its samplers' slots, with their graph to `weights`.

    Sampling computes them anyway (its log-probs are π_old), and the training forward, the gap's
    student side and the conflict probe ask for the very same numbers right after: they get these. A sample
    taken without a graph (a measurement) scores them only when asked (`make`): an evaluation's 8 rollouts a
    prompt never are.
    """

    weights: SlotWeights
    logp: torch.Tensor | None  # None until `full()` makes it
    token: torch.Tensor | None  # [R, N, T] logp at the sampled tokens (at τ = 1: they are π_old), with the graph
    graph: bool  # whether logp carries the graph to `weights`
    make: Callable[[], torch.Tensor] | None = None

    def full(self) -> torch.Tensor:
        if self.logp is None:
            self.logp, self.make = self.make(), None
        return self.logp


@dataclass(frozen=True)
class Layout:
    """Where the prompts of a sample call come from (cached per request shape)."""

    domain: torch.Tensor  # [R, N] domain of each rollout (a pooled request's: drawn per call, see SimDraws)
    first_prompt: torch.Tensor  # [R, P] id of the first prompt of each prompt's domain (train or eval)
    content: torch.Tensor | None  # [R, P] prompt index when every eval prompt is visited once, else None (drawn)
    mask: torch.Tensor  # [R, N, T] all ones: every sim answer has T tokens


@dataclass
class SlotWeights:
    """The weights of some slots, as one leaf the gradient lands on, and its named blocks (see SimWorld._weights)."""

    slots: dict[int, int]  # slot -> its row in `weights`
    weights: torch.Tensor  # [k, P] the leaf
    blocks: dict[str, torch.Tensor]  # named [k, ...] views of it (copd_lab.sim.net)
    bigram: torch.Tensor  # [k * (M + 2), V] the rows of U of every slot (net.previous_rows), by row
