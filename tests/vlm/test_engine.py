"""Rollout engines and prefix sharing: the cached engine agrees with transformers' generate, and one
mixed-adapter forward scores like one forward per adapter."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from copd_lab.streams import Streams
from copd_lab.tasks import build_suites
from copd_lab.vlm.adapters import LoraSettings
from copd_lab.vlm.engine import CachedEngine, HFGenerateEngine, gumbel_sample
from copd_lab.vlm.model_io import load_vlm
from copd_lab.vlm.world import VLMWorld
from copd_lab.world import Request
from tests.vlm.test_world import make_world, perturb

SHIPPED = Path(__file__).resolve().parents[2] / "tiny_models" / "qwen2vl-tiny"

# every modality, the base and two different adapters in one call
REQUESTS = [Request(0, (0,)), Request(1, (1,)), Request(2, (2,)), Request(1, (0, 1, 2))]


@pytest.fixture(scope="module")
def world():
    world = make_world()
    for slot in (1, 2):
        perturb(world, slot, slot)
    return world


def with_engine(world, engine_class):
    world.engine = engine_class(world.placeholders, world.eos, world.pad_id)
    return world


def test_cached_greedy_rollouts_equal_hf_generate(world):
    batches = {}
    for engine in (HFGenerateEngine, CachedEngine):
        with_engine(world, engine).streams = Streams(0)  # the same prompts
        batches[engine] = world.sample(REQUESTS, prompts=3, group=2, temperature=1.0, greedy=True)
    hf, cached = batches[HFGenerateEngine], batches[CachedEngine]
    assert torch.equal(hf.mask, cached.mask) and hf.mask.sum() > 0
    assert torch.equal(hf.tokens * hf.mask.long(), cached.tokens * cached.mask.long())
    torch.testing.assert_close(cached.sample_logprobs, hf.sample_logprobs, rtol=0, atol=1e-4)


@pytest.mark.parametrize("engine", [HFGenerateEngine, CachedEngine])
def test_sampling_logprobs_equal_rescoring(world, engine):
    batch = with_engine(world, engine).sample(REQUESTS, prompts=2, group=3, temperature=0.7)
    rescored = world.token_logprobs(batch, [r.slot for r in REQUESTS], grad=False)
    torch.testing.assert_close(rescored * batch.mask, batch.sample_logprobs, rtol=0, atol=1e-4)
    with_engine(world, CachedEngine)


def test_mixed_forward_gradients_reach_each_slot_alone(world):
    batch = world.sample(REQUESTS[1:3], prompts=1, group=2, temperature=1.0)
    lp = world.token_logprobs(batch, [1, 2], grad=True)
    grads = world.flat_grads((lp[0] * batch.mask[0]).sum(), [1, 2])  # only row 0, under slot 1
    assert grads[0].abs().max() > 0 and grads[1].abs().max() == 0


def _shared_prompts_score_like_separate_calls(world):
    """Eval prompts are encoded once for all requests; scoring several requests that share them under
    several slots (as the gap metrics do) runs each (prompts, slot) once and equals scoring each alone."""
    batch = world.sample([Request(1, (0, 1, 2)), Request(2, (0, 1, 2))], prompts=2, group=1, temperature=1.0,
                         every_prompt=True)
    assert batch.payload.prompts[0] is batch.payload.prompts[1]
    pairs = batch.take([0, 1, 0, 1, 0])
    slots = [1, 2, 2, 0, 0]  # (prompts, slot) (P,1) (P,2) twice (P,0) twice: 3 distinct prefills
    prompts, _, rows = world._distinct_prompts(pairs.payload, list(enumerate(slots)))
    assert len(prompts) == 3 and rows is not None
    together = world.full_logprobs(pairs, slots, grad=False)
    for row, slot in enumerate(slots):
        alone = world.full_logprobs(pairs.take([row]), [slot], grad=False)[0]
        keep = pairs.mask[row].bool()
        torch.testing.assert_close(together[row][keep], alone[keep], rtol=0, atol=1e-4)


def test_shared_prompts_score_like_separate_calls(world):
    _shared_prompts_score_like_separate_calls(world)


def test_gumbel_sample_draws_from_the_distribution():
    """Frequencies of 40000 draws against the probabilities, written out; each row's draws follow its generator."""
    logp = torch.tensor([[0.5, 0.2, 0.2, 0.1, 0.0], [0.0, 0.0, 0.7, 0.3, 0.0]]).log()
    rows = 20000
    draws = gumbel_sample(logp.repeat_interleave(rows, 0), [(rows, torch.Generator().manual_seed(1)),
                                                            (rows, torch.Generator().manual_seed(2))])
    for i, expected in enumerate(logp.exp()):
        counts = torch.bincount(draws[i * rows:(i + 1) * rows], minlength=5).float() / rows
        torch.testing.assert_close(counts, expected, rtol=0, atol=0.015)
    assert draws[rows:].min() >= 2 and draws[rows:].max() <= 3  # zero-probability tokens never drawn
    again = gumbel_sample(logp[:1].expand(5, -1), [(5, torch.Generator().manual_seed(1))])
    assert torch.equal(again, draws[:5])


def test_a_streams_rollouts_do_not_depend_on_the_other_rows_of_the_call(world):
    """Method "a" samples the same tokens alone or beside method "b" (whose rows come first)."""
    mine = [Request(1, (1,), stream="a"), Request(2, (0,), stream="a")]
    other = [Request(2, (2,), stream="b")]
    world.streams = Streams(0)
    alone = world.sample(mine, prompts=2, group=3, temperature=1.0)
    world.streams = Streams(0)
    beside = world.sample(other + mine, prompts=2, group=3, temperature=1.0)
    assert torch.equal(alone.tokens * alone.mask.long(), beside.tokens[1:] * beside.mask[1:].long())
    assert alone.mask.sum() > 0


@pytest.mark.parametrize("temperature", [2.0, 3.0])
def test_dropping_finished_rows_changes_no_rollout(temperature, monkeypatch):
    """Rows that have finished leave the batch (CachedEngine.drop_finished_at): the same tokens and log-probs as
    a loop that keeps every row to the end, with each row's noise drawn as before. On the shipped warm-started
    model, at temperatures where its completions end at different lengths (at 1 it writes every one of these
    48 in the 4 tokens of `<answer>d</answer>` EOS, and the drop path would not run)."""
    model, processor = load_vlm(SHIPPED)
    suites = build_suites(("text", "image", "video"), n_train=8, n_eval=2, seed=0)
    world = VLMWorld(model, processor, suites, LoraSettings(r=4, alpha=8.0), max_new_tokens=16, eval_prompts=2)
    world.reset(3, 0)
    requests = [Request(0, (0,)), Request(1, (1,)), Request(2, (2,)), Request(1, (0, 1, 2))]
    batches = []
    for share in (0.25, 2.0):  # 2.0: never drop
        monkeypatch.setattr(CachedEngine, "drop_finished_at", share)
        world.streams = Streams(3)
        batches.append(world.sample(requests, prompts=3, group=4, temperature=temperature))
    dropped, kept = batches
    lengths = kept.mask.sum(-1)
    assert lengths.min() < lengths.max()  # some rows finish early: the drop path runs
    assert torch.equal(dropped.tokens, kept.tokens)
    torch.testing.assert_close(dropped.sample_logprobs, kept.sample_logprobs, rtol=0, atol=1e-5)
