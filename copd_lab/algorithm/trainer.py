"""One seed's run of the recipes on a world (Algorithm 1 when the recipe is CoPD; docs/algorithm.md).

All recipes of a comparison run side by side on one world, tick by tick: a recipe starts when the
recipes it requires have finished (static OPD and MOPD start from the experts), and every tick the
world gets the requests of all training branches at once. For CoPD a tick in Phase I gives each
branch k one GRPO batch on D_k; a tick in Phase II gives it the same GRPO batch plus one OPD batch per
neighbour j on D_j prompts, graded by j, all joined in one update of θ_k (docs/paper.md §1.3).

A `Trainer` is one seed's run: where each recipe is, the requests of a tick, what a tick measures, its rows and
checkpoints. The loop that steps trainers tick by tick, one seed or several side by side, is
copd_lab.algorithm.loop.run_seeds.

With a checkpoint file the loop saves its whole state every `checkpoint_every` ticks (records/checkpoint.py)
and can continue from it with the same rows (the first checkpoint is written before the first step, so there
is always one); a NaN or inf loss stops it before the bad update, NaN or inf weights right after the update
that made them, before any forward uses them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from copd_lab.algorithm.recipes import OPDEdge, Recipe, Stage, is_active
from copd_lab.algorithm.schedule import Cursor, allocate_slots, slot_of, teacher_slot_of, timeline
from copd_lab.algorithm.side_by_side import window_of
from copd_lab.algorithm.slots import MERGED, SlotKey
from copd_lab.algorithm.topology import gap_pairs
from copd_lab.config import ExperimentConfig
from copd_lab.records.checkpoint import STATE_FORMAT, first_non_finite, resume_key, save_checkpoint
from copd_lab.records.measure import AccuracyOf, ConflictOf, GapOf, Meter
from copd_lab.records.rows import SeedRows
from copd_lab.world import NonFiniteError, Request, World, WorldLost

Owner = tuple[str, str, str]  # (method, branch, edge label or "") of a request: its rows and its errors


class Trainer:
    """Runs a list of recipes on a world for one seed and logs tidy metric rows."""

    def __init__(self, cfg: ExperimentConfig, world: World, recipes: list[Recipe], seed: int,
                 run: str = "run", progress: bool | Callable = True, checkpoint: str | Path | None = None,
                 on_eval: Callable[[list[dict], int], None] | None = None):
        """checkpoint: file the run state is written to every cfg.checkpoint_every ticks and at the end.
        on_eval(rows so far, tick): called after each evaluation during training (a notebook draws them)."""
        self.cfg, self.world, self.recipes, self.seed = cfg, world, recipes, seed
        self.run, self.progress = run, progress
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.on_eval = on_eval
        self.domain_index = {d: i for i, d in enumerate(world.domains)}
        self.slots = allocate_slots(recipes)
        # the branch pairs whose gap each recipe measures (metrics.gap_pairs; None: every ordered pair)
        self.gap_pairs = {r.name: gap_pairs([b.name for b in r.branches], cfg) for r in recipes}
        self.cursors = {r.name: Cursor() for r in recipes}
        self.spans = timeline(recipes)
        index = self.domain_index
        self.book = SeedRows(run, seed, {str(SlotKey(r.name, b.name)): (r.name, b.name) for r in recipes
                                         for b in r.branches},
                             cfg.grpo.prompts_per_step * cfg.grpo.group_size,
                             {str(SlotKey(r.name, b.name)): {index[d]: d for d in b.domains} for r in recipes
                              for b in r.branches if len(b.domains) > 1 and any(s.rlvr for s in r.stages)})
        self.meter = Meter(cfg, world, self.book.log)  # this seed's own: base and final evaluations, adaptive checks
        self.window = window_of(world)  # how its slots and streams map onto the world the loop calls
        self._boundary: set[str] = set()  # recipes that ended a phase this tick: their gap is measured
        self._requests: dict[tuple[str, int], list] = {}  # see _stage_requests
        self._bar = None  # the progress bar, from begin() to end()

    @property
    def rows(self) -> list[dict]:
        """The rows written so far (every row, once the run has ended)."""
        return self.book.rows

    def slot(self, recipe: Recipe, name: str) -> int:
        return slot_of(self.slots, recipe, name)

    def teacher_slot(self, recipe: Recipe, edge: OPDEdge) -> int:
        return teacher_slot_of(self.slots, recipe, edge)

    # ------------------------------------------------------------------ a tick

    @property
    def total(self) -> int:
        """The last tick of the run (every recipe has ended by then)."""
        return max((end for _, end in self.spans.values()), default=0)

    def begin(self, resume: dict | None = None) -> int:
        """Evaluate the base and write the first checkpoint (or restore `resume`) in the freshly reset world; the
        next tick."""
        if resume is None:
            torch.manual_seed(self.seed)
            start = 0
            self.guarded(0, self._evaluate_outputs, "base", [("base", 0)], 0)
            if self.checkpoint is not None:  # a last good checkpoint exists whatever happens next
                self._save(0)
        else:
            start = self.load_state_dict(resume)
        # progress: True for tqdm, False for none, or a factory of tqdm-like bars (total, initial, desc; update, close)
        bar = self.progress if callable(self.progress) else tqdm
        options = {} if callable(self.progress) else {"disable": not self.progress, "leave": False}
        self._bar = bar(total=self.total, initial=min(start, self.total), desc=f"{self.run} seed {self.seed}",
                        **options)
        return start

    def collect(self, tick: int) -> tuple[list[Request], list[Owner]]:
        """This tick's requests of every recipe that trains on it, and their owners (method, branch, edge)."""
        return self.guarded(tick, self._tick_requests, tick)

    def _tick_requests(self, tick: int) -> tuple[list[Request], list[Owner]]:
        requests, owners = [], []
        for recipe in self.recipes:  # a recipe that ends here is merged and evaluated now
            if self._advance(recipe, tick):
                self._collect(recipe, tick, requests, owners)
        return requests, owners

    def after_step(self, tick: int) -> None:
        """After the tick's step and measurements: tell on_eval, move the bar, checkpoint on the cadence."""
        if self.on_eval is not None and tick > 0 and tick % self.cfg.metrics.eval_every == 0:
            self.on_eval(self.rows, tick)
        if tick < self.total:
            self._bar.update(1)
            every = self.cfg.checkpoint_every
            if self.checkpoint is not None and every and (tick + 1) % every == 0:
                self._save(tick + 1)

    def end(self) -> list[dict]:
        """Flush the training signals into rows, write the finished checkpoint; every row of the run."""
        self.close_bar()
        self.book.flush()
        if self.checkpoint is not None:
            self._save(self.total + 1, done=True)
        return self.rows

    def close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def guarded(self, tick: int, work: Callable, *args):
        """work(*args), with a NonFiniteError or WorldLost it raises told where it happened (see `placed`)."""
        try:
            return work(*args)
        except (NonFiniteError, WorldLost) as err:
            raise self.placed(err, tick) from None

    def placed(self, err: NonFiniteError | WorldLost, tick: int) -> NonFiniteError | WorldLost:
        """The world's error with where (tick, seed) and what was kept added; the progress bar closed."""
        self.close_bar()
        if isinstance(err, WorldLost):
            again = " Run the same command with --resume to continue from it." if self.checkpoint else ""
            return WorldLost(f"{err}, at tick {tick} (seed {self.seed}): training stopped and {self._kept()}.{again}")
        return NonFiniteError(f"{err}, at tick {tick} (seed {self.seed}): training stopped and {self._kept()}. "
                              f"{self.advice()}")

    # ------------------------------------------------------------------ checkpoints

    def _save(self, next_tick: int, done: bool = False) -> None:
        """Checkpoint before `next_tick`, unless the state went non-finite (an optimizer moment can overflow
        while the weights stay finite)."""
        state = self.state_dict(next_tick, done)
        bad = first_non_finite(state["world"])
        if bad is not None:
            raise NonFiniteError(f"the world state {bad} holds NaN or inf after tick {next_tick - 1} (seed "
                                 f"{self.seed}): training stopped and {self._kept()}. {self.advice()}")
        save_checkpoint(self.checkpoint, state)

    def state_dict(self, next_tick: int, done: bool = False) -> dict:
        """Everything needed to continue at `next_tick`, as plain data (loads with weights_only=True)."""
        return {
            "format": STATE_FORMAT, "seed": self.seed, "config": resume_key(self.cfg), "tick": next_tick, "done": done,
            "cursors": {name: dataclasses.asdict(c) for name, c in self.cursors.items()}, **self.book.state_dict(),
            "boundary": sorted(self._boundary), "torch_rng": torch.get_rng_state(), "world": self.world.state_dict(),
        }

    def load_state_dict(self, state: dict) -> int:
        """Restore what `state_dict` saved (the world must be reset first); return the next tick."""
        self.cursors = {name: Cursor(**c) for name, c in state["cursors"].items()}
        self.book.load_state_dict(state)
        self._boundary = set(state["boundary"])
        torch.set_rng_state(state["torch_rng"])
        self.world.load_state_dict(state["world"])
        return state["tick"]

    def _advance(self, recipe: Recipe, tick: int) -> bool:
        """Start/finish stages and the recipe; True if the recipe trains on this tick."""
        cur = self.cursors[recipe.name]
        if cur.done or any(not self.cursors[r].done for r in recipe.requires):
            return False
        if not cur.started:
            cur.started = True
            for branch in recipe.branches:
                self.world.copy(self.slot(recipe, branch.init), self.slot(recipe, branch.name))
            self._start_stage(recipe, cur)
        while cur.stage < len(recipe.stages) and cur.tick >= recipe.stages[cur.stage].steps:
            cur.stage, cur.tick = cur.stage + 1, 0
            self._start_stage(recipe, cur)
        if cur.stage >= len(recipe.stages):
            self._finish(recipe, tick)
            return False
        return True

    def _start_stage(self, recipe: Recipe, cur: Cursor) -> None:
        if cur.stage < len(recipe.stages):
            for edge in recipe.stages[cur.stage].edges:
                if edge.snapshots:  # freeze the teacher for this phase
                    self.world.copy(self.slot(recipe, edge.teacher), self.teacher_slot(recipe, edge))

    def _finish(self, recipe: Recipe, tick: int) -> None:
        self.cursors[recipe.name].done = True
        if recipe.merge is not None:
            sources = [self.slot(recipe, b.name) for b in recipe.branches]
            self.world.merge(sources, self.slot(recipe, MERGED), recipe.merge)
            if self.world.non_finite([self.slot(recipe, MERGED)]):
                raise NonFiniteError(f"the merge ({recipe.merge.method}, scale {recipe.merge.scale}) made the weights "
                                     f"of method {recipe.name!r} NaN or inf")
        outputs = [(label, self.slot(recipe, name)) for label, name in recipe.outputs]
        self._evaluate_outputs(recipe.name, outputs, step=tick)

    def _collect(self, recipe: Recipe, tick: int, requests: list, owners: list) -> None:
        """This tick's requests of one recipe: native GRPO batches and OPD batches per open edge."""
        cur = self.cursors[recipe.name]
        stage = recipe.stages[cur.stage]
        for name, step_rate, native, opd in self._stage_requests(recipe, cur.stage):
            if not is_active(cur.tick, step_rate):
                continue
            self.book.count_step(recipe.name, name)
            if native is not None:
                requests.append(native)
                owners.append((recipe.name, name, ""))
            for edge, request in opd:
                if self._edge_open(recipe, stage, edge):
                    requests.append(request)
                    owners.append((recipe.name, name, edge.label))
        cur.tick += 1
        if cur.tick == stage.steps and len(recipe.branches) > 1 and self.cfg.metrics.gap_at_phase_end:
            self._boundary.add(recipe.name)  # the gap is measured at every phase end: the saw-tooth's corners
        for key in list(cur.windows):
            cur.windows[key] -= 1

    def _stage_requests(self, recipe: Recipe, index: int) -> list[tuple[str, float, Request | None, list]]:
        """Per trained branch of a stage: name, step rate, native GRPO request (None without RLVR) and
        (edge, OPD request) of each edge it learns on. Built once per stage: requests never change, and
        matching edges to students every tick would cost K·|edges| per tick."""
        key = (recipe.name, index)
        if key not in self._requests:
            stage = recipe.stages[index]
            edges_of: dict[str, list[OPDEdge]] = {}
            for edge in stage.edges:
                edges_of.setdefault(edge.student, []).append(edge)
            plan = []
            for name in stage.train:
                branch, slot = recipe.branch(name), self.slot(recipe, name)
                domains = tuple(self.domain_index[d] for d in branch.domains)
                native = Request(slot, domains, stream=recipe.name, shares=branch.shares) if stage.rlvr else None
                opd = [(edge, Request(slot, (self.domain_index[edge.domain],), teacher=self.teacher_slot(recipe, edge),
                                      beta=edge.beta, stream=recipe.name)) for edge in edges_of.get(name, [])]
                plan.append((name, branch.step_rate, native, opd))
            self._requests[key] = plan
        return self._requests[key]

    def _edge_open(self, recipe: Recipe, stage: Stage, edge: OPDEdge) -> bool:
        if stage.adaptive_threshold <= 0:
            return True
        return self.cursors[recipe.name].windows.get(edge.label, 0) > 0

    # ------------------------------------------------------------------ one update

    def non_finite_error(self, owner: Owner, what: str) -> NonFiniteError:
        """What update.train_step found (`what`) on one request of this seed, named by its method, branch and edge."""
        method, branch, edge = owner
        if what.startswith("loss"):
            where = f"the OPD loss on edge {edge}" if edge else "the GRPO loss"
            return NonFiniteError(f"{where} {what.removeprefix('loss ')} in method {method!r}, branch {branch!r} "
                                  f"(stopped before this update)")
        return NonFiniteError(f"the update made the weights of branch {branch!r} in method {method!r} NaN or inf "
                              f"(stopped before any forward used them)")

    def _kept(self) -> str:
        if self.checkpoint is None:
            return "nothing was saved (no output folder)"
        if self.checkpoint.exists():
            return f"the last good checkpoint stays at {self.checkpoint}"
        return "no checkpoint had been written yet (the base model's evaluation comes first: no step was taken)"

    def advice(self) -> str:
        """What to try after a NaN or inf: a lower learning rate (the world names its own knob) or a smaller β."""
        return (f"Try a lower learning rate than {self.world.lr_setting} (or a smaller opd.beta), in a new --out or "
                f"with --overwrite.")

    # ------------------------------------------------------------------ measurement

    def measurements(self, tick: int) -> list[GapOf | AccuracyOf | ConflictOf]:
        """The measurements this tick's cadence asks for, in order, in this seed's slots (owners: method names): the
        gap of the recipes measured now, then each live recipe's accuracy and gradient conflict at an eval tick.
        (The adaptive schedule's overlap checks run here at once: they decide which OPD windows open.)"""
        m = self.cfg.metrics
        live = [r for r in self.recipes if self.cursors[r.name].started and not self.cursors[r.name].done]
        for recipe in live:
            cur = self.cursors[recipe.name]
            stage = recipe.stages[cur.stage] if cur.stage < len(recipe.stages) else None
            check = cur.tick % self.cfg.copd.adaptive_check_every == 0
            if stage is not None and stage.adaptive_threshold > 0 and check:
                self._open_windows(recipe, stage, tick)
        evaluate = tick % m.eval_every == 0
        # every recipe at the cadence, else only those at a phase end: a method's rows never depend on the others
        measured = live if tick % m.gap_every == 0 or evaluate else [r for r in live if r.name in self._boundary]
        self._boundary.clear()
        calls: list[GapOf | AccuracyOf | ConflictOf] = []
        if measured:
            calls.append(GapOf(tick, tuple((r.name, self._branch_slots(r), self.gap_pairs[r.name]) for r in measured),
                               evaluate))
        if evaluate and tick > 0:
            for recipe in live:
                branches = self._branch_slots(recipe)
                calls += [AccuracyOf(tick, tuple((recipe.name, b, s) for b, s in branches)),
                          ConflictOf(tick, tuple((recipe.name, b, s) for b, s in branches))]
        return calls

    def _branch_slots(self, recipe: Recipe) -> tuple[tuple[str, int], ...]:
        return tuple((b.name, self.slot(recipe, b.name)) for b in recipe.branches)

    def _open_windows(self, recipe: Recipe, stage: Stage, tick: int) -> None:
        """Adaptive schedule: open an OPD window on an edge whose top-k overlap fell below threshold."""
        cur = self.cursors[recipe.name]
        closed = [e for e in stage.edges if cur.windows.get(e.label, 0) <= 0]
        if not closed:
            return
        pairs = [(self.slot(recipe, e.student), self.teacher_slot(recipe, e)) for e in closed]
        overlap = self.meter.overlap(pairs, recipe.name, [self.domain_index[e.domain] for e in closed])
        for edge, value in zip(closed, overlap):
            if value < stage.adaptive_threshold:
                cur.windows[edge.label] = stage.adaptive_window
                self.book.log(recipe.name, tick, edge.student, edge.label, "opd_window_opened", float(value))

    def _evaluate_outputs(self, method: str, outputs: list[tuple[str, int]], step: int) -> None:
        if outputs:
            self.meter.accuracy(method, outputs, step, final=True)
