"""The video suite: the four shared skills asked about a clip of 4 frames of 32x32 coloured squares.

    count    "How many frames show the white dot?"        -> frames in which the white dot is lit (0..4)
    compare  "Does the red square move? 0=left 1=right"   -> its direction, first frame against last
    add      "Sum of red squares in frames 1 and 3?"      -> red in frame 1 + red in frame 3
    order    "Which appears first? 0=red 1=blue"          -> index of the colour that appears earliest

Difficulty 1..3 adds static and moving distractors, shrinks the motion (4, 2 then 1 pixel a frame),
raises the counts and adds options. Frames are numbered from 1 in prompts.
"""

from __future__ import annotations

import numpy as np

from copd_lab.tasks.base import TaskSuite
from copd_lab.tasks.drawing import (
    CELL,
    COLOURS,
    GRID,
    SIZE,
    SQUARE,
    WHITE,
    blank,
    cell_origin,
    draw_square,
    free_cells,
    pick_colours,
    repeat,
    scatter,
    to_png,
)
from copd_lab.tasks.generate import Example, addends, generated_suite, options_text

FRAMES = 4
STEP = {1: 4, 2: 2, 3: 1}  # pixels a moving square travels per frame
MAX_COUNT = {1: 4, 2: 5, 3: 6}  # most squares of the asked colour in one frame


def _count(rng: np.random.Generator, difficulty: int) -> Example:
    background = blank()
    scatter(rng, background, pick_colours(rng, 2 * (difficulty - 1)))
    dot, blinker = rng.choice(free_cells(background), size=2, replace=False)
    lit = set(rng.choice(FRAMES, size=int(rng.integers(0, FRAMES + 1)), replace=False).tolist())
    blinker_colour = COLOURS[pick_colours(rng, 1)[0]]
    frames = []
    for t in range(FRAMES):
        frame = background.copy()
        if t in lit:
            draw_square(frame, *cell_origin(dot), WHITE)
        if difficulty == 3 and rng.random() < 0.5:  # a coloured square blinking on its own
            draw_square(frame, *cell_origin(blinker), blinker_colour)
        frames.append(to_png(frame))
    return "How many frames show the white dot?", len(lit), frames


def _positions(rng: np.random.Generator, direction: int, step: int) -> list[int]:
    """x of a square moving ``step`` pixels a frame, left (0) or right (1), staying on the canvas."""
    travel = (FRAMES - 1) * step
    start = int(rng.integers(0, SIZE - SQUARE - travel + 1))
    xs = [start + t * step for t in range(FRAMES)]
    return xs if direction == 1 else xs[::-1]


def _compare(rng: np.random.Generator, difficulty: int) -> Example:
    target, other, *statics = pick_colours(rng, 2 + 2 * (difficulty - 1))
    direction = int(rng.integers(0, 2))
    rows = rng.choice(GRID, size=2, replace=False) * CELL
    movers = [(target, int(rows[0]), _positions(rng, direction, STEP[difficulty]))]
    if difficulty == 3:  # a second square moving the other way
        movers.append((other, int(rows[1]), _positions(rng, 1 - direction, STEP[difficulty])))
    path = blank()
    for name, y, xs in movers:
        for x in xs:
            draw_square(path, y, x, COLOURS[name])
    background = blank()
    scatter(rng, background, statics, avoid=path)
    frames = []
    for t in range(FRAMES):
        frame = background.copy()
        for name, y, xs in movers:
            draw_square(frame, y, xs[t], COLOURS[name])
        frames.append(to_png(frame))
    return f"Does the {target} square move? {options_text(['left', 'right'])}", direction, frames


def _add(rng: np.random.Generator, difficulty: int) -> Example:
    target, *others = pick_colours(rng, difficulty)
    most = MAX_COUNT[difficulty]
    first, second = sorted(rng.choice(FRAMES, size=2, replace=False).tolist())
    counts = rng.integers(0, most + 1, size=FRAMES)
    counts[first], counts[second] = addends(rng, parts=2, most=most)
    frames = []
    for t in range(FRAMES):
        frame = blank()
        scatter(rng, frame, repeat({target: counts[t], **{name: rng.integers(0, 3) for name in others}}))
        frames.append(to_png(frame))
    prompt = f"Sum of {target} squares in frames {first + 1} and {second + 1}?"
    return prompt, int(counts[first] + counts[second]), frames


def _order(rng: np.random.Generator, difficulty: int) -> Example:
    colours = pick_colours(rng, 1 + difficulty)  # in order of appearance
    appear = sorted(rng.choice(FRAMES, size=len(colours), replace=False).tolist())
    cells = rng.choice(GRID * GRID, size=len(colours), replace=False)
    frames = []
    for t in range(FRAMES):
        frame = blank()
        for name, start, cell in zip(colours, appear, cells, strict=True):
            if t >= start:  # once a square appears it stays
                draw_square(frame, *cell_origin(cell), COLOURS[name])
        frames.append(to_png(frame))
    options = [colours[i] for i in rng.permutation(len(colours))]
    return f"Which appears first? {options_text(options)}", options.index(colours[0]), frames


_MAKERS = {"count": _count, "compare": _compare, "add": _add, "order": _order}


def make_row(rng: np.random.Generator, skill: str, difficulty: int) -> Example:
    """One video example of the given skill."""
    return _MAKERS[skill](rng, difficulty)


def build(n_train: int, n_eval: int, seed: int, difficulty: int = 1) -> TaskSuite:
    """The video suite (domain and modality "video"), FRAMES frames a row."""
    return generated_suite("video", "video", make_row, n_train, n_eval, seed, difficulty)
