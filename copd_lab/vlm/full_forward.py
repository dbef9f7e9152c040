"""Rows of several full-weight slots in one call, with the contract decoding.py expects of a peft model.

decoding.py calls `model(**inputs, adapter_names=[...], cache=...)` (the cache's name: `decoding.CACHE`) with
every row under its own slot, then copies each prompt row's cache to its rollout rows (`batch_select_indices`)
and continues it. peft serves such mixed batches for LoRA; full copies share no base weights to batch over, so
`SlotModel` splits the rows by slot, runs one forward per slot with that slot's weights swapped in by
`torch.func.functional_call` (no copy into the module, and autograd reaches the slot's own tensors), and
returns the logits in row order with a `SlotCache`: one transformers cache per slot and the batch rows it
holds, so a continuation splits the same way.

Vision features arrive precomputed (`mm_encoder_outputs`: one tensor per image or video, in the order
their placeholder tokens appear row by row, as the model scatters them), so a slot's sub-batch gets the
items of its rows, found by counting each row's placeholder tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.func import functional_call
from transformers.modeling_outputs import BaseModelOutputWithPooling

from copd_lab.vlm.decoding import CACHE
from copd_lab.vlm.families import Family


class SlotCache:
    """One transformers cache per slot name, with the rows of the whole batch it holds, in its row order."""

    def __init__(self, parts: dict[str, tuple[torch.Tensor, object]]):
        self.parts = parts

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Row j becomes a copy of row indices[j], as in one cache of the whole batch."""
        size = sum(len(rows) for rows, _ in self.parts.values())
        indices, parts = indices.cpu(), {}
        for name, (rows, cache) in self.parts.items():
            local = torch.full((size,), -1, dtype=torch.long)
            local[rows.cpu()] = torch.arange(len(rows))
            picked = local[indices]
            keep = picked >= 0
            if keep.any():  # a slot none of whose rows is kept drops out of the continuation
                cache.batch_select_indices(picked[keep].to(rows.device))
                parts[name] = (keep.nonzero().squeeze(1).to(rows.device), cache)
        self.parts = parts


@dataclass
class SlotOutput:
    logits: torch.Tensor  # [B, T, V] in the call's row order
    cache: SlotCache

    @property
    def past_key_values(self) -> SlotCache:  # the cache's name in older transformers (decoding.CACHE)
        return self.cache


class SlotModel:
    """Callable like a peft model with mixed adapters: `adapter_names` picks each row's slot weights."""

    def __init__(self, model, weights: Callable[[str], dict[str, torch.Tensor] | None], family: Family):
        """weights: slot name -> {parameter name: tensor} to swap in (None: the module's own weights)."""
        self.model, self.weights = model, weights
        self.item_inputs = family.item_inputs
        self.placeholder_ids = {kind: family.placeholder_id(model, kind) for kind in family.pixels}

    def __call__(self, *, adapter_names: list[str], **inputs) -> SlotOutput:
        cache: SlotCache | None = inputs.pop(CACHE, None)
        if cache is None:
            names = list(dict.fromkeys(adapter_names))
            parts = {n: (torch.tensor([i for i, a in enumerate(adapter_names) if a == n]), None) for n in names}
        else:
            parts = cache.parts
            for name, (rows, _) in parts.items():
                if any(adapter_names[i] != name for i in rows.tolist()):
                    raise ValueError(f"rows of a cache made under {name!r} are continued under other slots")
        items = self._item_rows(inputs)
        logits, out_parts = [], {}
        for name, (rows, part_cache) in parts.items():
            sub = self._select(inputs, items, rows.to(inputs["input_ids"].device))
            weights = self.weights(name)
            if weights is None:
                out = self.model(**sub, **{CACHE: part_cache})
            else:  # tie_weights: a tied LM head follows the swapped embedding
                out = functional_call(self.model, weights, args=(), kwargs={**sub, CACHE: part_cache},
                                      tie_weights=True, strict=False)
            logits.append(out.logits)
            out_parts[name] = (rows, getattr(out, CACHE))
        order = torch.cat([rows for rows, _ in parts.values()]).to(logits[0].device)
        return SlotOutput(torch.cat(logits).index_select(0, torch.argsort(order)), SlotCache(out_parts))

    def _item_rows(self, inputs: dict) -> dict[str, list[int]]:
        """Per visual kind in the inputs, the batch row of each of its items (images or videos)."""
        out = {}
        for kind, encoded in inputs.get("mm_encoder_outputs", {}).items():
            lengths = torch.tensor([f.shape[0] for f in encoded.pooler_output])
            starts = lengths.cumsum(0) - lengths  # first placeholder (flat, row by row) of each item
            row_ends = (inputs["input_ids"] == self.placeholder_ids[kind]).sum(1).cumsum(0).cpu()
            out[kind] = torch.searchsorted(row_ends, starts, right=True).tolist()
        return out

    def _select(self, inputs: dict, items: dict[str, list[int]], rows: torch.Tensor) -> dict:
        """The inputs of these batch rows: per-row tensors indexed on their batch dim, per-item ones by owner."""
        item_names = {name: kind for kind, names in self.item_inputs.items() for name in names}
        wanted = rows.tolist()
        out, encoded = {}, {}
        for kind, owners in items.items():
            keep = [i for row in wanted for i, owner in enumerate(owners) if owner == row]
            if not keep:
                continue
            features = inputs["mm_encoder_outputs"][kind].pooler_output
            encoded[kind] = BaseModelOutputWithPooling(pooler_output=tuple(features[i] for i in keep))
            for name in self.item_inputs[kind]:
                if name in inputs:
                    out[name] = inputs[name][torch.tensor(keep, device=inputs[name].device)]
        if encoded:
            out["mm_encoder_outputs"] = encoded
        for name, value in inputs.items():
            if name in item_names or name == "mm_encoder_outputs":
                continue
            # per-row tensors have the batch on dim -2: [B, L], or M-RoPE positions [3, B, L]
            out[name] = value.index_select(-2, rows) if isinstance(value, torch.Tensor) else value
        return out
