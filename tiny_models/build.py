"""Build a tiny but real Qwen2-VL (or Llava) checkpoint from scratch, with no hub access.

Why a real architecture: the tiny model runs through exactly the code a user's Qwen2-VL would
(`Qwen2VLForConditionalGeneration`, M-RoPE, the vision tower, `save_pretrained`/`from_pretrained`),
so every bug in our processing, generation and re-scoring shows up on a laptop CPU first.

The recipe: train a byte-level BPE tokenizer on a small generated corpus, wrap it as a transformers
tokenizer with Qwen's special and vision tokens and a Qwen-style chat template, size the image
processor so a 32x32 image is not upscaled, build a `Qwen2VLConfig` whose token ids match the
tokenizer, initialise the model at random (seeded) and save everything to one folder.
With `warm_steps` > 0 the model is then warm-started on the task suites (`warm_start.py`).

    python -m tiny_models.build --out tiny_models/qwen2vl-tiny

A second architecture proves that copd_lab runs any supported family through the same code
(copd_lab.vlm.families): `build_tiny_llava` makes a `LlavaForConditionalGeneration` (CLIP vision
tower, Qwen2 text decoder) from the same tokenizer and chat template, with a PIL CLIP image processor.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from transformers import (
    CLIPImageProcessorPil,
    GenerationConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
)

from copd_lab.vlm.processing import Qwen2VLProcessorNoTorchvision, placeholder_token_ids
from tiny_models.tokenizer import (
    CHAT_TEMPLATE,
    IM_END,
    IMAGE_PAD,
    PAD,
    SPECIAL_TOKENS,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
    build_tokenizer,
)
from tiny_models.warm_start import warm_start, warm_start_suites


@dataclass(frozen=True)
class TinySizes:
    """Sizes of the tiny Qwen2-VL (about 2M parameters by default) or Llava (same text and vision widths)."""

    vocab_size: int = 1024  # BPE target: 256 bytes + merges + special/answer tokens
    hidden_size: int = 160  # text width; head_dim = hidden_size / num_attention_heads
    intermediate_size: int = 640  # SwiGLU width of the text MLP
    num_hidden_layers: int = 4  # text decoder layers
    num_attention_heads: int = 5  # text query heads: 5 of 32 dims, a head size vLLM's CPU attention takes
    num_key_value_heads: int = 5  # text key/value heads (fewer is GQA, as in Qwen2-VL-2B)
    vision_embed_dim: int = 64  # width of the vision tower
    vision_depth: int = 2  # vision transformer blocks
    vision_num_heads: int = 4  # vision attention heads
    patch_size: int = 4  # pixels per patch side; Qwen2-VL merges 2x2 patches -> one LLM token, Llava does not
    image_side: int = 32  # images and frames are resized to a budget of image_side**2 pixels
    max_position_embeddings: int = 2048  # longest prompt + completion


def _mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies into (time, height, width) in Qwen2-VL's 16:24:24 ratio."""
    half = head_dim // 2
    spatial = 3 * half // 8
    return [half - 2 * spatial, spatial, spatial]


def build_config(tokenizer: PreTrainedTokenizerFast, sizes: TinySizes) -> Qwen2VLConfig:
    """A Qwen2VLConfig whose special token ids are the tokenizer's."""
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    head_dim = sizes.hidden_size // sizes.num_attention_heads
    return Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=sizes.hidden_size,
            intermediate_size=sizes.intermediate_size,
            num_hidden_layers=sizes.num_hidden_layers,
            num_attention_heads=sizes.num_attention_heads,
            num_key_value_heads=sizes.num_key_value_heads,
            max_position_embeddings=sizes.max_position_embeddings,
            max_window_layers=sizes.num_hidden_layers,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": _mrope_section(head_dim),
            },
            bos_token_id=ids[PAD],
            eos_token_id=ids[IM_END],
            pad_token_id=ids[PAD],
        ),
        vision_config=dict(
            depth=sizes.vision_depth,
            embed_dim=sizes.vision_embed_dim,
            hidden_size=sizes.hidden_size,  # the merger projects into the text width
            num_heads=sizes.vision_num_heads,
            mlp_ratio=4,
            patch_size=sizes.patch_size,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        image_token_id=ids[IMAGE_PAD],
        video_token_id=ids[VIDEO_PAD],
        vision_start_token_id=ids[VISION_START],
        vision_end_token_id=ids[VISION_END],
        tie_word_embeddings=True,  # as Qwen2-VL-2B; halves the embedding parameters
    )


# Pixels scaled to 0..1 and not shifted: a black pixel is 0. With CLIP's mean and std (Qwen2-VL's default)
# the black background is a large constant in every patch, the squares a small change on it, and the tiny
# model trained from scratch learnt to ignore its images (tiny_models/README.md, "How the recipe was chosen").
PIXEL_MEAN, PIXEL_STD = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]


def build_processor(tokenizer: PreTrainedTokenizerFast, sizes: TinySizes) -> Qwen2VLProcessorNoTorchvision:
    """Processor whose pixel budget keeps a 32x32 image at 32x32 (the default would upscale it 3.5x)
    and whose normalisation keeps black at 0 (`PIXEL_MEAN`)."""
    pixels = sizes.image_side**2
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=sizes.patch_size, merge_size=2, temporal_patch_size=2, min_pixels=pixels, max_pixels=pixels,
        image_mean=PIXEL_MEAN, image_std=PIXEL_STD,
    )
    return Qwen2VLProcessorNoTorchvision(image_processor, tokenizer, chat_template=CHAT_TEMPLATE)


def build_llava_config(tokenizer: PreTrainedTokenizerFast, sizes: TinySizes) -> LlavaConfig:
    """A LlavaConfig (CLIP vision tower, Qwen2 text decoder) whose token ids are the tokenizer's.

    The image placeholder is Qwen's <|image_pad|>, so the same tokenizer and chat template serve;
    one LLM token per patch (Llava has no patch merger) and the CLS token dropped ("default").
    """
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    return LlavaConfig(
        text_config=dict(
            model_type="qwen2",
            vocab_size=len(tokenizer),
            hidden_size=sizes.hidden_size,
            intermediate_size=sizes.intermediate_size,
            num_hidden_layers=sizes.num_hidden_layers,
            num_attention_heads=sizes.num_attention_heads,
            num_key_value_heads=sizes.num_key_value_heads,
            max_position_embeddings=sizes.max_position_embeddings,
            bos_token_id=ids[PAD],
            eos_token_id=ids[IM_END],
            pad_token_id=ids[PAD],
            tie_word_embeddings=True,
        ),
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=sizes.vision_embed_dim,
            intermediate_size=4 * sizes.vision_embed_dim,
            num_hidden_layers=sizes.vision_depth,
            num_attention_heads=sizes.vision_num_heads,
            patch_size=sizes.patch_size,
            image_size=sizes.image_side,
        ),
        image_token_index=ids[IMAGE_PAD],
        image_seq_length=(sizes.image_side // sizes.patch_size) ** 2,
        vision_feature_layer=-1,  # the last layer: with so few layers the penultimate is nearly the embedding
        vision_feature_select_strategy="default",
        tie_word_embeddings=True,
    )


def build_llava_processor(tokenizer: PreTrainedTokenizerFast, sizes: TinySizes) -> LlavaProcessor:
    """LlavaProcessor with a PIL CLIP image processor that keeps a 32x32 image at 32x32, black at 0."""
    side = sizes.image_side
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                                            image_mean=PIXEL_MEAN, image_std=PIXEL_STD)
    return LlavaProcessor(image_processor, tokenizer, patch_size=sizes.patch_size,
                          vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE,
                          image_token=IMAGE_PAD, num_additional_image_tokens=1)  # CLIP's CLS


ARCHITECTURES = {
    "qwen2vl": (build_config, build_processor, Qwen2VLForConditionalGeneration),
    "llava": (build_llava_config, build_llava_processor, LlavaForConditionalGeneration),
}


def build_tiny(seed: int = 0, arch: str = "qwen2vl", **sizes: int) -> tuple[object, object]:
    """A tiny `arch` model ("qwen2vl" or "llava"), randomly initialised from `seed`, and its processor,
    in memory."""
    make_config, make_processor, model_class = ARCHITECTURES[arch]
    tiny = TinySizes(**sizes)
    tokenizer = build_tokenizer(tiny.vocab_size, seed)
    processor = make_processor(tokenizer, tiny)
    config = make_config(tokenizer, tiny)
    torch.manual_seed(seed)
    model = model_class(config)
    text = config.text_config
    model.generation_config = GenerationConfig(
        bos_token_id=text.bos_token_id,
        # As Qwen2-VL-Instruct: stop at <|im_end|> or <|endoftext|>.
        eos_token_id=[text.eos_token_id, text.pad_token_id],
        pad_token_id=text.pad_token_id,
        # A sampled placeholder would break the re-scoring forward of the rollout.
        suppress_tokens=placeholder_token_ids(processor),
    )
    return model, processor


def _save(model, processor, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    # The image processor also in its own preprocessor_config.json, where older loaders and vLLM look.
    processor.image_processor.save_pretrained(out)
    return out


def build_tiny_qwen2vl(out_dir: str | Path, seed: int = 0, warm_steps: int = 0, **sizes: int) -> Path:
    """Build the tiny Qwen2-VL (see `build_tiny`), warm-start it for `warm_steps` steps (0: random
    weights), and save model and processor to `out_dir`; return it."""
    model, processor = build_tiny(seed, **sizes)
    if warm_steps:
        stats = warm_start(model, processor, warm_start_suites(seed), warm_steps, seed=seed)
        print(f"warm start: loss {stats['first_loss']:.2f} -> {stats['last_loss']:.2f} in {stats['seconds']:.0f}s")
    return _save(model, processor, out_dir)


def build_tiny_llava(out_dir: str | Path, seed: int = 0, **sizes: int) -> Path:
    """Build the tiny Llava (see `build_tiny`, random weights) and save model and processor to `out_dir`;
    load it with copd_lab.vlm.model_io.load_vlm like any hub checkpoint."""
    return _save(*build_tiny(seed, "llava", **sizes), out_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("tiny_models/qwen2vl-tiny"), help="output folder")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the tokenizer corpus and the random init"
    )
    parser.add_argument(
        "--warm-steps", type=int, default=2000, help="supervised warm-start steps (0: save random weights)"
    )
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: as the shipped checkpoint; other counts sum in another order)")
    for field in fields(TinySizes):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=int, default=field.default)
    args = vars(parser.parse_args())
    out, seed, warm_steps = args.pop("out"), args.pop("seed"), args.pop("warm_steps")
    torch.set_num_threads(args.pop("threads"))
    path = build_tiny_qwen2vl(out, seed=seed, warm_steps=warm_steps, **args)
    model = Qwen2VLForConditionalGeneration.from_pretrained(path)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"saved {path}: {n_params:,} parameters, sizes {asdict(TinySizes(**args))}")


if __name__ == "__main__":
    main()
