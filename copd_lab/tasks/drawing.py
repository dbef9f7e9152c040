"""Pixel helpers shared by the image and video suites: coloured squares on a black 32x32 canvas.

The tiny VLMs see 32x32 pixels in 4x4 patches, so the canvas is an 8x8 grid of 4-pixel cells and a
square is 3x3 pixels drawn at a cell's top-left corner: squares in neighbouring cells never touch
(one pixel of background between them), so they can be counted from the pixels, by a model or a test.
Colours are pure RGB so that the answer is exactly recoverable with numpy equality.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

SIZE = 32  # pixels per side: the tiny VLM's whole pixel budget
CELL = 4  # the VLM's patch size
GRID = SIZE // CELL  # cells per side
SQUARE = 3  # side of a square, in pixels

COLOURS: dict[str, tuple[int, int, int]] = {
    # Short names: they are spelled out in prompts, and tokens are scarce.
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "pink": (255, 0, 255),
    "cyan": (0, 255, 255),
}
WHITE = (255, 255, 255)  # reserved for the video suite's blinking dot; never a square's colour


def blank() -> np.ndarray:
    """A black SIZE x SIZE RGB canvas."""
    return np.zeros((SIZE, SIZE, 3), dtype=np.uint8)


def pick_colours(rng: np.random.Generator, k: int) -> list[str]:
    """k distinct colour names in random order."""
    names = list(COLOURS)
    return [names[i] for i in rng.choice(len(names), size=k, replace=False)]


def draw_square(canvas: np.ndarray, y: int, x: int, colour: tuple[int, int, int]) -> None:
    """A square whose top-left pixel is (y, x)."""
    canvas[y : y + SQUARE, x : x + SQUARE] = colour


def cell_origin(cell: int) -> tuple[int, int]:
    """Top-left pixel of a cell numbered row-major on the GRID x GRID grid."""
    row, col = divmod(int(cell), GRID)
    return row * CELL, col * CELL


def free_cells(canvas: np.ndarray) -> np.ndarray:
    """Numbers of the cells with no drawn pixel, so new squares never overlap old ones."""
    used = canvas.reshape(GRID, CELL, GRID, CELL, 3).any(axis=(1, 3, 4))
    return np.flatnonzero(~used.ravel())


def scatter(
    rng: np.random.Generator, canvas: np.ndarray, colours: Sequence[str], avoid: np.ndarray | None = None
) -> None:
    """One square per entry of ``colours`` (names may repeat), each in its own free random cell;
    cells drawn on in ``avoid`` (e.g. the path of a moving square) count as taken too."""
    cells = rng.choice(
        free_cells(canvas if avoid is None else canvas | avoid), size=len(colours), replace=False
    )
    for cell, name in zip(cells, colours, strict=True):
        draw_square(canvas, *cell_origin(cell), COLOURS[name])


def repeat(counts: dict[str, int]) -> list[str]:
    """``{"red": 2, "blue": 1}`` -> ``["red", "red", "blue"]``: the argument ``scatter`` takes."""
    return [name for name, n in counts.items() for _ in range(int(n))]


def to_png(canvas: np.ndarray) -> dict[str, bytes | None]:
    """PNG bytes in the form datasets' Image feature stores; fast compression, the images are tiny."""
    buffer = io.BytesIO()
    Image.fromarray(canvas).save(buffer, format="PNG", compress_level=1)
    return {"bytes": buffer.getvalue(), "path": None}
