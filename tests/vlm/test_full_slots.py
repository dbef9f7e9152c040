"""VLMWorld with experts="full": a full copy of the text decoder per slot, mirroring the LoRA tests."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd
import pytest
import torch

from copd_lab.cli import main
from copd_lab.config import MergeConfig
from copd_lab.math.merge import merge_state_dicts
from copd_lab.records.checkpoint import checkpoint_path, load_checkpoint
from copd_lab.tasks import build_suites
from copd_lab.vlm.engine import HFGenerateEngine
from copd_lab.vlm.processing import extend_for_completion, prepare_batch
from copd_lab.vlm.world import VLMWorld
from copd_lab.world import Request
from tests.vlm.test_engine import _shared_prompts_score_like_separate_calls
from tests.vlm.test_run import run_args
from tests.vlm.test_world import DOMAINS, REQUESTS, SIZES
from tiny_models.build import build_tiny, build_tiny_qwen2vl

LLAVA_SIZES = dict(SIZES, patch_size=8)


def make_world(arch: str = "qwen2vl", domains=DOMAINS) -> VLMWorld:
    model, processor = build_tiny(0, arch, **(SIZES if arch == "qwen2vl" else LLAVA_SIZES))
    world = VLMWorld(model, processor, build_suites(domains, n_train=6, n_eval=2, seed=0), max_new_tokens=6,
                     eval_prompts=2, experts="full")
    world.reset(5, 0)
    return world


@pytest.fixture(scope="module")
def world():
    return make_world()


def perturb(world: VLMWorld, slot: int, seed: int, scale: float = 0.05) -> None:
    """Random noise on every weight of the slot, so its task vector is non-zero everywhere."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in world.slots.params(slot):
            p.add_(torch.randn(p.shape, generator=gen) * scale)


def weights(world: VLMWorld, slot: int) -> dict[str, torch.Tensor]:
    """The slot's weights as an explicit state dict (slot 0: the model's own parameters)."""
    source = world.slots.base if slot == 0 else world.slots.weights[slot]
    return {name: value.detach().clone() for name, value in source.items()}


def plain_model(world: VLMWorld, slot: int, arch: str = "qwen2vl"):
    """A fresh transformers model of the same base with the slot's weights loaded the ordinary way."""
    model, _ = build_tiny(0, arch, **(SIZES if arch == "qwen2vl" else LLAVA_SIZES))
    missing, unexpected = model.load_state_dict(weights(world, slot), strict=False)
    assert not unexpected and all(".language_model." not in name for name in missing)
    return model.eval()


def test_a_fresh_slot_is_a_copy_of_the_text_decoder(world):
    """Slots at the base, copies and optimizer state: tests/test_world_contract.py."""
    world.reset(5, 0)
    base = weights(world, 0)
    assert all(torch.equal(weights(world, s)[name], base[name]) for s in range(1, 5) for name in base)
    # the text decoder and its (tied) LM head are the slots'; the vision tower is nobody's
    assert any("embed_tokens" in name for name in base) and not any("visual" in name for name in base)
    assert sum(p.numel() for p in world.slots.params(1)) == world.flat_weights([1]).shape[1]


@pytest.mark.parametrize("spec", [MergeConfig("average"), MergeConfig("average", weights=(1.0, 3.0)),
                                  MergeConfig("task_arithmetic", scale=2.0),
                                  MergeConfig("task_arithmetic", weights=(0.3, 0.9)),
                                  MergeConfig("ties", density=0.5), MergeConfig("ties", weights=(1.0, 2.0)),
                                  MergeConfig("dare", density=0.5, scale=1.5)], ids=str)
def test_merge_equals_merge_state_dicts_of_the_slots(world, spec):
    world.reset(5, 0)
    perturb(world, 1, 1)
    perturb(world, 2, 2)
    experts, base = [weights(world, 1), weights(world, 2)], weights(world, 0)
    seed = int(torch.randint(2**62, (1,), generator=torch.Generator().set_state(world.gen.get_state())))
    expected = merge_state_dicts(experts, base, spec.method, list(spec.weights) or None, spec.density, spec.scale,
                                 seed)
    world.merge([1, 2], 4, spec)
    merged = weights(world, 4)
    for name in base:
        torch.testing.assert_close(merged[name], expected[name], rtol=0, atol=0, msg=name)
    if spec.method == "average":  # written out: Σ w_k θ_k / Σ w_k
        w = spec.weights or (1.0, 1.0)
        for name in base:
            mean = (w[0] * experts[0][name] + w[1] * experts[1][name]) / sum(w)
            torch.testing.assert_close(merged[name], mean, rtol=1e-6, atol=1e-7)
    task_vector = torch.cat([(merged[name] - base[name]).reshape(-1) for name in base])
    torch.testing.assert_close(world.flat_weights([4])[0], task_vector, rtol=0, atol=0)
    assert not world.slots.optimizers[4].state_dict()["state"]


def test_dare_drops_entries_and_the_base_may_be_a_source(world):
    world.reset(5, 0)
    perturb(world, 1, 1)
    world.merge([1, 0], 4, MergeConfig("dare", density=0.5))
    tau = world.flat_weights([1, 4])
    kept = tau[1] != 0
    assert 0.3 < kept.float().mean() < 0.7  # about half the entries dropped
    torch.testing.assert_close(tau[1][kept], tau[0][kept], rtol=1e-5, atol=1e-7)  # 1/2 · τ / density


def test_the_base_gets_no_gradient_and_a_step_leaves_none(world):
    world.reset(5, 0)
    batch = world.sample(REQUESTS, prompts=1, group=2, temperature=1.0)
    lp = world.token_logprobs(batch, [1, 2, 0], grad=True)
    grads = world.flat_grads((lp * batch.mask).sum(), [1, 0])
    assert grads[0].abs().max() > 0 and grads[1].abs().max() == 0  # the frozen base
    world.step((lp * batch.mask).sum(), [1])
    assert all(p.grad is None for s in range(1, 5) for p in world.slots.params(s))
    assert all(p.grad is None for p in world.hf_model.parameters())


@pytest.mark.parametrize("arch, domains", [("qwen2vl", DOMAINS), ("llava", ("text", "image"))])
def test_sampled_logprobs_equal_rescoring_and_a_plain_transformers_forward(arch, domains):
    world = make_world(arch, domains)
    for slot in (1, 2):
        perturb(world, slot, slot)
    indices = tuple(range(len(domains)))
    requests, group, temperature = [Request(1, indices), Request(2, indices[::-1])], 2, 0.7
    batch = world.sample(requests, 0, group, temperature, every_prompt=True)  # eval rows in order
    # padding after EOS holds no log-prob in the sampled ones (masked to 0): compare real tokens
    torch.testing.assert_close(world.token_logprobs(batch, [1, 2], grad=False) * batch.mask, batch.sample_logprobs,
                               rtol=0, atol=1e-5)
    assert batch.mask.sum() > 0 and (batch.sample_logprobs[batch.mask.bool()] < 0).all()
    for r, request in enumerate(requests):
        model = plain_model(world, request.slot, arch)
        for n in range(batch.tokens.shape[1]):
            suite = world.suites[int(batch.domain[r, n])]
            row = suite.eval[(n % (world.n_eval * group)) // group]
            inputs = prepare_batch(world.processor, [row["prompt"]], [row["images"]], suite.modality)
            if arch == "llava":
                del inputs["mm_token_type_ids"]  # Llava's forward takes no per-token inputs
            length = int(batch.mask[r, n].sum())
            completion = batch.tokens[r, n, :length][None]
            with torch.no_grad():
                logits = model(**extend_for_completion(inputs, completion)).logits[0, -length - 1:-1]
            logits[:, world.placeholders] = -float("inf")
            expected = (logits / temperature).log_softmax(-1).gather(-1, completion.T)[:, 0]
            torch.testing.assert_close(batch.sample_logprobs[r, n, :length], expected, rtol=0, atol=1e-5)


def test_vision_runs_once_per_prompt_not_per_rollout(world):
    world.reset(5, 0)
    calls = []
    hook = world.hf_model.model.visual.register_forward_hook(
        lambda module, args, kwargs, out: calls.append(kwargs["grid_thw"].shape[0]), with_kwargs=True)
    try:
        prompts, group = 2, 4
        batch = world.sample([Request(1, (1,)), Request(2, (2,))], prompts, group, 1.0)
        world.full_logprobs(batch, [3, 4], grad=False)
    finally:
        hook.remove()
    assert sum(calls) == 2 * prompts  # once per prompt: not per rollout, not per scoring slot


def test_hf_generate_engine_is_refused_by_name():
    model, processor = build_tiny(0, **SIZES)
    engine = HFGenerateEngine([], [0], 0)
    with pytest.raises(ValueError, match="HFGenerateEngine.*experts = 'full'"):
        VLMWorld(model, processor, build_suites(["text"], 2, 1, 0), experts="full", engine=engine)
    with pytest.raises(ValueError, match="experts = 'qlora' is not allowed.*'lora', 'full'"):
        VLMWorld(model, processor, build_suites(["text"], 2, 1, 0), experts="qlora")


def test_copd_lab_run_with_full_experts_writes_its_table(tmp_path, capsys):
    model_dir = build_tiny_qwen2vl(tmp_path / "qwen2vl", seed=0, **SIZES)
    assert main(run_args(model_dir, tmp_path / "out") + ["--set", "vlm.experts='full'"]) == 0
    printed = capsys.readouterr().out
    assert "| copd |" in printed and "| expert:image |" in printed
    metrics = pd.read_parquet(tmp_path / "out" / "metrics.parquet")
    assert {"train_reward", "opd_reverse_kl", "final_acc_sampled/text"} <= set(metrics.metric)
    assert metrics.value.notna().all()
    assert (tmp_path / "out" / "results.md").read_text().startswith("| model |")
    assert 'experts = "full"' in (tmp_path / "out" / "config.toml").read_text()
    state = load_checkpoint(checkpoint_path(tmp_path / "out", 0))
    assert state["done"] and "weights" in state["world"] and "adapters" not in state["world"]


def test_bad_experts_value_names_the_field(tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path / "x"), "--set", "vlm.experts='qlora'"]) == 2
    err = capsys.readouterr().err
    assert all(word in err for word in ("vlm.experts", "'qlora'", "'lora', 'full'")), err


def test_hf_generate_engine_with_full_copies_fails_before_work(tmp_path, capsys):
    args = ["run", "--out", str(tmp_path / "x"), "--set", "vlm.experts='full'", "--set", "vlm.engine='hf_generate'"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert all(word in err for word in ("vlm.engine", "'hf_generate'", "'cached'")), err
    assert not (tmp_path / "x").exists()


def test_shared_prompts_score_like_separate_calls_with_full_copies(world):
    """SlotCache.batch_select_indices: prompts shared across requests continue per slot correctly."""
    for slot in (1, 2):
        perturb(world, slot, seed=10 + slot)
    _shared_prompts_score_like_separate_calls(world)
