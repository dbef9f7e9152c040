"""One training step (copd_lab.algorithm.update) in both worlds: OPD from a teacher whose weights equal the student's
gives exactly zero advantage, so it moves nothing (float noise in log π_teacher − log π_student would be
scaled by Adam into full-size steps)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dataclasses

import pytest
import torch

from copd_lab.algorithm import update
from copd_lab.config import ExperimentConfig, GRPOConfig, OPDConfig
from copd_lab.sim.world import SimWorld
from copd_lab.tasks import build_suites
from copd_lab.vlm.adapters import LoraSettings
from copd_lab.vlm.world import VLMWorld
from copd_lab.world import Request
from tiny_models.build import build_tiny

SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=1, vision_embed_dim=16, vision_depth=1, vision_num_heads=2)
CFG = ExperimentConfig(grpo=GRPOConfig(group_size=4, prompts_per_step=2))


def make_world(kind: str):
    """The simulator, or a tiny VLM (Qwen2-VL or Llava) with LoRA or full-copy experts, on text and image."""
    if kind == "sim":
        cfg = ExperimentConfig()
        return SimWorld(cfg.sim, cfg.domains)
    arch, experts = kind.split("-")
    model, processor = build_tiny(0, arch, **(SIZES if arch == "qwen2vl" else dict(SIZES, patch_size=8)))
    suites = build_suites(("text", "image"), n_train=8, n_eval=2, seed=0)
    return VLMWorld(model, processor, suites, LoraSettings(r=4, alpha=8.0), max_new_tokens=6, eval_prompts=2,
                    experts=experts, lr=1e-2)


def perturb(world, slot: int, seed: int) -> None:
    """Random weights for the slot (a branch that has trained: the tiny models' rewards are mostly 0, so a few
    real GRPO steps might not move it)."""
    gen = torch.Generator().manual_seed(seed)
    params = [world.flat[slot]] if isinstance(world, SimWorld) else world.slots.params(slot)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)


def refuse(row: int, what: str) -> None:
    raise AssertionError(f"request {row}: {what}")


@pytest.mark.parametrize("kind", ["sim", "qwen2vl-lora", "qwen2vl-full", "llava-lora"])
def test_a_teacher_equal_to_its_student_gives_exactly_zero_advantage(kind):
    world = make_world(kind)
    world.reset(4, 0)
    perturb(world, 1, seed=1)
    perturb(world, 3, seed=3)
    world.copy(1, 2)  # slot 2: a copy of branch 1; slot 3: a branch that differs
    assert torch.equal(world.flat_weights([1]), world.flat_weights([2]))
    # pair_logprobs of such a pair (exactly equal) is checked for every world in tests/test_world_contract.py; here
    # an OPD-only step graded by the copy moves nothing: zero advantage, zero gradient, zero Adam step; the same
    # with the top-k and full-vocabulary reverse-KL estimators
    for estimator in ("sampled", "topk", "full"):
        cfg = dataclasses.replace(CFG, opd=OPDConfig(estimator=estimator))
        before = world.flat_weights([1]).clone()
        signal, _ = update.train_step(world, cfg, [Request(1, (1,), teacher=2, beta=1.0, stream="a")], refuse)
        assert signal.tolist() == [0.0], estimator
        assert torch.equal(world.flat_weights([1]), before), estimator
    moved, _ = update.train_step(world, cfg, [Request(1, (1,), teacher=3, beta=1.0, stream="a")], refuse)
    assert moved.item() != 0 and not torch.equal(world.flat_weights([1]), before)


def test_dr_grpo_divides_by_the_longest_completion_whatever_the_batch_padding(monkeypatch):
    """Dr.GRPO's constant normaliser is N x max_new_tokens for every request (TRL: max_completion_length), so a
    branch's loss scale does not depend on how long the other branches' rollouts in the tick are."""
    world = make_world("qwen2vl-lora")
    world.reset(3, 0)
    cfg = ExperimentConfig(grpo=GRPOConfig(group_size=4, prompts_per_step=2, aggregation="constant"))
    seen = []
    clipped = update.losses.clipped_pg_loss

    def spy(*args, **kwargs):
        seen.append(args[7] if len(args) > 7 else kwargs.get("constant"))
        return clipped(*args, **kwargs)

    monkeypatch.setattr(update.losses, "clipped_pg_loss", spy)
    update.train_step(world, cfg, [Request(1, (0,), stream="a"), Request(2, (1,), stream="a")], refuse)
    assert seen == [world.max_new_tokens] == [6]


def test_phase_two_weights_of_a_hub_and_a_spoke():
    """K = 3 hub-and-spoke tick: the hub (slot 1) has its GRPO batch and two OPD batches, a spoke (slot 2) one."""
    tick = [Request(1, (0,)), Request(1, (1,), teacher=2), Request(1, (2,), teacher=3), Request(2, (1,)),
            Request(2, (0,), teacher=1), Request(4, (0,), teacher=1), Request(4, (1,), teacher=2)]  # 4: MOPD-like
    assert update.batch_weights(tick, "mean") == [1 / 3, 1 / 3, 1 / 3, 1 / 2, 1 / 2, 1 / 2, 1 / 2]
    assert update.batch_weights(tick, "split", 0.6) == pytest.approx([0.6, 0.2, 0.2, 0.6, 0.4, 1 / 2, 1 / 2])
    assert update.batch_weights([Request(1, (0,))], "split", 0.6) == [1.0]  # Phase I: all on GRPO
    # tokens: a batch weighs its share of its slot's tokens (the token-mean of the union of the slot's batches)
    tokens = [40.0, 10.0, 30.0, 20.0, 20.0, 64.0, 16.0]
    want = []
    for r, n in zip(tick, tokens):
        want.append(n / sum(m for q, m in zip(tick, tokens) if q.slot == r.slot))
    assert update.batch_weights(tick, "tokens", tokens=tokens) == pytest.approx(want)
    assert want[:3] == pytest.approx([0.5, 0.125, 0.375])
