"""Mixed-adapter LoRA forward over contiguous runs of rows: peft's result, without its per-row indexing.

peft's mixed-adapter batches (`adapter_names`) gather each adapter's rows with a Python list per layer,
copy them out (`x[rows]`) and scatter the LoRA output back (`result[rows] += ...`): on a tiny model that
indexing costs a seventh of a CoPD tick. copd_lab's batches keep each slot's rows together (one request
after another, a prompt's rollouts side by side), so each adapter's rows are a slice: a view to read and
a piece to concatenate. The runs are found once per forward (every layer receives the same list object
from peft's pre-forward hook) and any order of names stays correct, only with more runs.
"""

from __future__ import annotations

from functools import partial

import torch
from peft.tuners.lora.layer import VARIANT_KWARG_KEYS


class NameRuns:
    """(name, start, stop) for each maximal run of equal consecutive names; cached for the last list seen."""

    def __init__(self):
        self.names: list[str] | None = None
        self.runs: list[tuple[str, int, int]] = []

    def __call__(self, names: list[str]) -> list[tuple[str, int, int]]:
        if names is not self.names:
            runs, start = [], 0
            for i in range(1, len(names) + 1):
                if i == len(names) or names[i] != names[start]:
                    runs.append((names[start], start, i))
                    start = i
            self.names, self.runs = names, runs
        return self.runs


def runs_forward(layer, runs: NameRuns, x: torch.Tensor, *args, adapter_names: list[str], **kwargs) -> torch.Tensor:
    """What peft's `Linear._mixed_batch_forward` returns for vanilla LoRA, computed run by run."""
    if any(name in layer.lora_variant for name, _, _ in runs(adapter_names)):  # DoRA etc.: peft's own path
        return type(layer)._mixed_batch_forward(layer, x, *args, adapter_names=adapter_names, **kwargs)
    kwargs = {k: v for k, v in kwargs.items() if k not in VARIANT_KWARG_KEYS}
    result = layer.base_layer(x, *args, **kwargs)
    pieces = []
    for name, start, stop in runs(adapter_names):
        piece = result[start:stop]
        if name in layer.lora_A:
            lora_a, lora_b = layer.lora_A[name], layer.lora_B[name]
            part = x[start:stop].to(lora_a.weight.dtype)
            piece = piece + (lora_b(lora_a(layer.lora_dropout[name](part))) * layer.scaling[name]).to(result.dtype)
        pieces.append(piece)
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def use_runs_forward(layers) -> None:
    """Route the mixed-adapter batches of these peft LoRA `Linear` layers through `runs_forward`
    (adapters with a variant, such as DoRA, still take peft's path)."""
    runs = NameRuns()
    for layer in layers:
        layer._mixed_batch_forward = partial(runs_forward, layer, runs)
