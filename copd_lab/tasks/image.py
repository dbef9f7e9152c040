"""The image suite: the four shared skills asked about one 32x32 picture of coloured squares.

    count    "How many red squares?"                      -> number of red squares
    compare  "Which has more squares? 0=red 1=blue"       -> index of the colour with more squares
    add      "How many red and blue squares in all?"      -> red + blue
    order    "Leftmost square colour? 0=red 1=blue"       -> index of the leftmost square's colour

Difficulty 1..3 raises the counts and adds squares of other colours as distractors (and options).
Answers stay within 0..9.
"""

from __future__ import annotations

import numpy as np

from copd_lab.tasks.base import TaskSuite
from copd_lab.tasks.drawing import (
    COLOURS,
    GRID,
    blank,
    cell_origin,
    draw_square,
    pick_colours,
    repeat,
    scatter,
    to_png,
)
from copd_lab.tasks.generate import Example, addends, generated_suite, options_text

MAX_COUNT = {1: 4, 2: 6, 3: 9}  # most squares of the asked colour


def _distractors(rng: np.random.Generator, names: list[str], most: int) -> dict[str, int]:
    """0..most squares of each distractor colour."""
    return {name: int(rng.integers(0, most + 1)) for name in names}


def _count(rng: np.random.Generator, difficulty: int) -> Example:
    target, *others = pick_colours(rng, 1 + difficulty)
    n = int(rng.integers(0, MAX_COUNT[difficulty] + 1))
    canvas = blank()
    scatter(rng, canvas, repeat({target: n, **_distractors(rng, others, 1 + difficulty)}))
    return f"How many {target} squares?", n, [to_png(canvas)]


def _compare(rng: np.random.Generator, difficulty: int) -> Example:
    first, second, *others = pick_colours(rng, 1 + difficulty)
    counts = rng.choice(MAX_COUNT[difficulty] + 1, size=2, replace=False)  # never a tie
    canvas = blank()
    scatter(rng, canvas, repeat({first: counts[0], second: counts[1], **_distractors(rng, others, 3)}))
    return (
        f"Which has more squares? {options_text([first, second])}",
        int(np.argmax(counts)),
        [to_png(canvas)],
    )


def _add(rng: np.random.Generator, difficulty: int) -> Example:
    first, second, *others = pick_colours(rng, 1 + difficulty)
    a, b = addends(rng, parts=2, most=MAX_COUNT[difficulty])
    canvas = blank()
    scatter(rng, canvas, repeat({first: a, second: b, **_distractors(rng, others, 2)}))
    return f"How many {first} and {second} squares in all?", a + b, [to_png(canvas)]


def _order(rng: np.random.Generator, difficulty: int) -> Example:
    options = pick_colours(rng, 1 + difficulty)
    # Every colour once, plus repeats; each square in its own column so exactly one is leftmost.
    colours = options + [options[i] for i in rng.integers(0, len(options), size=difficulty - 1)]
    columns = rng.choice(GRID, size=len(colours), replace=False)
    rows = rng.integers(0, GRID, size=len(colours))
    canvas = blank()
    for name, row, col in zip(colours, rows, columns, strict=True):
        draw_square(canvas, *cell_origin(row * GRID + col), COLOURS[name])
    leftmost = colours[int(np.argmin(columns))]
    return f"Leftmost square colour? {options_text(options)}", options.index(leftmost), [to_png(canvas)]


_MAKERS = {"count": _count, "compare": _compare, "add": _add, "order": _order}


def make_row(rng: np.random.Generator, skill: str, difficulty: int) -> Example:
    """One image example of the given skill."""
    return _MAKERS[skill](rng, difficulty)


def build(n_train: int, n_eval: int, seed: int, difficulty: int = 1) -> TaskSuite:
    """The image suite (domain and modality "image")."""
    return generated_suite("image", "image", make_row, n_train, n_eval, seed, difficulty)
