"""The seam between the one CoPD algorithm and a world (the simulator, real VLMs, or either sharded over actors).

A world holds numbered weight *slots*: slot 0 is the shared base π_0, every other slot is a branch, a
frozen teacher snapshot or a merged model. The trainer hands a world all requests of a tick at once,
so a world may vectorise across branches (the simulator stacks them in one tensor), loop over adapters
(the VLM world), or send them to remote actors (copd_lab.distributed); the rollout engine lives behind `sample`.

`World` is what every world does. What only some worlds can do is a small capability protocol beside it
(`ExactAccuracy`, `ShardableSlots`, `SideBySide`, `TokenText`), which a world declares in its `capabilities`;
callers ask `has(world, Capability)`, and copd_lab.local_world checks once, where a world is built, that each
declared capability is there and that the config needs none the world lacks (`require_capability`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from copd_lab.config import ConfigError, MergeConfig


class NonFiniteError(RuntimeError):
    """A loss, the weights or a policy's probabilities became NaN or inf; the run stops, its last checkpoint
    kept. Worlds raise it with what went wrong; the trainer adds where (method, branch, tick, seed)."""


class WorldLost(RuntimeError):
    """A part of a distributed world died (a Ray actor, or the node it ran on); the run stops, its last checkpoint
    kept. Worlds raise it naming the expert; the trainer adds where."""


@dataclass(frozen=True)
class Request:
    """One batch to sample this tick: rollouts of `slot` on prompts from `domains`."""

    slot: int  # whose weights sample (and, for training, whose weights get the gradient)
    domains: tuple[int, ...]  # prompt domains; several = a pooled mixture, each prompt's domain drawn by `shares`
    teacher: int = -1  # slot that grades the rollouts token by token (OPD); -1 for a GRPO batch
    beta: float = 0.0  # β of the OPD advantage
    stream: str = ""  # the random stream it draws from: its method's name (see copd_lab.streams)
    shares: tuple[float, ...] = ()  # a pooled mixture's weight per domain (empty: equal), drawn prompt by prompt

    def domain_probs(self) -> torch.Tensor:
        """[len(domains)] the probability of each domain for one prompt of this request."""
        weights = torch.tensor(self.shares or [1.0] * len(self.domains), dtype=torch.float64)
        return weights / weights.sum()


class Payload(Protocol):
    """A world's own inputs that re-score a batch's rollouts (the simulator's prompt ids, the VLM's prompts)."""

    def take(self, rows: list[int]) -> Payload:
        """The payload of these request rows (rows may repeat)."""


@dataclass
class Batch:
    """Rollouts of R requests, padded to [R, N, T] (N = prompts * group size)."""

    requests: list[Request]
    domain: torch.Tensor  # [R, N] domain index of each rollout's prompt
    tokens: torch.Tensor  # [R, N, T] sampled completion tokens
    mask: torch.Tensor  # [R, N, T] 1.0 on real completion tokens
    rewards: torch.Tensor  # [R, N] verifier reward
    correct: torch.Tensor  # [R, N] 1.0 where the answer is right
    sample_logprobs: torch.Tensor  # [R, N, T] log-probs under the sampling weights (π_old)
    payload: Payload | None = None  # world-specific inputs needed to re-score the rollouts (prompts, images)

    def take(self, rows: list[int]) -> Batch:
        """The sub-batch of these request rows (rows may repeat), e.g. one row per scored pair."""
        index = torch.tensor(rows, dtype=torch.long)
        payload = None if self.payload is None else self.payload.take(rows)
        return Batch([self.requests[i] for i in rows], self.domain[index], self.tokens[index], self.mask[index],
                     self.rewards[index], self.correct[index], self.sample_logprobs[index], payload)


class World(Protocol):
    """What a world must do for the trainer, the evaluator and the metrics."""

    domains: tuple[str, ...]
    max_new_tokens: int  # the longest completion a rollout can have (Dr.GRPO's constant normaliser)
    capabilities: frozenset[type]  # the optional capability protocols below that this world implements
    lr_setting: str  # the config field of its learning rate, with its value ("sim.lr = 0.02"): what a non-finite
    # error advises to lower

    def reset(self, n_slots: int, seed: int) -> None:
        """Fresh run: `n_slots` slots, all holding the base weights; slot 0 is the base itself. Sampling
        draws from one stream per (seed, request.stream) (copd_lab.streams)."""

    def copy(self, src: int, dst: int) -> None:
        """Weights (and fresh optimizer state) of `dst` become those of `src`."""

    def merge(self, sources: list[int], dst: int, spec: MergeConfig) -> None:
        """`dst` becomes the merge of `sources` (task vectors are taken against slot 0)."""

    def sample(self, requests: list[Request], prompts: int, group: int, temperature: float,
               greedy: bool = False, every_prompt: bool = False) -> Batch:
        """Sample `group` rollouts on each of `prompts` prompts per request, with rewards.

        every_prompt: evaluate on the eval prompts of the request's domains, in order, `group` rollouts each:
            the first `prompts` of each domain, or all of them when `prompts` is 0 (or more than there are).
        """

    def token_logprobs(self, batch: Batch, slots: list[int], grad: bool) -> torch.Tensor:
        """[R, N, T] log-probs of the batch's tokens under slot slots[r] for request r.

        A slot of -1 means "not needed": the world may skip that row and return zeros there.
        """

    def full_logprobs(self, batch: Batch, slots: list[int], grad: bool) -> torch.Tensor:
        """[R, N, T, V] next-token log-distributions along the batch's rollouts under slots[r]."""

    def pair_logprobs(self, batch: Batch, rows: list[int], full: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(student, teacher) no-grad log-probs of the OPD rows `rows` under their request's slot and under its
        teacher: [R, N, T] of the sampled tokens, or [R, N, T, V] with `full`; zeros on the other rows.

        A row's two scores are computed alike (the same inputs, the same batch layout), so a teacher whose
        weights equal the student's gives exactly equal values: Eq. 8's advantage is exactly 0, not float
        noise that Adam would scale up to full-size steps."""

    def step(self, loss: torch.Tensor, slots: list[int]) -> None:
        """Backward `loss` and update only `slots` (each slot has its own optimizer state)."""

    def non_finite(self, slots: list[int]) -> list[int]:
        """The slots among `slots` whose trainable weights hold a NaN or inf (checked after every update)."""

    def flat_weights(self, slots: list[int]) -> torch.Tensor:
        """[len(slots), P] trainable weights of each slot, flat (task vectors)."""

    def flat_grads(self, loss: torch.Tensor, slots: list[int]) -> torch.Tensor:
        """[len(slots), P] gradient of `loss` w.r.t. each slot's weights, without updating anything."""

    def state_dict(self) -> dict:
        """Everything needed to resume: weights of every slot, optimizer state, RNG state (every stream's)."""

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""


# ---------------------------------------------------------------------------------------------- capabilities


@runtime_checkable
class ExactAccuracy(Protocol):
    """A world whose answers can be enumerated (the simulator): accuracy computed from its probabilities, with no
    sampling noise. The evaluation logs it as acc_exact beside sampled pass@1."""

    def exact_accuracy(self, requests: list[Request], grad: bool = False, temperature: float = 1.0,
                       split: str = "eval") -> torch.Tensor:
        """[R] expected accuracy of each request's slot on every eval prompt of its first domain; with `grad` the
        graph to the slots' weights is kept (flat_grads then gives the exact gradient of the accuracy). At a
        sampling temperature (1: the policy itself); split "train": on as many of its train prompts instead."""


@runtime_checkable
class ShardableSlots(Protocol):
    """A world that can be one shard of a sharded world (copd_lab.distributed): its slots' weights and its
    random draws move between processes, and rollouts sampled in another shard can be scored here."""

    pad_id: int  # the token that pads completions of unequal length

    def get_slot(self, slot: int) -> object:
        """A slot's weights, to copy into another world's slot (set_slot)."""

    def set_slot(self, slot: int, weights: object) -> None:
        """The slot's weights become `weights` (from get_slot), with fresh optimizer state, as copy() gives them."""

    def draw(self, requests: list[Request], prompts: int, group: int, greedy: bool = False,
             every_prompt: bool = False) -> Draws:
        """The random draws a sample call makes, from the requests' streams; sample(..., draws=) uses them."""

    def export_payload(self, payload: Payload) -> list:
        """Per request row, what re-scores its rollouts in another world of the same config."""

    def import_payload(self, rows: list) -> Payload:
        """The payload of rows from export_payload (of this world or another)."""

    def generator_state(self) -> torch.Tensor | None:
        """The state of the world's own generator (merge seeds, a LoRA's A_0), or None if it has none."""

    def set_generator_state(self, state: torch.Tensor | None) -> None:
        """Restore what generator_state returned."""


class Draws(Protocol):
    """A sample call's random draws, per request."""

    def take(self, rows: list[int]) -> Draws:
        """The draws of these requests, in this order."""


@runtime_checkable
class SideBySide(Protocol):
    """A world in which several seeds run side by side, each in a window of its slots and streams
    (copd_lab.algorithm.side_by_side.SlotView): its state can be saved and restored one seed's window at a time."""

    def state_dict(self, rows: slice | None = None, seed: int | None = None) -> dict:
        """The state of slots `rows` and of seed `seed`'s streams, as a world of those slots alone holds it."""

    def load_state_dict(self, state: dict, rows: slice | None = None, seed: int | None = None) -> None:
        """Restore what state_dict(rows, seed) returned into those slots and that seed's streams."""


@runtime_checkable
class TokenText(Protocol):
    """A world that can say how a token reads (the token inspector)."""

    def token_text(self, token: int) -> str:
        """The text of one token id."""


CAPABILITIES = (ExactAccuracy, ShardableSlots, SideBySide, TokenText)


def has(world: World, capability: type) -> bool:
    """Whether the world declares this capability."""
    return capability in world.capabilities


def missing(world: World) -> list[str]:
    """The capabilities a world declares but does not implement (empty when it keeps every promise it makes)."""
    return [c.__name__ for c in world.capabilities if not isinstance(world, c)]


def require_capability(world: World | type, capability: type, field: str, value: object, why: str) -> None:
    """A ConfigError naming the field, its value and the missing capability, unless the world declares it."""
    if capability not in world.capabilities:
        kind = world.__name__ if isinstance(world, type) else type(world).__name__
        raise ConfigError(f"{field} = {value!r} is not allowed: {why}, and {kind} lacks the capability "
                          f"{capability.__name__} (copd_lab.world)")
