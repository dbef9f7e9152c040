"""Seeds side by side: every seed's recipes as slots of one world, stepped together tick by tick.

A tick of the simulator costs mostly per-op overhead, so five seeds run one after the other cost five
times one; run side by side, each tick's requests of every seed go to the world in one call (one sample,
one loss, one update), for about the cost of one (the loop: copd_lab.algorithm.loop.run_seeds). Each seed's
trainer sees a `SlotView`: its own slots (an offset into the world's), and its own random streams
(`streams.seeded`), so that it draws exactly what it draws alone, and its rows and checkpoints are those of a run
of that seed alone. Slots are interleaved (slot s of seed k of K is the world's slot s·K + k), so that the branches
all seeds train in a tick are adjacent rows of the world: its update works on one slice, not on gathered copies.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from copd_lab.config import MergeConfig
from copd_lab.streams import seeded
from copd_lab.world import Batch, ExactAccuracy, Request, SideBySide, TokenText, World, has


class SlotView:
    """Seed `seed`'s window on a world shared by `count` seeds, the `index`-th of them: its slot s is the world's
    slot s * count + index, and its streams are `seeded` with its seed."""

    def __init__(self, world: World, index: int, count: int, n_slots: int, seed: int):
        if not has(world, SideBySide):
            raise TypeError(f"{type(world).__name__} cannot run seeds side by side (it lacks the capability "
                            f"SideBySide of copd_lab.world)")
        self.world, self.index, self.count, self.n_slots, self.seed = world, index, count, n_slots, seed
        self.domains, self.max_new_tokens, self.lr_setting = world.domains, world.max_new_tokens, world.lr_setting
        self.capabilities = world.capabilities & {ExactAccuracy, TokenText}
        self.rows = slice(index, n_slots * count, count)

    def slot(self, s: int) -> int:
        return s * self.count + self.index if s >= 0 else -1

    def request(self, r: Request) -> Request:
        return replace(r, slot=self.slot(r.slot), teacher=self.slot(r.teacher), stream=self.stream(r.stream))

    def stream(self, name: str) -> str:
        return seeded(name, self.seed)

    def slots(self, slots: list[int]) -> list[int]:
        return [self.slot(s) for s in slots]

    def reset(self, n_slots: int, seed: int) -> None:
        """Nothing to do: copd_lab.algorithm.loop.run_seeds resets the world for every seed at once (slots at the
        base, no stream drawn yet), before any trainer begins."""
        if (n_slots, seed) != (self.n_slots, self.seed):
            raise ValueError(f"this view holds {self.n_slots} slots of seed {self.seed}, not {n_slots} of seed {seed}")

    def copy(self, src: int, dst: int) -> None:
        self.world.copy(self.slot(src), self.slot(dst))

    def merge(self, sources: list[int], dst: int, spec: MergeConfig) -> None:
        self.world.merge(self.slots(sources), self.slot(dst), spec)

    def sample(self, requests: list[Request], *args, **kwargs) -> Batch:
        return self.world.sample([self.request(r) for r in requests], *args, **kwargs)

    def token_logprobs(self, batch: Batch, slots: list[int], grad: bool) -> torch.Tensor:
        return self.world.token_logprobs(batch, self.slots(slots), grad)

    def full_logprobs(self, batch: Batch, slots: list[int], grad: bool) -> torch.Tensor:
        return self.world.full_logprobs(batch, self.slots(slots), grad)

    def pair_logprobs(self, batch: Batch, rows: list[int], full: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return self.world.pair_logprobs(batch, rows, full)

    def exact_accuracy(self, requests: list[Request], grad: bool = False, temperature: float = 1.0,
                       split: str = "eval") -> torch.Tensor:
        return self.world.exact_accuracy([self.request(r) for r in requests], grad, temperature, split)

    def token_text(self, token: int) -> str:
        return self.world.token_text(token)

    def step(self, loss: torch.Tensor, slots: list[int]) -> None:
        self.world.step(loss, self.slots(slots))

    def non_finite(self, slots: list[int]) -> list[int]:
        return [(s - self.index) // self.count for s in self.world.non_finite(self.slots(slots))]

    def flat_weights(self, slots: list[int]) -> torch.Tensor:
        return self.world.flat_weights(self.slots(slots))

    def flat_grads(self, loss: torch.Tensor, slots: list[int]) -> torch.Tensor:
        return self.world.flat_grads(loss, self.slots(slots))

    def state_dict(self) -> dict:
        return self.world.state_dict(self.rows, self.seed)

    def load_state_dict(self, state: dict) -> None:
        self.world.load_state_dict(state, self.rows, self.seed)


class Alone:
    """The window of a seed that has its world to itself: its slots and streams are the world's own."""

    def __init__(self, world: World):
        self.world = world

    def slot(self, s: int) -> int:
        return s

    def request(self, r: Request) -> Request:
        return r

    def stream(self, name: str) -> str:
        return name


def window_of(world: World) -> SlotView | Alone:
    """How a trainer's slots and streams map onto the world the loop calls: its SlotView, or itself alone."""
    return world if isinstance(world, SlotView) else Alone(world)
