"""When each recipe runs and where its weights live: recipe spans on the run's ticks, cursors, slots.

Pure functions of the recipes (no world): the trainer steps through them, and a caller that needs a run's
slot count or schedule (seeds side by side, the playground's timeline) reads them without a trainer.
"""

from __future__ import annotations

import dataclasses

from copd_lab.algorithm.recipes import OPDEdge, Recipe
from copd_lab.algorithm.slots import BASE, MERGED, SlotKey


@dataclasses.dataclass
class Cursor:
    """Where a recipe is in its stages."""

    stage: int = 0
    tick: int = 0  # ticks done in the current stage
    started: bool = False
    done: bool = False
    windows: dict[str, int] = dataclasses.field(default_factory=dict)  # adaptive: edge -> ticks left


def timeline(recipes: list[Recipe]) -> dict[str, tuple[int, int]]:
    """(start tick, end tick) of every recipe when each starts as soon as its requirements end."""
    spans: dict[str, tuple[int, int]] = {}
    for recipe in recipes:  # prerequisites come first
        start = max((spans[r][1] for r in recipe.requires), default=0)
        spans[recipe.name] = (start, start + sum(s.steps for s in recipe.stages))
    return spans


def allocate_slots(recipes: list[Recipe]) -> dict[SlotKey, int]:
    """slot 0 = base; one slot per branch, per merged model and per frozen snapshot of a teacher."""
    slots = {BASE: 0}
    for recipe in recipes:
        for branch in recipe.branches:
            slots[SlotKey(recipe.name, branch.name)] = len(slots)
        if recipe.merge is not None:
            slots[SlotKey(recipe.name, MERGED)] = len(slots)
        for stage in recipe.stages:
            for edge in stage.edges:
                if edge.snapshots:
                    slots.setdefault(SlotKey(recipe.name, edge.teacher, frozen=True), len(slots))
    return slots


def slot_of(slots: dict[SlotKey, int], recipe: Recipe, name: str | SlotKey) -> int:
    """The slot of a branch of `recipe` (or MERGED), or of a key (BASE, another recipe's branch)."""
    return slots[name if isinstance(name, SlotKey) else SlotKey(recipe.name, name)]


def teacher_slot_of(slots: dict[SlotKey, int], recipe: Recipe, edge: OPDEdge) -> int:
    """The slot an edge's teacher is scored with: another recipe's branch, the live branch, or its snapshot."""
    if edge.snapshots:
        return slots[SlotKey(recipe.name, edge.teacher, frozen=True)]
    return slot_of(slots, recipe, edge.teacher)
