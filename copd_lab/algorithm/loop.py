"""The one training loop: trainers of one or more seeds stepped tick by tick on one world (docs/algorithm.md).

Each tick: every trainer lists its requests (Trainer.collect), the world trains them in one call
(update.train_step: sample, score the teachers, GRPO or OPD loss per request, one update per branch), every
trainer plans its measurements (Trainer.measurements) and the same measurement of every seed runs as one batch of
world calls; then each trainer checkpoints on its cadence (Trainer.after_step). One seed has the world to itself;
several share a world that runs seeds side by side, each in its SlotView (copd_lab.algorithm.side_by_side).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import reduce
from operator import add

from copd_lab.algorithm import update
from copd_lab.algorithm.trainer import Owner, Trainer
from copd_lab.records.measure import Meter, measure_stream
from copd_lab.world import NonFiniteError, WorldLost


def run_seeds(trainers: list[Trainer], states: list[dict | None]) -> list[list[dict]]:
    """Run the trainers of one or more seeds tick by tick on one world; each trainer's rows.

    One seed: its trainer has the world to itself. Several: each trainer's world is its SlotView of one world
    (copd_lab.algorithm.side_by_side), and a tick's requests of every seed are one world call (update.train_step),
    its measurements one batch of world calls per kind: every row of it is computed as it is alone, so the rows
    are those of the seeds run one by one, for about the time of one.
    states: each seed's unfinished checkpoint to resume from, or None. A seed that resumes later in the run joins
    the others at its tick.
    """
    world, cfg = trainers[0].window.world, trainers[0].cfg
    world.reset(sum(len(t.slots) for t in trainers), trainers[0].seed)
    starts = [t.begin(state) for t, state in zip(trainers, states)]
    # a row of a joined measurement goes to its seed's trainer; its draws come from that seed's measurement stream
    meter = Meter(cfg, world, lambda owner, *row: owner[0].book.log(owner[1], *row),
                  lambda owner: owner[0].window.stream(measure_stream(owner[1])))
    for tick in range(min(starts), trainers[0].total + 1):
        active = [t for t, start in zip(trainers, starts) if start <= tick]
        collected = [t.collect(tick) for t in active]
        requests = [t.window.request(r) for t, (rs, _) in zip(active, collected) for r in rs]
        if requests:
            owners = [(t, owner) for t, (_, os) in zip(active, collected) for owner in os]
            with _placed(active, tick):
                signal, per_domain = update.train_step(world, cfg, requests, _blame(owners))
            at = 0
            for trainer, (rs, os) in zip(active, collected):
                if rs:
                    trainer.book.keep_signals(tick, os, signal[at: at + len(rs)],
                                              None if per_domain is None else per_domain[at: at + len(rs)])
                at += len(rs)
        _measure(active, tick, meter)
        for trainer in active:
            trainer.after_step(tick)
    return [t.end() for t in trainers]


def _measure(trainers: list[Trainer], tick: int, meter: Meter) -> None:
    """The tick's measurements of every seed, the same call of every seed joined into one (a seed's rows come out
    as its own meter writes them)."""
    plans = [t.guarded(tick, t.measurements, tick) for t in trainers]
    if any([type(c) for c in plan] != [type(c) for c in plans[0]] for plan in plans):
        for trainer, plan in zip(trainers, plans):  # schedules that differ (never at one tick today): each alone
            for call in plan:
                trainer.guarded(tick, call, trainer.meter)
        return
    with _placed(trainers, tick):
        for calls in zip(*plans):
            reduce(add, [call.placed(lambda method, t=t: (t, method), t.window.slot)
                         for t, call in zip(trainers, calls)])(meter)


class _Blamed(Exception):
    """A non-finite loss or update of one seed's request, on its way to that seed's trainer (see _placed)."""

    def __init__(self, trainer: Trainer, error: NonFiniteError):
        super().__init__(str(error))
        self.trainer, self.error = trainer, error


def _blame(owners: list[tuple[Trainer, Owner]]) -> Callable[[int, str], None]:
    """update.train_step's on_non_finite: the error names the seed, method, branch and edge of the request."""
    def stop(row: int, what: str) -> None:
        trainer, owner = owners[row]
        raise _Blamed(trainer, trainer.non_finite_error(owner, what))

    return stop


@contextmanager
def _placed(trainers: list[Trainer], tick: int) -> Iterator[None]:
    """A world's error told where it happened: by the seed it belongs to, else by every seed of the call."""
    try:
        yield
    except _Blamed as blamed:
        raise blamed.trainer.placed(blamed.error, tick) from None
    except (NonFiniteError, WorldLost) as err:
        if len(trainers) == 1:
            raise trainers[0].placed(err, tick) from None
        seeds = ", ".join(str(t.seed) for t in trainers)
        for trainer in trainers:
            trainer.close_bar()
        raise type(err)(f"{err}, at tick {tick} (seeds {seeds} side by side): training stopped and each seed's "
                        f"last good checkpoint stays. {trainers[0].advice()}") from None
