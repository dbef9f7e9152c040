"""Seeds side by side: every seed's recipes as slots of one world, stepped together tick by tick.

A tick of the simulator costs mostly per-op overhead, so five seeds run one after the other cost five
times one; run side by side, each tick's requests of every seed go to the world in one call (one sample,
one loss, one update), for about the cost of one. Each seed's trainer sees a `SlotView`: its own slots
(an offset into the world's), and its own random streams (`streams.seeded`), so that it draws exactly
what it draws alone, and its rows and checkpoints are those of a run of that seed alone. Slots are
interleaved (slot s of seed k of K is the world's slot s·K + k), so that the branches all seeds train in a
tick are adjacent rows of the world: its update works on one slice, not on gathered copies.
"""

from __future__ import annotations

import torch

from copd_lab.algorithm import update
from copd_lab.algorithm.trainer import Trainer
from copd_lab.config import MergeConfig
from copd_lab.records.measure import Meter, measure_stream
from copd_lab.streams import seeded
from copd_lab.world import Batch, NonFiniteError, Request


class SlotView:
    """Seed `seed`'s window on a world shared by `count` seeds, the `index`-th of them: its slot s is the world's
    slot s * count + index, and its streams are `seeded` with its seed."""

    def __init__(self, world, index: int, count: int, n_slots: int, seed: int):
        self.world, self.index, self.count, self.n_slots, self.seed = world, index, count, n_slots, seed
        self.domains, self.max_new_tokens = world.domains, world.max_new_tokens
        self.rows = slice(index, n_slots * count, count)

    def slot(self, s: int) -> int:
        return s * self.count + self.index if s >= 0 else -1

    def request(self, r: Request) -> Request:
        return Request(self.slot(r.slot), r.domains, self.slot(r.teacher), r.beta, seeded(r.stream, self.seed))

    def slots(self, slots: list[int]) -> list[int]:
        return [self.slot(s) for s in slots]

    def reset(self, n_slots: int, seed: int) -> None:
        """Nothing to do: run_side_by_side resets the world for every seed at once (slots at the base, no
        stream drawn yet), before any trainer begins."""
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

    def exact_accuracy(self, requests: list[Request], grad: bool = False) -> torch.Tensor:
        return self.world.exact_accuracy([self.request(r) for r in requests], grad)

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


def run_side_by_side(trainers: list[Trainer], states: list[dict | None]) -> list[list[dict]]:
    """Run trainers of several seeds, each on its SlotView of one world, tick by tick; each trainer's rows.

    states: each seed's unfinished checkpoint to resume from, or None. A seed that resumes later in the run
    joins the others at its tick. A tick's requests of every seed are one world call (update.train_step):
    every row of it is computed as it is alone, so the rows are those of the seeds run one by one.
    """
    world = trainers[0].world.world
    world.reset(sum(t.world.n_slots for t in trainers), trainers[0].seed)
    for trainer in trainers:
        trainer.world.reset(trainer.world.n_slots, trainer.seed)
    starts = [t.begin(state) for t, state in zip(trainers, states)]
    by_seed = {t.seed: t for t in trainers}

    def log(label: str, *row) -> None:  # a row of the merged Meter goes to the trainer of its seed
        method, _, seed = label.rpartition("@")
        by_seed[int(seed)].book.log(method, *row)

    def stream(label: str) -> str:
        method, _, seed = label.rpartition("@")
        return seeded(measure_stream(method), int(seed))

    meter = Meter(trainers[0].cfg, world, log, stream)
    total = trainers[0].total
    for tick in range(min(starts), total + 1):
        active = [t for t, start in zip(trainers, starts) if start <= tick]
        collected = [t.collect(tick) for t in active]
        requests = [t.world.request(r) for t, (rs, _) in zip(active, collected) for r in rs]
        owners = [(t, owner) for t, (_, os) in zip(active, collected) for owner in os]
        if requests:
            signal = update.train_step(world, trainers[0].cfg, requests, _stop(owners, tick))
            at = 0
            for trainer, (rs, os) in zip(active, collected):
                if rs:
                    trainer.book.keep_signals(tick, os, signal[at: at + len(rs)])
                at += len(rs)
        _measure_together(active, tick, meter)
        for trainer in active:
            trainer.after_step(tick, measured=True)
    return [t.end() for t in trainers]


def _measure_together(trainers: list[Trainer], tick: int, meter: Meter) -> None:
    """The tick's measurements of every seed, each kind in one batch of world calls: each seed's rows come out as
    its own Meter writes them (labels carry the seed: `seeded(method, seed)`)."""
    plans = [t._guarded(tick, t.measurements, tick) for t in trainers]
    if any([kind for kind, _ in plan] != [kind for kind, _ in plans[0]] for plan in plans):
        for t, plan in zip(trainers, plans):  # schedules that differ (never at one tick today): each seed alone
            for kind, args in plan:
                t._guarded(tick, getattr(t.gap, kind), *args)
        return
    try:
        for i, (kind, args) in enumerate(plans[0]):
            calls = [(t, plan[i][1]) for t, plan in zip(trainers, plans)]
            if kind == "measure_groups":
                groups = [(seeded(method, t.seed), [(b, t.world.slot(s)) for b, s in branches])
                          for t, (_, per_trainer, _) in calls for method, branches in per_trainer]
                meter.measure_groups(args[0], groups, args[2])
            elif kind == "accuracy":
                outputs = [(seeded(method, t.seed), b, t.world.slot(s)) for t, (method, branches, _, _) in calls
                           for b, s in branches]
                meter.accuracy_of(outputs, args[2], args[3])
            else:  # conflict
                branches = [(seeded(method, t.seed), b, t.world.slot(s)) for t, (method, per_trainer, _) in calls
                            for b, s in per_trainer]
                meter.conflict_of(branches, args[2])
    except NonFiniteError as err:
        seeds = ", ".join(str(t.seed) for t in trainers)
        raise NonFiniteError(f"{err}, at tick {tick} (seeds {seeds} side by side): training stopped and each seed's "
                             f"last good checkpoint stays. {trainers[0]._advice()}") from None


def _stop(owners: list[tuple[Trainer, tuple[str, str, str]]], tick: int):
    """train_step's on_non_finite for a tick of several seeds: the error names the seed, method and branch."""
    def stop(row: int, what: str) -> None:
        trainer, owner = owners[row]
        trainer._guarded(tick, trainer._non_finite, [owner], 0, what)

    return stop
