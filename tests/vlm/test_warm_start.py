"""The supervised warm start: it lowers the completion loss, evaluate reports rates, and the shipped
checkpoint sits in the documented accuracy band (tiny_models/README.md) with a high format rate."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from collections import Counter
from pathlib import Path

import pytest
import torch

from copd_lab.tasks import build_suites
from copd_lab.vlm.model_io import load_vlm
from tiny_models.build import build_tiny
from tiny_models.warm_start import (
    DOMAINS,
    completion_loss,
    evaluate,
    generated_answers,
    lr_factor,
    warm_start,
    warm_start_suites,
)

SHIPPED = Path(__file__).resolve().parents[2] / "tiny_models" / "qwen2vl-tiny"
SIZES = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    vision_embed_dim=32,
    vision_depth=1,
    vision_num_heads=2,
)


@pytest.fixture(scope="module")
def suites():
    return build_suites(DOMAINS, n_train=32, n_eval=8, seed=0)


def held_out_loss(model, processor, suites) -> float:
    with torch.no_grad():
        return sum(
            completion_loss(model, processor, suite, suite.eval, suite.eval["answer"]).item()
            for suite in suites.values()
        )


def test_a_few_steps_reduce_the_completion_loss(suites):
    model, processor = build_tiny(seed=0, **SIZES)
    before = held_out_loss(model, processor, suites)
    stats = warm_start(model, processor, suites, steps=8, lr=3e-3, batch_size=4, seed=0, noise=0.0,
                       warmup=0)
    after = held_out_loss(model, processor, suites)
    assert stats["steps"] == 8 and stats["last_loss"] < stats["first_loss"]
    assert after < 0.7 * before
    assert not model.training


def test_lr_rises_over_the_warmup_then_stays():
    assert [lr_factor(s, warmup=4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_factor(0, warmup=0) == 1.0


def test_noise_must_be_a_fraction(suites):
    model, processor = build_tiny(seed=0, **SIZES)
    with pytest.raises(ValueError, match="noise"):
        warm_start(model, processor, suites, steps=1, noise=1.5)


@pytest.mark.parametrize("greedy", [True, False])
def test_evaluate_returns_rates(suites, greedy):
    model, processor = build_tiny(seed=0, **SIZES)
    for suite in suites.values():
        accuracy, format_rate = evaluate(model, processor, suite, n=4, greedy=greedy, max_new_tokens=4)
        assert 0.0 <= accuracy <= format_rate <= 1.0


@pytest.mark.skipif(not (SHIPPED / "model.safetensors").exists(), reason="no shipped checkpoint")
def test_shipped_checkpoint_reads_its_images():
    """tiny_models/README.md: the shipped base always writes the format, and answers the skills that read the
    picture from the picture, not from the answer prior (the previous checkpoint answered image addition at
    0.25 and video motion at 0.48, near chance). 32 held-out rows a skill."""
    model, processor = load_vlm(SHIPPED)
    suites = warm_start_suites(seed=0, n_train=0, n_eval=128)
    for suite in suites.values():
        assert evaluate(model, processor, suite, n=128)[1] > 0.95, suite.domain
    floors = {("image", "add"): 0.6, ("image", "count"): 0.3, ("video", "count"): 0.9, ("video", "compare"): 0.9}
    for (domain, skill), floor in floors.items():
        rows = suites[domain].eval.filter(lambda s, skill=skill: s == skill, input_columns="skill")
        answers = [None if a is None else str(a) for a in generated_answers(model, processor, suites[domain], rows)]
        accuracy = sum(a == t for a, t in zip(answers, rows["answer"], strict=True)) / len(rows)
        assert accuracy >= floor, (domain, skill, accuracy)
        if skill != "count" or domain != "image":  # image counting still answers "2" on over half the rows
            # No answer on more than half the rows, unless the truth itself has one (a perfect model's share).
            most = max(len(rows) / 2, Counter(rows["answer"]).most_common(1)[0][1])
            assert Counter(answers).most_common(1)[0][1] <= most, (domain, skill, Counter(answers))
