"""Tidy metric rows (run, method, seed, step, branch, pair, metric, value) and their compact checkpoint form."""

from __future__ import annotations

import torch

ROW_COLUMNS = ("run", "method", "seed", "step", "branch", "pair", "metric", "value")


def pack_rows(rows: list[dict]) -> dict:
    """Tidy rows as a checkpoint stores them: numbers as tensors, strings as codes into a name list.

    Thousands of small dicts pickle slowly; a few tensors save in a blink and load back exactly.
    """
    packed: dict = {"seed": torch.tensor([r["seed"] for r in rows], dtype=torch.int64),
                    "step": torch.tensor([r["step"] for r in rows], dtype=torch.int64),
                    "value": torch.tensor([r["value"] for r in rows], dtype=torch.float64)}
    for col in ("run", "method", "branch", "pair", "metric"):
        values = [r[col] for r in rows]
        names = list(dict.fromkeys(values))
        code = {name: i for i, name in enumerate(names)}
        packed[col] = {"names": names, "codes": torch.tensor([code[v] for v in values], dtype=torch.int64)}
    return packed


def unpack_rows(packed: dict) -> list[dict]:
    """Tidy rows back from `pack_rows`."""
    columns = {col: (packed[col].tolist() if isinstance(packed[col], torch.Tensor)
                     else [packed[col]["names"][i] for i in packed[col]["codes"].tolist()]) for col in ROW_COLUMNS}
    return [dict(zip(ROW_COLUMNS, values)) for values in zip(*(columns[c] for c in ROW_COLUMNS))]
