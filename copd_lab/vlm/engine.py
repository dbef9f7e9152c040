"""Rollout engines: the one seam between the VLM world and whatever generates completions.

The world hands an engine a batch's distinct prompts (ids and precomputed vision features), one adapter
name per prompt and the group size G; the engine returns G completions per prompt and the log-prob of
each sampled token under the distribution it was drawn from (temperature applied, vision placeholders
suppressed), so the world needs no extra forward for GRPO's π_old. Both run the rows of all adapters in
one batch (peft's mixed-adapter batches). The cached engine draws each row's noise from the generator the
world gives its rows (one per random stream: a method's rollouts do not depend on the other methods'
rows in the batch, up to float rounding); transformers' generate draws every row from torch's global RNG.

* `CachedEngine` (default): each prompt is run once and its KV cache copied to its G rollouts
  (decoding.py), then a plain sampling loop over all rows.
* `HFGenerateEngine`: transformers' `generate` on one row per rollout (the prompt prefill repeated G
  times): the reference the cached engine is tested against, and the baseline in benchmarks/vlm_speed.py.
* `VLLMEngine` (vllm_engine.py, `engine = "vllm"`): one vLLM engine serving every slot as a LoRA adapter;
  sampled from vLLM's seeded generators, one seed per prompt from its request's stream.
"""

from __future__ import annotations

from typing import Protocol

import torch

from copd_lab.vlm.decoding import extend, prefill, sampling_logprobs
from copd_lab.vlm.prompts import PromptSet

# (rows, generator) in row order: the next `rows` rollout rows draw their sampling noise from `generator`
RowNoise = list[tuple[int, torch.Generator]]


class RolloutEngine(Protocol):
    def generate(self, model, prompts: PromptSet, adapters: list[str], group: int, *,
                 temperature: float, greedy: bool, max_new_tokens: int,
                 noise: RowNoise) -> tuple[torch.Tensor, torch.Tensor]:
        """([P*G, T] completion ids, padded after EOS; [P*G, T] their sampling log-probs), rollout n of
        prompt n // G, under adapters[n // G] of the peft model `model` (mixed-adapter batches).
        noise: where each row's sampling randomness comes from."""


def gumbel_sample(logp: torch.Tensor, noise: RowNoise, rows: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row from softmax(logp): the Gumbel-max trick with each row's uniforms drawn from its
    own generator (exactly a categorical draw).

    rows: which rows of `noise` the rows of logp are (the rows still running); every row's uniforms are drawn
    all the same, so a row's draws do not depend on when the rows beside it finished."""
    # generators live on logp's device (the world makes them there): no host-to-device copy per token
    uniform = torch.cat([torch.rand((n, logp.shape[-1]), generator=g, device=g.device) for n, g in noise])
    if rows is not None:
        uniform = uniform.index_select(0, rows)
    return (logp - (-uniform.log()).log()).argmax(-1)


class _Sampling:
    """What both engines share: the ids never to sample (vision placeholders), EOS and pad."""

    def __init__(self, suppress: list[int], eos: list[int], pad: int):
        self.suppress, self.eos, self.pad = suppress, eos, pad

    def log_distribution(self, logits: torch.Tensor, temperature: float) -> torch.Tensor:
        return sampling_logprobs(logits, torch.tensor(self.suppress, device=logits.device), temperature)


class CachedEngine(_Sampling):
    """Prefill each distinct prompt once, expand its KV cache to the group, sample token by token; rows that
    have finished (EOS) leave the batch once a quarter of it has (their cache rows dropped), so a step costs
    the rows still running, not the longest completion's."""

    drop_finished_at = 0.25  # share of the running rows that must have finished before they are dropped

    def generate(self, model, prompts: PromptSet, adapters: list[str], group: int, *,
                 temperature: float, greedy: bool, max_new_tokens: int,
                 noise: RowNoise) -> tuple[torch.Tensor, torch.Tensor]:
        prefix = prefill(model, prompts, adapters, group)
        row_adapters = [name for name in adapters for _ in range(group)]
        device = prefix.logits.device
        eos = torch.tensor(self.eos, device=device)
        n = prefix.logits.shape[0]
        running = torch.arange(n, device=device)  # the rows of the batch still in the cache, in order
        done = torch.zeros(n, dtype=torch.bool, device=device)  # of the running rows
        tokens = torch.full((n, max_new_tokens), self.pad, dtype=torch.long, device=device)
        logprobs = torch.zeros((n, max_new_tokens), device=device)
        for step in range(max_new_tokens):
            logp = self.log_distribution(prefix.logits, temperature)
            token = logp.argmax(-1) if greedy else gumbel_sample(logp, noise, running if len(running) < n else None)
            token = token.masked_fill(done, self.pad)
            tokens[running, step] = token
            logprobs[running, step] = logp.gather(-1, token[:, None]).squeeze(-1)
            done |= torch.isin(token, eos)
            finished = int(done.sum())
            if finished == len(running) or step == max_new_tokens - 1:
                return tokens[:, : step + 1], logprobs[:, : step + 1]
            if finished >= self.drop_finished_at * len(running):  # drop the finished rows from the cache and batch
                keep = (~done).nonzero().squeeze(1)
                prefix.cache.batch_select_indices(keep)
                prefix.attention_mask, prefix.next_position = prefix.attention_mask[keep], prefix.next_position[keep]
                running, token, done = running[keep], token[keep], done[keep]
                row_adapters = [row_adapters[i] for i in keep.tolist()]
            extend(model, prefix, token[:, None], row_adapters)
        return tokens, logprobs


class HFGenerateEngine(_Sampling):
    """transformers `generate` with pure sampling (no top-k/top-p) on one row per rollout."""

    def generate(self, model, prompts: PromptSet, adapters: list[str], group: int, *,
                 temperature: float, greedy: bool, max_new_tokens: int,
                 noise: RowNoise) -> tuple[torch.Tensor, torch.Tensor]:
        """`noise` is ignored: generate samples every row from torch's global RNG."""
        rows = prompts.select([i for i in range(prompts.input_ids.shape[0]) for _ in range(group)])
        inputs = rows.inputs(positions=False)
        sampling = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=temperature, top_k=0,
                                                              top_p=1.0)
        out = model.generate(**inputs, **sampling, max_new_tokens=max_new_tokens, suppress_tokens=self.suppress,
                             eos_token_id=self.eos, pad_token_id=self.pad, output_logits=True,
                             return_dict_in_generate=True,
                             adapter_names=[name for name in adapters for _ in range(group)])
        ids = out.sequences[:, inputs["input_ids"].shape[1]:]
        logp = self.log_distribution(torch.stack(out.logits, 1), temperature)
        return ids, logp.gather(-1, ids[..., None]).squeeze(-1)


ENGINES = {"cached": CachedEngine, "hf_generate": HFGenerateEngine}  # VLMConfig.engine -> engine class
