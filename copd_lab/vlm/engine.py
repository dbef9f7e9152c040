"""The rollout engine: the one seam between the VLM world and whatever generates completions.

The world prepares model inputs (prompt ids and precomputed vision features, one row per rollout)
and activates the adapter; an engine turns them into completion ids. `HFGenerateEngine` calls
transformers' `generate`; a vLLM engine (multi-LoRA serving) can implement the same protocol later.
"""

from __future__ import annotations

from typing import Protocol

import torch


class RolloutEngine(Protocol):
    def generate(self, model, inputs: dict, *, adapter: str | None, temperature: float, greedy: bool,
                 max_new_tokens: int) -> torch.Tensor:
        """[B, T] completion ids of the B input rows under `adapter` (None = the base), padded after EOS."""


class HFGenerateEngine:
    """transformers `generate` with pure sampling (no top-k/top-p), so the policy's log-probs are those
    of the distribution sampled; `suppress` ids (vision placeholders) are never sampled.

    The caller has already activated `adapter` on `model`; an engine that serves several adapters
    at once (vLLM) would use the name instead.
    """

    def __init__(self, suppress: list[int], eos: list[int], pad: int):
        self.suppress, self.eos, self.pad = suppress, eos, pad

    def generate(self, model, inputs: dict, *, adapter: str | None, temperature: float, greedy: bool,
                 max_new_tokens: int) -> torch.Tensor:
        sampling = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=temperature,
                                                              top_k=0, top_p=1.0)
        out = model.generate(**inputs, **sampling, max_new_tokens=max_new_tokens,
                             suppress_tokens=self.suppress, eos_token_id=self.eos, pad_token_id=self.pad)
        return out[:, inputs["input_ids"].shape[1]:]
