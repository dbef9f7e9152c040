"""Deterministic, skill-balanced generation of a built-in suite's train and eval splits from one seed."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any

import datasets
import numpy as np

from copd_lab.tasks.base import SKILLS, TaskSuite, make_dataset
from copd_lab.tasks.verify import answer_reward

DIFFICULTIES = (1, 2, 3)

# make_row(rng, skill, difficulty) -> (prompt, answer, images as to_png dicts)
Example = tuple[str, int, list[Any]]
RowMaker = Callable[[np.random.Generator, str, int], Example]


def options_text(labels: Sequence[str]) -> str:
    """``["red", "blue"]`` -> ``"0=red 1=blue"``: options are answered by index, so answers stay integers."""
    return " ".join(f"{i}={label}" for i, label in enumerate(labels))


def addends(rng: np.random.Generator, parts: int, most: int, budget: int = 9) -> list[int]:
    """``parts`` integers in 0..most whose sum is uniform over 0..min(budget, parts * most).

    Drawing the sum first keeps the answers of "add" tasks evenly spread, so a model cannot score by
    always guessing the largest sum (drawing each addend in turn skews the sum towards the budget)."""
    total = int(rng.integers(0, min(budget, parts * most) + 1))
    values, remaining = [], total
    for later in range(parts - 1, 0, -1):  # leave the ``later`` parts enough room, each <= most
        values.append(int(rng.integers(max(0, remaining - later * most), min(most, remaining) + 1)))
        remaining -= values[-1]
    values.append(remaining)
    return [values[i] for i in rng.permutation(parts)]  # no part is systematically the larger


def split_seeds(seed: int, domain: str) -> tuple[np.random.SeedSequence, np.random.SeedSequence]:
    """Train and eval seed streams: sibling children of one root, so they are disjoint by construction
    and the eval split stays the same whatever n_train is. The domain is mixed in so that suites built
    with the same seed do not draw correlated numbers."""
    root = np.random.SeedSequence([seed, zlib.crc32(domain.encode())])
    train, held_out = root.spawn(2)
    return train, held_out


def generate_split(
    make_row: RowMaker, n: int, seed: np.random.SeedSequence, difficulty: int
) -> datasets.Dataset:
    """n rows with the skills as balanced as n allows, in random order."""
    rng = np.random.default_rng(seed)
    skills = rng.permutation(np.resize(np.arange(len(SKILLS)), n))
    rows = []
    for index in skills:
        prompt, answer, images = make_row(rng, SKILLS[index], difficulty)
        rows.append(
            {
                "prompt": prompt,
                "answer": str(answer),
                "skill": SKILLS[index],
                "difficulty": difficulty,
                "images": images,
            }
        )
    return make_dataset(rows)


def _check_int(name: str, value: Any, allowed: str, low: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def generated_suite(
    domain: str, modality: str, make_row: RowMaker, n_train: int, n_eval: int, seed: int, difficulty: int
) -> TaskSuite:
    """A TaskSuite scored by ``answer_reward`` whose rows come from ``make_row``."""
    _check_int("n_train", n_train, "an integer >= 0")
    _check_int("n_eval", n_eval, "an integer >= 0")
    _check_int("seed", seed, "an integer >= 0")
    if difficulty not in DIFFICULTIES or isinstance(difficulty, bool):
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
    train_seed, eval_seed = split_seeds(int(seed), domain)
    return TaskSuite(
        domain=domain,
        modality=modality,
        train=generate_split(make_row, int(n_train), train_seed, difficulty),
        eval=generate_split(make_row, int(n_eval), eval_seed, difficulty),
        verifier=answer_reward,
    )
