"""The tiny Qwen2-VL end to end: save/load, generation without placeholders, one-forward re-scoring.

Builds a smaller-than-default model into a temporary folder (no hub) once per module.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from copd_lab.vlm.model_io import load_vlm
from copd_lab.vlm.processing import (
    completion_mask,
    extend_for_completion,
    placeholder_token_ids,
    prepare_batch,
    video_inputs,
)
from tiny_models.build import build_tiny, build_tiny_qwen2vl

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
PROMPTS = ["How many red squares?", "Which is larger? 0=seven 1=12"]  # different lengths: left padding


def random_image(rng: np.random.Generator) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))


def visuals(modality: str, seed: int = 0) -> list[list[Image.Image]]:
    rng = np.random.default_rng(seed)
    per_row = {"text": 0, "image": 1, "video": 4}[modality]
    return [[random_image(rng) for _ in range(per_row)] for _ in PROMPTS]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_qwen2vl(tmp_path_factory.mktemp("tiny") / "qwen2vl", seed=0, **SIZES)


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return load_vlm(checkpoint)


def test_round_trip_gives_identical_logits(checkpoint, loaded):
    built, _ = build_tiny(seed=0, **SIZES)
    model, processor = loaded
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    inputs = prepare_batch(processor, PROMPTS, visuals("image"), "image")
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, built.eval()(**inputs).logits, rtol=0, atol=0)


@pytest.mark.parametrize("modality, per_row", [("text", 0), ("image", 16), ("video", 32)])
def test_placeholders_match_vision_grid(loaded, modality, per_row):
    model, processor = loaded
    inputs = prepare_batch(processor, PROMPTS, visuals(modality), modality)
    ids, types = inputs["input_ids"], inputs["mm_token_type_ids"]
    assert ((ids == processor.image_token_id) == (types == 1)).all()
    assert ((ids == processor.video_token_id) == (types == 2)).all()
    assert (types > 0).sum(1).tolist() == [per_row] * len(PROMPTS)
    assert (inputs["attention_mask"][:, -1] == 1).all(), "generation needs left padding"


def test_video_inputs_follow_the_video_processor_layout(loaded):
    """Reference: Qwen2VLVideoProcessor.patchify on frames normalised as the image processor does."""
    _, processor = loaded
    ip = processor.image_processor
    frames = visuals("video")[0]
    got = video_inputs(ip, [frames])
    video = np.stack([np.asarray(f, dtype=np.float32) / 255.0 for f in frames])  # T, H, W, C
    video = (video - np.array(ip.image_mean)) / np.array(ip.image_std)
    video = torch.tensor(video, dtype=torch.float32).permute(0, 3, 1, 2)[None]  # B, T, C, H, W
    p, m, tps = ip.patch_size, ip.merge_size, ip.temporal_patch_size
    b, t, c, h, w = video.shape
    patches = video.view(b, t // tps, tps, c, h // p // m, m, p, w // p // m, m, p)
    expected = patches.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9).reshape(-1, c * tps * p * p)
    assert got["video_grid_thw"].tolist() == [[t // tps, h // p, w // p]]
    torch.testing.assert_close(got["pixel_values_videos"], expected, rtol=0, atol=1e-5)


def boosted_placeholders(model, processor):
    """A copy whose placeholder logits are large: without suppression it samples them often."""
    boosted = type(model)(model.config)
    boosted.load_state_dict(model.state_dict())
    boosted.generation_config = model.generation_config
    with torch.no_grad():
        boosted.lm_head.weight[placeholder_token_ids(processor)] *= 200.0  # tied: the embeddings too
    return boosted.eval()


def sample(model, inputs, suppress, eos_token_id=None, new_tokens=24):
    torch.manual_seed(0)
    return model.generate(
        **inputs,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=new_tokens,
        suppress_tokens=suppress,
        eos_token_id=eos_token_id,
        output_scores=True,
        return_dict_in_generate=True,
    )


@pytest.mark.parametrize("modality", ["text", "image", "video"])
def test_generation_never_samples_placeholders(loaded, modality):
    model, processor = loaded
    model = boosted_placeholders(model, processor)
    placeholders = torch.tensor(placeholder_token_ids(processor))
    inputs = prepare_batch(processor, PROMPTS * 4, visuals(modality) * 4, modality)
    prompt_length = inputs["input_ids"].shape[1]
    model.generation_config.suppress_tokens = None
    unsuppressed = sample(model, inputs, suppress=None).sequences[:, prompt_length:]
    assert torch.isin(unsuppressed, placeholders).any(), "the check has no teeth"
    suppressed = sample(model, inputs, suppress=placeholder_token_ids(processor)).sequences[:, prompt_length:]
    assert not torch.isin(suppressed, placeholders).any()


@pytest.mark.parametrize("modality", ["text", "image", "video"])
def test_one_forward_rescoring_reproduces_generate_log_probs(loaded, modality):
    model, processor = loaded
    model = boosted_placeholders(model, processor)  # suppression then removes a large probability mass
    suppress = placeholder_token_ids(processor)
    inputs = prepare_batch(processor, PROMPTS * 4, visuals(modality) * 4, modality)
    prompt_length = inputs["input_ids"].shape[1]
    # Many stop tokens, so some rows end early and generate pads them: the mask must cut there.
    eos = list(range(20, 120))
    out = sample(model, inputs, suppress, eos_token_id=eos)
    completion = out.sequences[:, prompt_length:]
    reported = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
    mask = completion_mask(completion, eos)
    assert (mask.sum(1) < completion.shape[1]).any() and (mask.sum(1) > 1).any()

    with torch.no_grad():
        logits = model(**extend_for_completion(inputs, completion, mask)).logits
    logits = logits[:, prompt_length - 1 : -1].float()
    logits[..., suppress] = -float("inf")  # score under the distribution that was sampled from
    rescored = logits.log_softmax(-1).gather(-1, completion[..., None])[..., 0]
    kept = mask.bool()
    torch.testing.assert_close(rescored[kept], reported[kept], rtol=0, atol=1e-4)


@pytest.mark.parametrize("modality", ["image", "video"])
def test_vision_features_change_the_logits(loaded, modality):
    model, processor = loaded
    first = prepare_batch(processor, PROMPTS, visuals(modality, seed=0), modality)
    second = prepare_batch(processor, PROMPTS, visuals(modality, seed=1), modality)
    assert torch.equal(first["input_ids"], second["input_ids"])
    with torch.no_grad():
        difference = (model(**first).logits[:, -1] - model(**second).logits[:, -1]).abs().max()
    assert difference > 1e-3


def test_completion_mask_and_extension():
    completion = torch.tensor([[5, 2, 0, 0], [5, 6, 7, 8], [2, 0, 0, 0]])
    mask = completion_mask(completion, eos_token_ids=[2, 0])
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    inputs = {
        "input_ids": torch.ones(3, 2, dtype=torch.long),
        "attention_mask": torch.tensor([[0, 1], [1, 1], [1, 1]]),
        "mm_token_type_ids": torch.tensor([[0, 1], [1, 1], [0, 2]]),
        "pixel_values": torch.zeros(1),
    }
    extended = extend_for_completion(inputs, completion, mask)
    assert extended["input_ids"][:, 2:].equal(completion)
    assert extended["attention_mask"].tolist() == [[0, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]]
    assert extended["mm_token_type_ids"][:, 2:].eq(0).all()
    assert extended["pixel_values"] is inputs["pixel_values"]
