"""A second architecture through the same code: a tiny Llava (CLIP vision, Qwen2 text) built into a temp
folder, loaded by load_vlm like a hub checkpoint, and run by VLMWorld and `copd-lab run` (text and image)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd
import pytest
import torch
from transformers import (
    CLIPImageProcessorPil,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
)

from copd_lab.cli import main
from copd_lab.config import MergeConfig
from copd_lab.tasks import build_suites
from copd_lab.vlm.adapters import LoraSettings
from copd_lab.vlm.families import UnsupportedFamily, family_of
from copd_lab.vlm.model_io import load_vlm
from copd_lab.vlm.processing import extend_for_completion, prepare_batch
from copd_lab.vlm.world import VLMWorld
from copd_lab.world import Request
from tests.vlm.test_run import run_args
from tests.vlm.test_world import explicit_delta, perturb
from tiny_models.build import build_tiny, build_tiny_llava

SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=1, vision_embed_dim=16, vision_depth=1, vision_num_heads=2,
             patch_size=8)  # 16 image tokens (the default 4 gives 64), as many as the tiny Qwen2-VL's
DOMAINS = ("text", "image")
REQUESTS = [Request(1, (0,)), Request(2, (1,)), Request(3, (0, 1))]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("tiny") / "llava", seed=0, **SIZES)


@pytest.fixture(scope="module")
def world(model_dir):
    model, processor = load_vlm(model_dir)
    world = VLMWorld(model, processor, build_suites(DOMAINS, n_train=6, n_eval=2, seed=0),
                     LoraSettings(r=4, alpha=8.0), max_new_tokens=6, eval_prompts=2)
    world.reset(5, 0)
    return world


def test_tiny_llava_saves_and_loads_like_a_hub_checkpoint(model_dir):
    model, processor = load_vlm(model_dir)
    assert isinstance(model, LlavaForConditionalGeneration) and family_of(model).name == "llava"
    assert isinstance(processor, LlavaProcessor) and isinstance(processor.image_processor, CLIPImageProcessorPil)
    built, _ = build_tiny(0, "llava", **SIZES)
    suite = build_suites(["image"], n_train=2, n_eval=1, seed=0)["image"]
    inputs = prepare_batch(processor, suite.train["prompt"], suite.train["images"], "image")
    assert (inputs["input_ids"] == processor.image_token_id).sum(1).tolist() == [16, 16]  # 32x32 in 8x8 patches
    del inputs["mm_token_type_ids"]  # Llava's forward takes no per-token inputs
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, built.eval()(**inputs).logits, rtol=0, atol=0)


def test_adapters_sit_on_the_text_decoder_only(world):
    names = [name for name, module in world.slots.peft.named_modules() if hasattr(module, "lora_A") and module.lora_A]
    assert len(names) == 7 * SIZES["num_hidden_layers"] and all(".language_model." in n for n in names)


def test_slots_start_equal_to_the_base(world):
    world.reset(5, 0)
    assert world.flat_weights([0, 1, 2, 3, 4]).abs().max() == 0
    batch = world.sample(REQUESTS, prompts=2, group=2, temperature=1.0)
    base = world.token_logprobs(batch, [0, 0, 0], grad=False)
    torch.testing.assert_close(world.token_logprobs(batch, [1, 2, 3], grad=False), base, rtol=0, atol=1e-6)


def test_sampled_logprobs_equal_rescoring_and_a_plain_forward_on_raw_pixels(world):
    """Re-scoring (padded rows, precomputed features) against the model's own forward on one raw row."""
    world.reset(5, 0)
    for slot in (1, 2):
        perturb(world, slot, slot)
    requests, group, temperature = [Request(1, (0, 1)), Request(2, (1, 0))], 2, 0.7
    batch = world.sample(requests, 0, group, temperature, every_prompt=True)  # eval rows in order
    # padding after EOS holds no log-prob in the sampled ones (masked to 0): compare real tokens
    torch.testing.assert_close(world.token_logprobs(batch, [1, 2], grad=False) * batch.mask, batch.sample_logprobs,
                               rtol=0, atol=1e-5)
    assert batch.mask.sum() > 0 and (batch.sample_logprobs[batch.mask.bool()] < 0).all()
    for r, request in enumerate(requests):
        for n in range(batch.tokens.shape[1]):
            suite = world.suites[int(batch.domain[r, n])]
            row = suite.eval[(n % (world.n_eval * group)) // group]
            inputs = prepare_batch(world.processor, [row["prompt"]], [row["images"]], suite.modality)
            del inputs["mm_token_type_ids"]
            length = int(batch.mask[r, n].sum())
            completion = batch.tokens[r, n, :length][None]
            with torch.no_grad():
                logits = world.slots.peft(**extend_for_completion(inputs, completion),
                                          adapter_names=[f"slot{request.slot}"]).logits[0, -length - 1:-1]
            logits[:, world.placeholders] = -float("inf")
            expected = (logits / temperature).log_softmax(-1).gather(-1, completion.T)[:, 0]
            torch.testing.assert_close(batch.sample_logprobs[r, n, :length], expected, rtol=0, atol=1e-5)


def test_vision_runs_once_per_prompt_not_per_rollout(world):
    world.reset(5, 0)
    calls = []
    hook = world.hf_model.model.vision_tower.register_forward_hook(
        lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        prompts, group = 2, 4
        batch = world.sample([Request(1, (1,)), Request(2, (1,))], prompts, group, 1.0)
        world.full_logprobs(batch, [3, 4], grad=False)
    finally:
        hook.remove()
    assert sum(calls) == 2 * prompts  # once per prompt: not per rollout, not per scoring adapter


def test_step_changes_only_the_stepped_slot(world):
    world.reset(5, 0)
    batch = world.sample(REQUESTS, prompts=1, group=2, temperature=1.0)
    before = [[p.detach().clone() for p in world.slots.params(s)] for s in range(1, 5)]
    lp = world.token_logprobs(batch, [1, 2, 3], grad=True)
    world.step((lp * batch.mask).sum(), [1, 1])  # slots 2 and 3 got gradients too, but do not step
    after = [[p.detach() for p in world.slots.params(s)] for s in range(1, 5)]
    assert any(not torch.equal(a, b) for a, b in zip(before[0], after[0]))
    for s in range(1, 4):
        assert all(torch.equal(a, b) for a, b in zip(before[s], after[s])), f"slot {s + 1} moved"


def test_merge_through_peft_equals_the_combination_of_deltas(world):
    world.reset(5, 0)
    perturb(world, 1, 1)
    perturb(world, 2, 2)
    d1, d2 = explicit_delta(world, 1), explicit_delta(world, 2)
    for spec, expected in [(MergeConfig("average", weights=(1.0, 3.0)), 0.25 * d1 + 0.75 * d2),
                           (MergeConfig("task_arithmetic", weights=(0.3, 0.9)), 0.3 * d1 + 0.9 * d2),
                           (MergeConfig("dare", density=1.0), 0.5 * d1 + 0.5 * d2)]:
        world.merge([1, 2], 4, spec)
        assert world.slots.peft.peft_config["slot4"].r == 8  # peft's merged adapter: rank r1 + r2
        torch.testing.assert_close(explicit_delta(world, 4), expected, rtol=1e-4, atol=1e-5, msg=str(spec))


def test_video_suite_is_refused_by_a_family_without_video(model_dir):
    model, processor = load_vlm(model_dir)
    with pytest.raises(UnsupportedFamily, match=r"domain 'video' is a video suite.*llava family.*text and image"):
        VLMWorld(model, processor, build_suites(["text", "video"], 2, 1, 0))


def test_unsupported_family_is_refused_by_name():
    text = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, bos_token_id=0, eos_token_id=1, pad_token_id=0,
                rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]})
    vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32, patch_size=4)
    model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(text_config=text, vision_config=vision))
    with pytest.raises(UnsupportedFamily, match=r"'qwen2_5_vl'.*llava, qwen2_vl.*families.py"):
        VLMWorld(model, None, build_suites(["text"], 2, 1, 0))


def test_copd_lab_run_end_to_end_on_tiny_llava(model_dir, tmp_path, capsys):
    assert main(run_args(model_dir, tmp_path) + ["--set", "methods=['base','copd']"]) == 0
    printed = capsys.readouterr().out
    assert "| copd |" in printed and "| base |" in printed
    metrics = pd.read_parquet(tmp_path / "metrics.parquet")
    assert {"train_reward", "opd_reverse_kl", "final_acc_sampled/text", "final_acc_greedy/image"} <= set(metrics.metric)
    assert metrics.value.notna().all()
    assert (tmp_path / "results.md").read_text().startswith("| model |")


def test_copd_lab_run_names_the_family_and_domain_it_cannot_run(model_dir, tmp_path, capsys):
    args = run_args(model_dir, tmp_path / "x") + ["--set", "domains=['text','video']"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert all(word in err for word in ("vlm.model", "'video'", "llava")), err
