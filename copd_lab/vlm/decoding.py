"""Prefix sharing: one forward per distinct prompt, its KV cache copied to the group's G rollouts.

A GRPO group samples G completions of one prompt, and OPD scores them under a teacher: the prompt (and
its image or video tokens) is the same for all G, so it is run once and only the completions run per
rollout. Every row may use its own LoRA adapter (peft's mixed-adapter batches, `adapter_names`), so the
requests of all branches and all teachers of a tick share one forward instead of one per adapter.

Positions are passed explicitly, so a cached prefix and its continuation agree for any model: left-padded
rows count positions from their first real token, Qwen2-VL's M-RoPE positions come from the model's own
`get_rope_index`, and a continuation starts one past the largest prompt position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from copd_lab.vlm.prompts import PromptSet

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed-adapter batch


def sampling_logprobs(logits: torch.Tensor, suppress: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / τ) with the `suppress` ids (vision placeholders) at -inf, in float32: the
    distribution rollouts are sampled from, so scoring with it gives π_old exactly."""
    return (logits.float().index_fill(-1, suppress, -float("inf")) / temperature).log_softmax(-1)


def prompt_positions(model, inputs: dict) -> torch.Tensor:
    """Position ids of left-padded prompt rows: [3, B, L] M-RoPE where the model has it, else [B, L]."""
    mask = inputs["attention_mask"]
    inner = getattr(model, "model", None)
    if hasattr(inner, "get_rope_index") and "mm_token_type_ids" in inputs:
        positions, _ = inner.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                            image_grid_thw=inputs.get("image_grid_thw"),
                                            video_grid_thw=inputs.get("video_grid_thw"), attention_mask=mask)
        return positions
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass
class Prefix:
    """A KV cache of prompt rows, expanded to one row per rollout, ready to be continued."""

    cache: object  # transformers Cache, [B] rows (B = prompts * group)
    logits: torch.Tensor  # [B, V] logits of the next token (after the prompt, then after each extension)
    attention_mask: torch.Tensor  # [B, length so far]
    next_position: torch.Tensor  # [B] position id of the next token


def prefill(model, hf_model, prompts: PromptSet, adapters: list[str], group: int) -> Prefix:
    """Run each prompt row once under its adapter and expand its cache to `group` rollout rows.

    model: the peft model (accepts `adapter_names`); hf_model: the transformers model it wraps.
    adapters: one adapter name per prompt row (BASE_ADAPTER for the base).
    """
    inputs = prompts.inputs()
    positions = prompt_positions(hf_model, inputs)
    out = model(**inputs, position_ids=positions, use_cache=True, logits_to_keep=1, adapter_names=adapters)
    cache = out.cache
    cache.batch_repeat_interleave(group)
    mask = inputs["attention_mask"]
    real = mask.bool() if positions.dim() == 2 else mask.bool()[None].expand_as(positions)
    last = positions.masked_fill(~real, -1).amax(dim=-1)
    last = last if last.dim() == 1 else last.amax(dim=0)
    return Prefix(cache, out.logits[:, -1].repeat_interleave(group, 0), mask.repeat_interleave(group, 0),
                  (last + 1).repeat_interleave(group, 0))


def extend(model, prefix: Prefix, tokens: torch.Tensor, adapters: list[str]) -> torch.Tensor:
    """Feed `tokens` [B, T] after the prefix (updating it in place); return their logits [B, T, V].

    Every fed token is attended to (a completion's tokens after its EOS never precede a kept one).
    """
    rows, length = tokens.shape
    mask = torch.cat([prefix.attention_mask, prefix.attention_mask.new_ones(rows, length)], dim=1)
    positions = prefix.next_position[:, None] + torch.arange(length, device=tokens.device)
    out = model(input_ids=tokens, attention_mask=mask, position_ids=positions, cache=prefix.cache, use_cache=True,
                adapter_names=adapters)
    prefix.attention_mask, prefix.next_position, prefix.logits = mask, prefix.next_position + length, out.logits[:, -1]
    return out.logits


def completion_logits(model, hf_model, prompts: PromptSet, adapters: list[str], group: int,
                      completions: torch.Tensor) -> torch.Tensor:
    """[B, T, V] logits predicting each completion token, B = prompts * group, each prompt run once.

    The logits of token 0 come from the prompt's last position; tokens 0..T-2 are fed to get the rest.
    """
    prefix = prefill(model, hf_model, prompts, adapters, group)
    first = prefix.logits[:, None]
    if completions.shape[1] == 1:
        return first
    row_adapters = [name for name in adapters for _ in range(group)]
    return torch.cat([first, extend(model, prefix, completions[:, :-1], row_adapters)], dim=1)
