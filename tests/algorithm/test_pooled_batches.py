"""Pooled RL batches (mixed RLVR, MOPD's own RL batch): each prompt's domain is drawn by the batch's shares, in both
worlds, and the shares a run realised are logged. (Before: prompts went round the domains by index, so at K = 10
two domains were never trained.)"""

from __future__ import annotations

import math

import pytest
import torch

from copd_lab.config import ExperimentConfig, MixedConfig, SimConfig
from copd_lab.experiment import run_comparison
from copd_lab.sim.world import SimWorld
from copd_lab.world import Request

SMALL = SimConfig(train_prompts=64, eval_prompts=8, base_steps=5)


def within_sampling_error(counts: list[int], probs: list[float]) -> bool:
    """Every count within 4.5 binomial standard deviations of its expectation (a false alarm about 1 in 10^5)."""
    n = sum(counts)
    return all(abs(c - n * p) <= 4.5 * math.sqrt(n * p * (1 - p)) + 1e-9 for c, p in zip(counts, probs))


def drawn_domains(world, request: Request, calls: int, prompts: int = 8) -> list[int]:
    """How many prompts of each domain `calls` sample calls of `request` drew (by its domains' order)."""
    counts = {d: 0 for d in request.domains}
    for _ in range(calls):
        batch = world.sample([request], prompts, 1, 1.0)
        for d in batch.domain[0].tolist():
            counts[d] += 1
    return list(counts.values())


@pytest.mark.parametrize("k", [3, 10, 30])
def test_every_domain_of_a_pooled_sim_batch_is_drawn_at_its_share(k):
    world = SimWorld(SMALL, tuple(f"d{i}" for i in range(k)))
    world.reset(1, seed=0)
    counts = drawn_domains(world, Request(0, tuple(range(k)), stream="mixed"), calls=400)
    assert min(counts) > 0 and within_sampling_error(counts, [1 / k] * k), counts


def test_a_sim_batch_draws_by_its_weights_and_a_zero_weight_is_never_drawn():
    world = SimWorld(SMALL, ("a", "b", "c", "d"))
    world.reset(1, seed=1)
    shares = (0.5, 0.25, 0.0, 0.25)
    counts = drawn_domains(world, Request(0, (0, 1, 2, 3), stream="mixed", shares=shares), calls=400)
    assert counts[2] == 0 and within_sampling_error(counts, [0.5, 0.25, 0.0, 0.25]), counts


def test_a_one_domain_request_draws_the_same_beside_a_pooled_one():
    """A pooled request's domain draws come from its own stream: the other requests' rollouts do not move."""
    world = SimWorld(SMALL, ("a", "b", "c"))
    world.reset(2, seed=3)
    alone = world.sample([Request(1, (1,), stream="experts")], 8, 2, 1.0)
    world.reset(2, seed=3)
    beside = world.sample([Request(1, (1,), stream="experts"), Request(0, (0, 1, 2), stream="mixed")], 8, 2, 1.0)
    assert torch.equal(alone.tokens[0], beside.tokens[0])
    assert torch.equal(alone.payload.prompt[0], beside.payload.prompt[0])


def test_the_realised_shares_of_mixed_rlvr_are_logged_and_follow_its_weights():
    domains = tuple(f"d{i}" for i in range(10))
    for weights in ((), (0.25,) + (0.75 / 9,) * 9):
        cfg = ExperimentConfig(domains=domains, methods=("mixed",), expert_steps=8, mixed=MixedConfig(weights),
                               sim=SMALL)
        rows = run_comparison(cfg).metrics
        share = rows[rows.metric.str.startswith("prompt_share/")].set_index("metric").value
        assert len(share) == 10 and math.isclose(share.sum(), 1.0)
        prompts = 80 * cfg.grpo.prompts_per_step  # mixed RLVR: K x expert_steps ticks, one pooled batch each
        probs = list(weights) if weights else [0.1] * 10
        counts = [round(share[f"prompt_share/{d}"] * prompts) for d in domains]
        assert min(counts) > 0 and within_sampling_error(counts, probs), counts


def test_mixed_weights_must_be_one_per_domain():
    from copd_lab.config import ConfigError

    with pytest.raises(ConfigError, match=r"mixed.weights = \(1.0, 2.0\) is not allowed: empty \(equal shares\) or "
                                          r"one weight per domain \(3\)"):
        ExperimentConfig(mixed=MixedConfig((1.0, 2.0)))
    with pytest.raises(ConfigError, match="weights = .* is not allowed: non-negative"):
        MixedConfig((1.0, -1.0, 1.0))


def test_every_domain_of_a_pooled_vlm_batch_is_drawn_at_its_share():
    from tests.vlm.test_world import make_world

    world = make_world(n_slots=1)
    request = Request(0, (0, 1, 2), stream="mixed", shares=(0.5, 0.5, 0.0))
    counts = [0, 0, 0]
    for _ in range(300):
        for d, _ in world._prompt_rows(request, 4, every_prompt=False):
            counts[d] += 1
    assert counts[2] == 0 and within_sampling_error(counts, [0.5, 0.5, 0.0]), counts
    equal = [0, 0, 0]
    for _ in range(300):
        for d, _ in world._prompt_rows(Request(0, (0, 1, 2), stream="m"), 4, every_prompt=False):
            equal[d] += 1
    assert min(equal) > 0 and within_sampling_error(equal, [1 / 3] * 3), equal
    batch = world.sample([Request(0, (0, 1, 2), stream="x")], 4, 2, 1.0)  # the rollouts carry their drawn domain
    assert batch.domain.shape == (1, 8) and set(batch.domain[0].tolist()) <= {0, 1, 2}
