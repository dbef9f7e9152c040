"""VLMWorld: LoRA slots on one tiny Qwen2-VL behind the World protocol, down to a Trainer run."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import time

import pytest
import torch

from copd_lab.algorithm.loop import run_seeds
from copd_lab.algorithm.recipes import build_recipes
from copd_lab.algorithm.trainer import Trainer
from copd_lab.config import CoPDConfig, ExperimentConfig, GRPOConfig, MergeConfig, MetricsConfig
from copd_lab.tasks import build_suites, is_correct
from copd_lab.vlm.adapters import LoraSettings
from copd_lab.vlm.world import VLMWorld
from copd_lab.world import Request
from tiny_models.build import build_tiny

SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=1, vision_embed_dim=16, vision_depth=1, vision_num_heads=2)
DOMAINS = ("text", "image", "video")


def make_world(n_slots: int = 5, seed: int = 0, domains=DOMAINS) -> VLMWorld:
    model, processor = build_tiny(0, **SIZES)
    suites = build_suites(domains, n_train=6, n_eval=2, seed=0)
    world = VLMWorld(model, processor, suites, LoraSettings(r=4, alpha=8.0), max_new_tokens=6, eval_prompts=2)
    world.reset(n_slots, seed)
    return world


@pytest.fixture(scope="module")
def world():
    return make_world()


def perturb(world: VLMWorld, slot: int, seed: int) -> None:
    """Random B (and A) so the slot's ΔW is non-zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in world.slots.params(slot):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def explicit_delta(world: VLMWorld, slot: int) -> torch.Tensor:
    """ΔW = scaling * B @ A of every adapted module, written out from the adapter's parameters."""
    name = f"slot{slot}"
    return torch.cat([(layer.scaling[name] * layer.lora_B[name].weight @ layer.lora_A[name].weight).reshape(-1)
                      for layer in world.slots.layers()]).detach()


REQUESTS = [Request(1, (0,)), Request(2, (1,)), Request(3, (0, 1, 2))]


def test_fresh_slots_share_one_a_0(world):
    """Slots at the base (tests/test_world_contract.py) are equal in parameter space too: one A_0, B = 0."""
    world.reset(5, 0)
    params = [world.slots.params(s) for s in (1, 2, 3)]
    assert all(torch.equal(a, b) for p in params[1:] for a, b in zip(params[0], p))  # same A_0, B = 0


def test_copy_and_merge_match_explicit_delta_arithmetic(world):
    world.reset(5, 0)
    perturb(world, 1, 1)
    perturb(world, 2, 2)
    d1, d2 = explicit_delta(world, 1), explicit_delta(world, 2)
    torch.testing.assert_close(world.flat_weights([1])[0], d1)
    world.copy(1, 3)
    torch.testing.assert_close(explicit_delta(world, 3), d1, rtol=0, atol=0)
    world.copy(0, 3)
    assert explicit_delta(world, 3).abs().max() == 0
    cases = [(MergeConfig("average"), 0.5 * d1 + 0.5 * d2),
             (MergeConfig("average", weights=(1.0, 3.0)), 0.25 * d1 + 0.75 * d2),
             (MergeConfig("task_arithmetic", scale=2.0), 2.0 * (0.5 * d1 + 0.5 * d2)),
             (MergeConfig("task_arithmetic", weights=(0.3, 0.9)), 0.3 * d1 + 0.9 * d2),
             (MergeConfig("dare", density=1.0), 0.5 * d1 + 0.5 * d2)]  # no drop: SVD at rank 2r is exact
    for spec, expected in cases:
        world.merge([1, 2], 4, spec)
        torch.testing.assert_close(explicit_delta(world, 4), expected, rtol=1e-4, atol=1e-5, msg=str(spec))
        torch.testing.assert_close(world.flat_weights([4])[0], expected, rtol=1e-4, atol=1e-5)
    world.merge([1, 2], 4, MergeConfig("ties", density=0.5))
    assert torch.isfinite(explicit_delta(world, 4)).all() and explicit_delta(world, 4).abs().max() > 0
    world.copy(4, 3)  # a merged (rank 2r) slot copies into a rank-r slot
    torch.testing.assert_close(explicit_delta(world, 3), explicit_delta(world, 4), rtol=0, atol=0)
    world.copy(1, 4)  # and back
    torch.testing.assert_close(explicit_delta(world, 4), d1, rtol=0, atol=0)


def test_completions_end_at_eos_and_rewards_are_the_verifiers(world):
    """Shapes, masks and the every_prompt layout: tests/test_world_contract.py."""
    world.reset(5, 0)
    perturb(world, 2, 3)
    group = 3
    batch = world.sample([Request(1, (0, 1, 2)), Request(2, (2, 1, 0))], 0, group, 1.0, every_prompt=True)
    r, n, t = batch.tokens.shape
    ends = batch.mask.sum(-1).long()  # the mask ends on the first EOS or at the last position
    tokenizer = world.tokenizer
    for i in range(r):
        for j in range(n):
            tokens = batch.tokens[i, j, : ends[i, j]]
            eos = torch.isin(tokens, torch.tensor(world.eos))
            assert eos.sum() <= 1 and (eos.sum() == 0 or eos[-1])
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            d = int(batch.domain[i, j])
            row = world.suites[d].eval[(j % (2 * group)) // group]
            assert batch.rewards[i, j] == world.suites[d].verifier(text, row)
            assert batch.correct[i, j] == float(is_correct(text, row))


def test_unneeded_rows_are_zeros_and_full_spans_the_lm_head(world):
    world.reset(5, 0)
    batch = world.sample(REQUESTS, prompts=2, group=2, temperature=0.7)
    assert world.token_logprobs(batch, [2, -1, 0], grad=False)[1].abs().max() == 0
    full = world.full_logprobs(batch, [2, -1, 0], grad=False)
    assert full[1].abs().max() == 0 and full.shape[-1] == world.hf_model.get_output_embeddings().out_features


def test_the_base_gets_no_gradient_and_a_step_leaves_none(world):
    world.reset(5, 0)
    batch = world.sample(REQUESTS, prompts=1, group=2, temperature=1.0)
    lp = world.token_logprobs(batch, [1, 2, 0], grad=True)
    grads = world.flat_grads((lp * batch.mask).sum(), [1, 0])
    assert grads[0].abs().max() > 0 and grads[1].abs().max() == 0  # the frozen base
    world.step((lp * batch.mask).sum(), [1])
    assert all(p.grad is None for s in range(1, 5) for p in world.slots.params(s))


def test_vision_runs_once_per_prompt_not_per_rollout(world):
    world.reset(5, 0)
    calls = []
    hook = world.hf_model.model.visual.register_forward_hook(
        lambda module, args, kwargs, out: calls.append(kwargs["grid_thw"].shape[0]), with_kwargs=True)
    try:
        prompts, group = 2, 4
        start = time.perf_counter()
        batch = world.sample([Request(1, (1,)), Request(2, (2,))], prompts, group, 1.0)
        sampled = time.perf_counter() - start
        world.full_logprobs(batch, [3, 4], grad=False)
    finally:
        hook.remove()
    print(f"\nvision tower: {sum(calls)} images/videos encoded for {2 * prompts * group} rollouts, "
          f"scored under 3 adapters; sample took {sampled:.2f} s")
    assert sum(calls) == 2 * prompts  # once per prompt: not per rollout, not per scoring adapter


def test_trainer_runs_copd_end_to_end():
    domains = ("text", "image")
    cfg = ExperimentConfig(world="vlm", domains=domains, methods=("copd",), expert_steps=1,
                           grpo=GRPOConfig(group_size=2, prompts_per_step=1),
                           copd=CoPDConfig(rl_steps=1, opd_steps=1, cycles=1),
                           metrics=MetricsConfig(eval_every=1000, gap_every=1, eval_samples=1))
    recipes = build_recipes(cfg)
    model, processor = build_tiny(0, **SIZES)
    world = VLMWorld(model, processor, build_suites(domains, 4, 2, 0), LoraSettings(r=4, alpha=8.0),
                     max_new_tokens=4, eval_prompts=1)
    rows = run_seeds([Trainer(cfg, world, recipes, seed=0, progress=False)], [None])[0]
    metrics = {r["metric"] for r in rows}
    assert {"train_reward", "opd_reverse_kl", "overlap", "task_vector_norm"} <= metrics
    assert any(m.startswith("final_acc_greedy/") for m in metrics)
    assert all(torch.isfinite(torch.tensor(r["value"])) for r in rows)
