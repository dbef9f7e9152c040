"""The World contract (copd_lab.world), checked once for every world kind: the simulator, the VLM with LoRA or
full-copy experts, and the simulator sharded over two in-process shards. What only one world does (the simulator's
exact accuracy, the VLM's engines and adapters) is tested beside it, in tests/sim, tests/vlm and tests/distributed."""

from __future__ import annotations

import io
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from functools import partial

import pytest
import torch

from copd_lab.config import MergeConfig, SimConfig
from copd_lab.distributed.placement import local_sharded_world
from copd_lab.sim.world import SimWorld
from copd_lab.tasks import build_suites
from copd_lab.vlm.adapters import LoraSettings
from copd_lab.vlm.world import VLMWorld
from copd_lab.world import CAPABILITIES, ExactAccuracy, Request, ShardableSlots, SideBySide, TokenText, has, missing
from tests.vlm.test_world import DOMAINS, SIZES
from tiny_models.build import build_tiny

N_EVAL, PROMPTS, GROUP = 2, 2, 2  # eval prompts per domain (every world); prompts and group of a training call
SIM = SimConfig(train_prompts=64, eval_prompts=N_EVAL, base_steps=20, lr=0.01)  # a base fitted in a blink
DECLARED = {"sim": {ExactAccuracy, ShardableSlots, SideBySide, TokenText}, "vlm-lora": {ShardableSlots},
            "vlm-full": {ShardableSlots}, "sharded-sim": {ExactAccuracy, TokenText}}


def build(kind: str):
    if kind == "sim":
        return SimWorld(SIM, DOMAINS)
    if kind == "sharded-sim":  # odd slots on one shard, even ones on the other: copies and merges cross shards
        owner = {slot: "odd" if slot % 2 else "even" for slot in range(1, 5)}
        return local_sharded_world(["odd", "even"], owner, partial(SimWorld, SIM, DOMAINS))
    model, processor = build_tiny(0, **SIZES)
    suites = build_suites(DOMAINS, n_train=6, n_eval=N_EVAL, seed=0)
    return VLMWorld(model, processor, suites, LoraSettings(r=4, alpha=8.0), max_new_tokens=6, eval_prompts=N_EVAL,
                    experts=kind.removeprefix("vlm-"), lr=1e-2)


@pytest.fixture(scope="module", params=list(DECLARED))
def built(request):
    """(kind, world), built once per module (a VLM world is slow to build); `world` resets it for each test."""
    return request.param, build(request.param)


@pytest.fixture
def world(built):
    built[1].reset(5, 0)
    return built[1]


def tick(*slots: int) -> list[Request]:
    """One request per slot, on domains 0, 1, 2, ... in turn, all on stream "a"."""
    return [Request(slot, (i % len(DOMAINS),), stream="a") for i, slot in enumerate(slots)]


def loss(world, batch, slots: list[int]) -> torch.Tensor:
    return (world.token_logprobs(batch, slots, grad=True) * batch.mask).sum()


def train(world, *slots: int) -> None:
    """One step of these slots on their own rollouts: each moves, and has optimizer state of its own."""
    batch = world.sample(tick(*slots), PROMPTS, GROUP, 1.0)
    world.step(loss(world, batch, list(slots)), list(slots))


def tensors(obj) -> list[torch.Tensor]:
    """Every tensor in a nested state, in order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else []
    return [t for item in items for t in tensors(item)]


def completions(batch, row: int) -> list[list[int]]:
    """The real tokens of a request row's rollouts (a VLM pads to the longest completion of its call)."""
    return [tokens[mask.bool()].tolist() for tokens, mask in zip(batch.tokens[row], batch.mask[row])]


def assert_near(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    """Equal up to float rounding: a relative error on the whole vector (a LoRA's ΔW is small everywhere)."""
    assert (actual - expected).norm() <= rel * expected.norm(), ((actual - expected).norm(), expected.norm())


def test_every_declared_capability_is_implemented_and_has_agrees(built):
    kind, world = built
    assert missing(world) == []
    assert {c for c in CAPABILITIES if has(world, c)} == DECLARED[kind]
    for capability in (ExactAccuracy, ShardableSlots, TokenText):  # SideBySide's methods bear World's own names
        assert isinstance(world, capability) == has(world, capability), capability.__name__
    world.reset(3, 0)
    if has(world, ExactAccuracy):
        accuracy = world.exact_accuracy([Request(s, (d,)) for s, d in [(0, 0), (1, 1), (2, 2)]])
        assert accuracy.shape == (3,) and ((accuracy > 0) & (accuracy < 1)).all()
    if has(world, TokenText):
        assert all(isinstance(world.token_text(token), str) for token in range(3))
    if has(world, SideBySide):  # one window of slots saved and restored, the others left alone
        state, before = world.state_dict(slice(1, 2), seed=0), world.flat_weights([1, 2])
        train(world, 1, 2)
        world.load_state_dict(state, slice(1, 2), seed=0)
        after = world.flat_weights([1, 2])
        assert torch.equal(after[0], before[0]) and not torch.equal(after[1], before[1])


def test_reset_puts_every_slot_at_the_base(world):
    train(world, 1, 2)
    world.reset(4, 1)
    weights = world.flat_weights([0, 1, 2, 3])
    assert torch.equal(weights, weights[:1].expand_as(weights))
    batch = world.sample(tick(1, 2, 3), PROMPTS, GROUP, 1.0)
    base = world.full_logprobs(batch, [0, 0, 0], grad=False)
    torch.testing.assert_close(world.full_logprobs(batch, [1, 2, 3], grad=False), base, rtol=0, atol=1e-6)


@pytest.mark.parametrize("how", ["copy", "set_slot"])
def test_copy_gives_the_sources_weights_and_fresh_optimizer_state(world, how):
    if how == "set_slot" and not has(world, ShardableSlots):
        pytest.skip("get_slot and set_slot belong to ShardableSlots")
    transfer = world.copy if how == "copy" else lambda src, dst: world.set_slot(dst, world.get_slot(src))
    train(world, 1)  # slot 1 has optimizer state of its own
    transfer(1, 2)
    transfer(1, 3)
    before = world.flat_weights([1, 2, 3])
    assert torch.equal(before, before[:1].expand_as(before))
    # one batch scored under slots 1, 2 and 3 gives each the same gradient: only their optimizer state differs
    batch = world.sample(tick(1), PROMPTS, GROUP, 1.0).take([0, 0, 0])
    world.step(loss(world, batch, [1, 2, 3]), [1, 2, 3])
    after = world.flat_weights([1, 2, 3])
    assert torch.equal(after[1], after[2]) and not torch.equal(after[1], before[1])  # fresh alike, and moved
    assert not torch.equal(after[0], after[1])  # not slot 1's state (nor its tensors)
    world.copy(0, 3)
    assert torch.equal(world.flat_weights([3]), world.flat_weights([0]))


def saved(state: dict) -> dict:
    """The state as a checkpoint keeps it: written with torch.save, read back with weights_only=True."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_state_dict_round_trip_resumes_identically(world):
    world.reset(4, 3)
    train(world, 1, 2)
    world.merge([1, 2], 3, MergeConfig("average"))
    state = saved(world.state_dict())
    runs = []
    for _ in range(2):  # the next sample and step: from the state, then again after a reload
        weights = world.flat_weights([1, 2, 3])
        batch = world.sample(tick(1, 2, 3), PROMPTS, GROUP, 1.0)
        world.step(loss(world, batch, [1, 2, 3]), [1, 2, 3])  # optimizer state restored, or this step differs
        runs.append((weights, batch.tokens, batch.sample_logprobs, world.flat_weights([1, 2, 3])))
        world.reset(2, 9)  # another run, fewer slots
        world.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_a_state_dict_is_a_snapshot_that_later_steps_leave_alone(world, built):
    train(world, 1, 2)
    state = world.state_dict()
    kept = saved(state)
    train(world, 1, 2)
    assert torch.equal(*(torch.cat([t.reshape(-1).float() for t in tensors(s)]) for s in (state, kept)))


def test_merge_of_one_source_is_the_source_and_an_average_is_the_mean(world):
    train(world, 1, 2)
    world.merge([1], 3, MergeConfig("average"))
    world.merge([1, 2], 4, MergeConfig("average"))
    weights = world.flat_weights([1, 2, 3, 4])
    assert_near(weights[2], weights[0], rel=1e-6)
    assert_near(weights[3], (weights[0] + weights[1]) / 2, rel=1e-5)  # task vectors against slot 0: the base cancels
    assert not torch.equal(weights[0], weights[1])


def test_a_step_moves_only_the_stepped_slots(world, built):
    batch = world.sample(tick(1, 2, 3), PROMPTS, GROUP, 1.0)
    base = world.token_logprobs(batch, [0, 0, 0], grad=False)
    before = world.flat_weights([0, 1, 2, 3, 4])
    world.step(loss(world, batch, [1, 2, 3]), [1, 1])  # slots 2 and 3 got gradients too, but do not step
    after = world.flat_weights([0, 1, 2, 3, 4])
    assert [not torch.equal(a, b) for a, b in zip(before, after)] == [False, True, False, False, False]
    assert torch.equal(world.token_logprobs(batch, [0, 0, 0], grad=False), base)  # the base stays π_0
    # slot 1 now has optimizer moments: a step of slot 2 alone must not move it on them
    batch = world.sample(tick(1, 2), PROMPTS, GROUP, 1.0)
    world.step(loss(world, batch, [1, 2]), [2])
    again = world.flat_weights([1, 2])
    assert torch.equal(again[0], after[1]) and not torch.equal(again[1], after[2])


def test_a_gradient_that_was_not_stepped_does_not_leak_into_a_later_step(world, built):
    """Slot 2's rows are in the loss of a step of slot 1 alone; slot 2's own next step is as if they were not."""
    runs = []
    for leak in (False, True):
        world.reset(4, 0)
        batch = world.sample(tick(1, 2), PROMPTS, GROUP, 1.0)
        logprobs = world.token_logprobs(batch, [1, 2], grad=True) * batch.mask
        world.step(logprobs.sum() if leak else logprobs[0].sum(), [1])
        batch = world.sample(tick(2), PROMPTS, GROUP, 1.0)
        world.step(loss(world, batch, [2]), [2])
        runs.append(world.flat_weights([1, 2]))
    assert torch.equal(*runs)


def test_non_finite_finds_the_slot_made_nan(world):
    assert world.non_finite([0, 1, 2, 3]) == []
    batch = world.sample(tick(2), PROMPTS, GROUP, 1.0)
    world.step(loss(world, batch, [2]) * float("nan"), [2])
    assert world.non_finite([1, 2, 3]) == [2] and world.non_finite([3, 1]) == []


def test_flat_weights_and_flat_grads_are_rows_per_slot(world):
    train(world, 1, 2)
    weights = world.flat_weights([2, 1, 2])
    assert weights.dim() == 2 and torch.equal(weights[0], weights[2]) and not torch.equal(weights[0], weights[1])
    assert torch.equal(weights[1], world.flat_weights([1])[0])
    batch = world.sample(tick(1, 2), PROMPTS, GROUP, 1.0)
    logprobs = world.token_logprobs(batch, [1, 2], grad=True) * batch.mask
    first = world.flat_grads(logprobs[0].sum(), [1, 2])  # row 0 is slot 1's: slot 2 gets none of it
    both = world.flat_grads(logprobs.sum(), [2, 1])  # the same graph again, slots in another order
    assert first.shape == both.shape and first.shape[0] == 2
    assert first[0].abs().max() > 0 and first[1].abs().max() == 0 and both[0].abs().max() > 0
    assert_near(both[1], first[0], rel=1e-6)
    assert torch.equal(world.flat_weights([2, 1, 2]), weights)  # flat_grads updates nothing
    alone = world.token_logprobs(batch, [1, -1], grad=True) * batch.mask  # row 0 without slot 2's row beside it
    assert_near(world.flat_grads(alone[0].sum(), [1])[0], first[0], rel=1e-4)


def test_rescoring_gives_the_samplers_log_probs_with_or_without_grad(world):
    train(world, 1, 2)
    batch = world.sample(tick(1, 2, 3), PROMPTS, GROUP, 0.7)
    r, n, t = batch.tokens.shape
    assert (r, n) == batch.domain.shape == batch.rewards.shape == batch.correct.shape == (3, PROMPTS * GROUP)
    assert batch.mask.shape == batch.sample_logprobs.shape == batch.tokens.shape and t <= world.max_new_tokens
    assert torch.equal(batch.mask, (torch.arange(t) < batch.mask.sum(-1, keepdim=True)).float())  # ones, then zeros
    mask = batch.mask.bool()
    assert (batch.sample_logprobs[mask] < 0).all() and (batch.sample_logprobs[~mask] == 0).all()
    with_grad = world.token_logprobs(batch, [1, 2, 3], grad=True)
    without = world.token_logprobs(batch, [1, 2, 3], grad=False)
    assert with_grad.requires_grad and not without.requires_grad and torch.equal(with_grad.detach(), without)
    torch.testing.assert_close(without[mask], batch.sample_logprobs[mask], rtol=0, atol=1e-5)  # ratio one
    full = world.full_logprobs(batch, [1, 2, 3], grad=False)
    assert batch.tokens.max() < full.shape[-1]
    torch.testing.assert_close(full.gather(-1, batch.tokens[..., None])[..., 0][mask], without[mask], rtol=0,
                               atol=1e-5)
    torch.testing.assert_close(full.exp().sum(-1), torch.ones(r, n, t), rtol=0, atol=1e-4)


def test_rows_scored_together_equal_each_row_scored_alone(world):
    train(world, 1, 2)
    batch = world.sample(tick(1, 2, 3) + [Request(1, (2, 0), stream="a")], PROMPTS, GROUP, 1.0)
    pooled = batch.domain[3].view(-1, GROUP)  # a pooled request's prompts each of one of its domains, drawn
    assert set(pooled.flatten().tolist()) <= {0, 2} and bool((pooled == pooled[:, :1]).all())
    slots = [2, 0, 1, 2]
    together = world.full_logprobs(batch, slots, grad=False)
    for row, slot in enumerate(slots):
        alone = world.full_logprobs(batch, [slot if r == row else -1 for r in range(len(slots))], grad=False)
        keep = batch.mask[row].bool()
        torch.testing.assert_close(together[row][keep], alone[row][keep], rtol=0, atol=1e-4)


@pytest.mark.parametrize("full", [False, True], ids=["tokens", "full"])
def test_a_teacher_equal_to_its_student_gives_exactly_zero(world, full):
    """Eq. 8's advantage is exactly 0, not float noise that Adam would scale up to full-size steps."""
    train(world, 1, 3)
    world.copy(1, 2)  # slot 2: a copy of branch 1; slot 3: a branch that differs
    requests = [Request(1, (0,), stream="a"), Request(1, (1,), teacher=2, beta=1.0, stream="a"),
                Request(1, (0,), teacher=3, beta=1.0, stream="a")]  # a GRPO row beside two OPD rows
    batch = world.sample(requests, PROMPTS, GROUP, 1.0)
    student, teacher = world.pair_logprobs(batch, [1, 2], full=full)
    assert torch.equal(student[1], teacher[1])
    assert not torch.equal(student[2], teacher[2])  # a teacher that differs does grade
    assert (student[0] == 0).all() and (teacher[0] == 0).all()  # GRPO rows are not scored
    score = world.full_logprobs if full else world.token_logprobs
    keep = batch.mask[1:].bool()
    torch.testing.assert_close(student[1:][keep], score(batch, [1, 1, 1], grad=False)[1:][keep], rtol=0, atol=1e-4)
    torch.testing.assert_close(teacher[2][keep[1]], score(batch, [1, 1, 3], grad=False)[2][keep[1]], rtol=0,
                               atol=1e-4)


def test_a_stream_draws_the_same_after_a_reset_whatever_sits_beside_it(world):
    def sample(requests, seed=0):
        world.reset(5, seed)
        return world.sample(requests, PROMPTS, GROUP, 1.0)

    mine = [Request(1, (0, 1), stream="a")]
    alone, again = sample(mine), sample(mine)
    for field in ("tokens", "mask", "sample_logprobs", "rewards", "correct", "domain"):
        assert torch.equal(getattr(alone, field), getattr(again, field)), field
    beside = sample([Request(2, (2,), stream="b")] + mine)  # stream "b" draws first, from its own generator
    assert completions(beside, 1) == completions(alone, 0)
    assert torch.equal(beside.domain[1], alone.domain[0])
    assert completions(sample(mine, seed=1), 0) != completions(alone, 0)  # another run seed draws otherwise


def test_every_prompt_visits_each_domains_eval_prompts_in_order(world):
    requests = [Request(1, (0, 1, 2)), Request(2, (2, 1, 0))]
    every = world.sample(requests, 0, GROUP, 1.0, greedy=True, every_prompt=True)
    per_domain = N_EVAL * GROUP
    assert every.domain.tolist() == [[d for d in r.domains for _ in range(per_domain)] for r in requests]
    grouped = every.tokens.unflatten(1, (-1, GROUP))
    assert (grouped == grouped[:, :, :1]).all()  # greedy: a prompt's group agrees
    # slots 1 and 2 both hold the base: request 1's domain 2 rows are request 0's, prompt by prompt
    assert completions(every, 1)[:per_domain] == completions(every, 0)[2 * per_domain:]
    again = world.sample(requests, 0, GROUP, 1.0, greedy=True, every_prompt=True)
    assert torch.equal(every.tokens, again.tokens)
    first = world.sample(requests[:1], 1, GROUP, 1.0, greedy=True, every_prompt=True)  # the first eval prompt of each
    assert first.domain[0].tolist() == [d for d in range(3) for _ in range(GROUP)]
    assert completions(first, 0) == [c for d in range(3) for c in completions(every, 0)[d * per_domain:][:GROUP]]
