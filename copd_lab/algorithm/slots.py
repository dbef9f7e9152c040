"""Names of a run's weight slots: one key type, built and read here only.

A world numbers its slots (copd_lab.world); the algorithm names them. Slot 0 is the shared base π_0 (`BASE`);
every other slot is a branch of a recipe, the merged model of a recipe (branch `MERGED`), or a frozen snapshot of
a branch, taken when a stage whose teachers are frozen starts. Another recipe's branch is named by its key too:
static OPD and MOPD start from the experts' branches and are taught by them. `str(key)` is the text form rows,
checkpoints and messages carry ("copd/text", "copd/text#frozen", "@base").
"""

from __future__ import annotations

from dataclasses import dataclass

MERGED = "merged"  # the branch name of a recipe's merged model


@dataclass(frozen=True)
class SlotKey:
    recipe: str  # the method's name, e.g. "copd" ("" for the base)
    branch: str  # a branch of the recipe, or MERGED
    frozen: bool = False  # a snapshot of the branch, scored as a frozen teacher

    def __str__(self) -> str:
        if self == BASE:
            return "@base"
        return f"{self.recipe}/{self.branch}" + ("#frozen" if self.frozen else "")


BASE = SlotKey("", "")  # the shared base model π_0, never trained: slot 0
