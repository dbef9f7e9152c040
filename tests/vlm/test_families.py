"""The per-family seam: each family's vision features and positions, checked against the model's own forward.

Both tiny architectures are built in memory (no hub); every check runs on each family and modality it takes.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.modeling_outputs import BaseModelOutputWithPooling

from copd_lab.vlm.families import FAMILIES, family_of
from copd_lab.vlm.processing import prepare_batch
from tiny_models.build import build_tiny

SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=1, vision_embed_dim=16, vision_depth=1, vision_num_heads=2)
PROMPTS = ["How many red squares?", "Which is larger? 0=seven 1=12"]  # different lengths: left padding
CASES = [("qwen2vl", "text"), ("qwen2vl", "image"), ("qwen2vl", "video"), ("llava", "text"), ("llava", "image")]


@pytest.fixture(scope="module")
def models():
    built = {arch: build_tiny(0, arch, **SIZES) for arch in ("qwen2vl", "llava")}
    return {arch: (model.eval(), processor) for arch, (model, processor) in built.items()}


def prompt_batch(processor, modality: str):
    rng = np.random.default_rng(0)
    per_row = {"text": 0, "image": 1, "video": 4}[modality]
    visuals = [[Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(per_row)]
               for _ in PROMPTS]
    return prepare_batch(processor, PROMPTS, visuals, modality)


def forward_inputs(family, model, batch, modality: str) -> dict:
    """What VLMWorld passes: ids, mask, the family's per-token and per-item inputs, precomputed features."""
    out = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
               **{name: batch[name] for name in family.token_inputs})
    if modality in family.pixels:
        with torch.no_grad():
            features, items = family.encode(model, batch, modality)
        out.update(items)
        out["mm_encoder_outputs"] = {modality: BaseModelOutputWithPooling(pooler_output=features)}
    return out


@pytest.mark.parametrize("arch, modality", CASES)
def test_precomputed_features_give_the_logits_of_raw_pixels(models, arch, modality):
    model, processor = models[arch]
    family = family_of(model)
    batch = prompt_batch(processor, modality)
    raw = {k: v for k, v in batch.items() if k != "mm_token_type_ids" or k in family.token_inputs}
    with torch.no_grad():
        expected = model(**raw).logits
        got = model(**forward_inputs(family, model, batch, modality)).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_families_are_chosen_by_model_type(models):
    assert family_of(models["qwen2vl"][0]) is FAMILIES["qwen2_vl"]
    assert family_of(models["llava"][0]) is FAMILIES["llava"]
    assert FAMILIES["qwen2_vl"].mrope and not FAMILIES["llava"].mrope
