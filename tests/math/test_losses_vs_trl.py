"""copd_lab's clipped GRPO loss against TRL's own `GRPOTrainer._compute_loss`: values and gradients.

One real GRPOTrainer per case (CPU, the shipped tiny Qwen2-VL, no peft: every weight trainable), fed a hand-built
batch the way `_compute_loss` reads it: left-padded prompts, completions of different lengths (padded rows), random
advantages [N], and old log-probs = current + noise, so the clip is active on some tokens. TRL's loss is
differentiated through its own fused-LM-head forward; copd_lab's `clipped_pg_loss` gets the per-token log-probs of
TRL's `_get_per_token_logps_and_entropies` on the same model and batch (one forward, checked against a plain
log_softmax of the logits), the same mask, advantages [N, 1] and old log-probs.

Pairs (TRL loss_type -> copd_lab aggregation):
  grpo    -> seq_mean_token_mean
  bnpo    -> token_mean
  dr_grpo -> constant, constant = max_completion_length (> the padded completion length T, so dividing by T fails)
  dapo    -> token_mean (num_items_in_batch = the batch's completion tokens; 1 process, no accumulation)

Normalisers: `_compute_loss` divides grpo/bnpo/dr_grpo by `current_gradient_accumulation_steps` in train mode and
dapo's num_items_in_batch by num_processes, times current_gradient_accumulation_steps / steps_per_generation; the
test sets the model to train mode, `current_gradient_accumulation_steps = 1` (what Trainer's loop sets with
gradient_accumulation_steps=1) and generation_batch_size = per_device_train_batch_size (steps_per_generation 1).
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # everything is local; never reach for a hub

from pathlib import Path

import pytest
import torch

trl = pytest.importorskip("trl")  # the `bench` extra

from datasets import Dataset  # noqa: E402
from transformers.trainer_callback import PrinterCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from copd_lab.math.losses import clipped_pg_loss  # noqa: E402
from copd_lab.vlm.model_io import load_vlm  # noqa: E402

MODEL = Path(__file__).resolve().parents[2] / "tiny_models" / "qwen2vl-tiny"
CLIP_LOW, CLIP_HIGH = 0.2, 0.28
N, G = 4, 2  # rollouts in the batch, rollouts per prompt
PROMPT_LENGTHS = (5, 3, 6, 4)  # left-padded to 6
COMPLETION_LENGTHS = (7, 3, 5, 1)  # right-padded to T = 7; rows 1..3 padded
T = max(COMPLETION_LENGTHS)
MAX_COMPLETION_LENGTH = 16  # > T: dr_grpo's constant must be this, not the padded length
NOISE = 0.3  # std of old − current log-probs: ratios exp(±0.3) straddle the clip range [0.8, 1.28]

CASES = {  # TRL loss_type -> (copd_lab aggregation, constant)
    "grpo": ("seq_mean_token_mean", None),
    "bnpo": ("token_mean", None),
    "dr_grpo": ("constant", MAX_COMPLETION_LENGTH),
    "dapo": ("token_mean", None),
}


def _reward(prompts, completions, **kwargs) -> list[float]:
    return [0.0 for _ in completions]


def _trainer(loss_type: str, output_dir: Path) -> GRPOTrainer:
    model, processor = load_vlm(MODEL)  # a fresh copy per trainer: TRL patches the model's forward
    args = GRPOConfig(
        output_dir=str(output_dir), use_cpu=True, bf16=False, seed=0,
        per_device_train_batch_size=N, gradient_accumulation_steps=1, generation_batch_size=N, num_generations=G,
        max_completion_length=MAX_COMPLETION_LENGTH, temperature=1.0,
        loss_type=loss_type, beta=0.0, epsilon=CLIP_LOW, epsilon_high=CLIP_HIGH, num_iterations=1,
        importance_sampling_level="token", top_entropy_quantile=1.0, use_vllm=False,
        activation_checkpointing=False, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
    )
    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": f"what is {i} + {i}?"}] for i in range(N)]})
    trainer = GRPOTrainer(model=model, reward_funcs=_reward, args=args, train_dataset=data,
                          processing_class=processor)
    trainer.remove_callback(PrinterCallback)
    return trainer


def _batch(vocab: int, pad: int) -> dict[str, torch.Tensor]:
    """Token ids away from the special and vision-placeholder ids (< 10); prompts left-, completions right-padded."""
    g = torch.Generator().manual_seed(0)
    p = max(PROMPT_LENGTHS)
    prompt_mask = torch.tensor([[0] * (p - n) + [1] * n for n in PROMPT_LENGTHS])
    completion_mask = torch.tensor([[1] * n + [0] * (T - n) for n in COMPLETION_LENGTHS])
    prompt_ids = torch.randint(10, vocab, (N, p), generator=g).masked_fill(prompt_mask == 0, pad)
    completion_ids = torch.randint(10, vocab, (N, T), generator=g).masked_fill(completion_mask == 0, pad)
    advantages = torch.randn(N, generator=g)
    return dict(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
                completion_mask=completion_mask, advantages=advantages)


def _grads(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> list[torch.Tensor | None]:
    return list(torch.autograd.grad(loss, params, allow_unused=True))


@pytest.mark.parametrize("loss_type", list(CASES))
def test_clipped_pg_loss_and_its_gradients_match_trl_compute_loss(loss_type, tmp_path):
    aggregation, constant = CASES[loss_type]
    torch.manual_seed(0)
    trainer = _trainer(loss_type, tmp_path / "trl")
    model = trainer.model
    model.train()  # _compute_loss's "train" mode; the tiny model has no dropout
    trainer.current_gradient_accumulation_steps = 1  # what Trainer's loop sets with no accumulation
    assert model.training and trainer.args.gradient_accumulation_steps == 1
    assert trainer.args.steps_per_generation == 1 and trainer.accelerator.num_processes == 1
    assert trainer.max_completion_length == MAX_COMPLETION_LENGTH > T
    assert trainer.beta == 0.0 and trainer.epsilon_low == CLIP_LOW and trainer.epsilon_high == CLIP_HIGH
    assert trainer.importance_sampling_level == "token" and trainer.top_entropy_quantile == 1.0
    assert not trainer.use_vllm and not trainer._entropy_bonus_enabled and not trainer.aux_loss_enabled

    batch = _batch(model.config.get_text_config().vocab_size, trainer._tokenizer.pad_token_id)
    mask = batch["completion_mask"]
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attention_mask = torch.cat([batch["prompt_mask"], mask], dim=1)
    params = [p for p in model.parameters() if p.requires_grad]

    # copd_lab: the per-token log-probs of TRL's own forward, copd_lab's loss on them
    logps, _, _ = trainer._get_per_token_logps_and_entropies(model, input_ids, attention_mask, T)
    assert logps.shape == (N, T)
    with torch.no_grad():  # TRL's fused head is the plain log_softmax of the logits at the completion tokens
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -T - 1 : -1]
        plain = logits.float().log_softmax(-1).gather(-1, batch["completion_ids"][..., None])[..., 0]
    torch.testing.assert_close(torch.where(mask.bool(), logps.detach(), 0.0), torch.where(mask.bool(), plain, 0.0),
                               rtol=1e-5, atol=1e-5)
    noise = NOISE * torch.randn(N, T, generator=torch.Generator().manual_seed(1))
    old = logps.detach() + noise  # padding too: finite garbage that neither side may let through
    advantages = batch["advantages"][:, None]
    copd_loss = clipped_pg_loss(logps, old, advantages, mask, CLIP_LOW, CLIP_HIGH, aggregation, constant)
    copd_grads = _grads(copd_loss, params)

    # TRL: _compute_loss on the same batch
    inputs = {**batch, "old_per_token_logps": old, "num_items_in_batch": mask.sum()}
    trl_loss = trainer._compute_loss(model, inputs)
    trl_grads = _grads(trl_loss, params)

    # the batch exercises what the aggregations differ on: clipped tokens, padded rows of different lengths
    # (the fraction of real tokens whose gradient the clip removes: ρ > 1+ε_high with Â > 0, ρ < 1−ε_low with Â < 0)
    ratio = torch.exp(logps.detach() - old)
    active = ((ratio > 1 + CLIP_HIGH) & (advantages > 0)) | ((ratio < 1 - CLIP_LOW) & (advantages < 0))
    clipped = float(active[mask.bool()].float().mean())
    assert 0.0 < clipped < 1.0, clipped
    trl_value = trl_loss.item()
    assert abs(trl_value) > 1e-3
    loss_diff = abs(copd_loss.item() - trl_value)
    torch.testing.assert_close(copd_loss, trl_loss, rtol=1e-5, atol=1e-7)
    scale = max(float(grad.abs().max()) for grad in trl_grads if grad is not None)
    assert scale > 0
    grad_diff, compared = 0.0, 0
    for ours, theirs in zip(copd_grads, trl_grads):
        assert (ours is None) == (theirs is None)  # the vision tower gets none on either side (text prompts)
        if ours is not None:
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6 * scale)
            grad_diff, compared = max(grad_diff, float((ours - theirs).abs().max())), compared + 1
    assert compared > 0
    print(f"{loss_type}: loss {trl_value:.6g} max|dloss| {loss_diff:.3g}; {compared} grads, max|grad| {scale:.3g}, "
          f"max|dgrad| {grad_diff:.3g}; clipped fraction {clipped:.2f}")

    # a wrong normaliser would not pass: TRL's loss is the one normaliser's value and far from the others'
    detached = logps.detach()
    total = float(clipped_pg_loss(detached, old, advantages, mask, CLIP_LOW, CLIP_HIGH, "constant", 1.0)) * N
    normalised = {  # Σ over real tokens of the per-token loss, under each normaliser
        "seq_mean_token_mean": float(clipped_pg_loss(detached, old, advantages, mask, CLIP_LOW, CLIP_HIGH,
                                                     "seq_mean_token_mean")),
        "token_mean": total / float(mask.sum()),
        "constant": total / (N * MAX_COMPLETION_LENGTH),
        "padded length": total / (N * T),
    }
    assert trl_value == pytest.approx(normalised[aggregation], rel=1e-5)
    for name, value in normalised.items():
        if name != aggregation:
            assert abs(trl_value - value) > 0.05 * abs(value), (name, trl_value, value)
