"""A batch's prompts as the model needs them: ids, masks and vision features computed once per prompt.

Vision features are computed when the prompts are encoded and travel with them, so generation and every
later re-scoring, under any adapter, skip the vision tower (transformers' `mm_encoder_outputs`). A
request's rollouts share its P distinct prompts: rollout n of a group of G uses prompt n // G.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

VISUALS = ("image", "video")


@dataclass
class PromptSet:
    """Prompt rows ready for the model: left-padded ids and, per row, its precomputed vision features."""

    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    mm_token_type_ids: torch.Tensor  # [B, L]
    grids: dict[str, list[torch.Tensor]]  # "image"/"video" -> per row, [items, 3] grid_thw
    features: dict[str, list[tuple[torch.Tensor, ...]]]  # per row, one feature tensor per item

    def select(self, rows: list[int]) -> PromptSet:
        """These rows (repeats allowed: a group's rollouts share one prompt's features)."""
        index = torch.tensor(rows, dtype=torch.long, device=self.input_ids.device)
        return PromptSet(self.input_ids[index], self.attention_mask[index], self.mm_token_type_ids[index],
                         {k: [v[i] for i in rows] for k, v in self.grids.items()},
                         {k: [v[i] for i in rows] for k, v in self.features.items()})

    @staticmethod
    def cat(sets: list[PromptSet], pad_id: int) -> PromptSet:
        """Rows of all sets, left-padded to the longest prompt."""
        length = max(s.input_ids.shape[1] for s in sets)

        def pad(t: torch.Tensor, value: int) -> torch.Tensor:
            return torch.nn.functional.pad(t, (length - t.shape[1], 0), value=value)

        return PromptSet(torch.cat([pad(s.input_ids, pad_id) for s in sets]),
                         torch.cat([pad(s.attention_mask, 0) for s in sets]),
                         torch.cat([pad(s.mm_token_type_ids, 0) for s in sets]),
                         {k: [g for s in sets for g in s.grids[k]] for k in VISUALS},
                         {k: [f for s in sets for f in s.features[k]] for k in VISUALS})

    def inputs(self) -> dict:
        """Model kwargs; vision enters as `mm_encoder_outputs`, so the vision tower does not run again."""
        out = dict(input_ids=self.input_ids, attention_mask=self.attention_mask,
                   mm_token_type_ids=self.mm_token_type_ids)
        encoded = {}
        for kind in VISUALS:
            features = [f for row in self.features[kind] for f in row]
            if features:
                out[f"{kind}_grid_thw"] = torch.cat([g for g in self.grids[kind] if len(g)])
                encoded[kind] = BaseModelOutputWithPooling(pooler_output=tuple(features))
        if encoded:
            out["mm_encoder_outputs"] = encoded
        return out


@dataclass
class VLMPayload:
    """What re-scoring needs: each request's distinct prompts, the group size and the temperature."""

    prompts: list[PromptSet]  # per request, its P distinct prompts (rollout n uses prompt n // group)
    group: int
    temperature: float

    def take(self, rows: list[int]) -> VLMPayload:
        return VLMPayload([self.prompts[i] for i in rows], self.group, self.temperature)

    def expanded(self, r: int) -> PromptSet:
        """Request r's prompts, one row per rollout."""
        p = self.prompts[r]
        return p.select([i for i in range(p.input_ids.shape[0]) for _ in range(self.group)])
