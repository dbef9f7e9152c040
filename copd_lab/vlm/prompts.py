"""A batch's prompts as the model needs them: ids, masks and vision features computed once per prompt.

Vision features are computed when the prompts are encoded and travel with them, so generation and every
later re-scoring, under any adapter, skip the vision tower (transformers' `mm_encoder_outputs`). A
request's rollouts share its P distinct prompts: rollout n of a group of G uses prompt n // G.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling


@dataclass
class PromptSet:
    """Prompt rows ready for the model: left-padded ids and, per row, its positions and precomputed vision
    features. Which per-token and per-item inputs there are is the model family's (families.py)."""

    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    position_ids: torch.Tensor  # [B, L], or [B, 3, L] for M-RoPE; counted from each row's first real token
    token_inputs: dict[str, torch.Tensor]  # per-token inputs, [B, L] each (Qwen2-VL: mm_token_type_ids)
    item_inputs: dict[str, list[torch.Tensor]]  # per row, one row per image/video (Qwen2-VL: image_grid_thw)
    features: dict[str, list[tuple[torch.Tensor, ...]]]  # visual kind -> per row, one feature tensor per item

    def select(self, rows: list[int]) -> PromptSet:
        """These rows (repeats allowed: a group's rollouts share one prompt's features)."""
        index = torch.tensor(rows, dtype=torch.long, device=self.input_ids.device)
        return PromptSet(self.input_ids[index], self.attention_mask[index], self.position_ids[index],
                         {k: v[index] for k, v in self.token_inputs.items()},
                         {k: [v[i] for i in rows] for k, v in self.item_inputs.items()},
                         {k: [v[i] for i in rows] for k, v in self.features.items()})

    @staticmethod
    def cat(sets: list[PromptSet], pad_id: int) -> PromptSet:
        """Rows of all sets, left-padded to the longest prompt (real tokens keep their positions)."""
        length = max(s.input_ids.shape[1] for s in sets)

        def pad(t: torch.Tensor, value: int) -> torch.Tensor:
            return torch.nn.functional.pad(t, (length - t.shape[-1], 0), value=value)

        first = sets[0]
        return PromptSet(torch.cat([pad(s.input_ids, pad_id) for s in sets]),
                         torch.cat([pad(s.attention_mask, 0) for s in sets]),
                         torch.cat([pad(s.position_ids, 0) for s in sets]),
                         {k: torch.cat([pad(s.token_inputs[k], 0) for s in sets]) for k in first.token_inputs},
                         {k: [g for s in sets for g in s.item_inputs[k]] for k in first.item_inputs},
                         {k: [f for s in sets for f in s.features[k]] for k in first.features})

    def inputs(self, positions: bool = True) -> dict:
        """Model kwargs; vision enters as `mm_encoder_outputs`, so the vision tower does not run again.

        positions=False leaves the position ids to the model (transformers' generate makes its own).
        """
        out = dict(input_ids=self.input_ids, attention_mask=self.attention_mask, **self.token_inputs)
        if positions:
            out["position_ids"] = self.position_ids.movedim(0, -2)  # the model's layout: [B, L] or [3, B, L]
        for name, rows in self.item_inputs.items():
            if any(len(r) for r in rows):
                out[name] = torch.cat([r for r in rows if len(r)])
        encoded = {kind: BaseModelOutputWithPooling(pooler_output=tuple(f for row in rows for f in row))
                   for kind, rows in self.features.items() if any(rows)}
        if encoded:
            out["mm_encoder_outputs"] = encoded
        return out

    def next_positions(self) -> torch.Tensor:
        """[B] position of the first token after each prompt: one past its largest position."""
        positions = self.position_ids if self.position_ids.dim() == 2 else self.position_ids.amax(1)
        return positions.masked_fill(self.attention_mask == 0, -1).amax(-1) + 1


@dataclass
class VLMPayload:
    """What re-scoring needs: each request's distinct prompts, the group size and the temperature."""

    prompts: list[PromptSet]  # per request, its P distinct prompts (rollout n uses prompt n // group)
    group: int
    temperature: float
    layouts: list[tuple] = ()  # per request, (domain, row) of each distinct prompt: what encodes them again elsewhere
    split: str = "train"  # the suites' split the rows index

    def take(self, rows: list[int]) -> VLMPayload:
        layouts = [self.layouts[i] for i in rows] if self.layouts else ()
        return VLMPayload([self.prompts[i] for i in rows], self.group, self.temperature, layouts, self.split)

    def expanded(self, r: int) -> PromptSet:
        """Request r's prompts, one row per rollout."""
        p = self.prompts[r]
        return p.select([i for i in range(p.input_ids.shape[0]) for _ in range(self.group)])
