"""Task rows -> VLM model inputs (any processor; Qwen2-VL's needs a shim), for generation and re-scoring.

Three traps this module exists for:
- Without torchvision, transformers cannot build Qwen2-VL's video processor, so
  `Qwen2VLProcessorNoTorchvision` patchifies video frames with the (PIL) image processor instead,
  in the video processor's exact patch layout.
- Qwen2-VL's M-RoPE needs `mm_token_type_ids` (0 text, 1 image, 2 video) with every multimodal
  forward, including the re-scoring forward over prompt + completion: `extend_for_completion`.
- A sampled `<|image_pad|>`/`<|video_pad|>` makes the re-scoring forward fail (more placeholders
  than vision features): generate with `suppress_tokens=placeholder_token_ids(processor)`, and
  set the same ids to -inf before the log-softmax when re-scoring, so the re-scored log-probs are
  those of the distribution that was sampled (what generate's scores report).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature, Qwen2VLProcessor
from transformers.video_utils import make_batched_videos

Modality = Literal["text", "image", "video"]


def video_inputs(image_processor, videos: Sequence) -> dict[str, torch.Tensor]:
    """Patchify videos (each a sequence of frames) like Qwen2VLVideoProcessor, using the image processor.

    The image processor resizes and normalises every frame and emits each patch repeated
    `temporal_patch_size` times; we keep one copy per frame and stack consecutive frames instead,
    giving rows ordered (time, merge-block row, merge-block col, merge row, merge col) with
    features (channel, time, patch row, patch col) -- the video processor's layout.
    """
    tps = image_processor.temporal_patch_size
    patch = image_processor.patch_size
    pixel_rows, grids = [], []
    for frames in make_batched_videos(list(videos)):
        frames = list(frames)
        frames += [frames[-1]] * (-len(frames) % tps)  # pad the clip by repeating its last frame
        out = image_processor(images=frames, return_tensors="np")
        per_frame = out["pixel_values"].reshape(len(frames), -1, 3, tps, patch, patch)[:, :, :, 0]
        _, grid_h, grid_w = out["image_grid_thw"][0]
        grid_t = len(frames) // tps
        clip = per_frame.reshape(grid_t, tps, grid_h * grid_w, 3, patch, patch).transpose(0, 2, 3, 1, 4, 5)
        pixel_rows.append(clip.reshape(grid_t * grid_h * grid_w, 3 * tps * patch * patch))
        grids.append([grid_t, grid_h, grid_w])
    return {
        "pixel_values_videos": torch.from_numpy(np.concatenate(pixel_rows)),
        "video_grid_thw": torch.tensor(grids, dtype=torch.long),
    }


class Qwen2VLProcessorNoTorchvision(Qwen2VLProcessor):
    """Qwen2VLProcessor made of a tokenizer and the PIL image processor only; videos via `video_inputs`.

    Saved and loaded with save_pretrained/from_pretrained like the stock processor; a
    `video_processor` entry in a hub checkpoint's config is ignored.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        kwargs.pop("video_processor", None)
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    @property
    def video_processor(self):
        # Read by `replace_video_token` for merge_size; frames share the image processor's settings.
        return self.image_processor

    def _process_videos(self, videos, **kwargs):
        processed = video_inputs(self.image_processor, videos)
        replacements = [
            self.replace_video_token(processed, i) for i in range(len(processed["video_grid_thw"]))
        ]
        return processed, replacements


def chat_text(processor, prompt: str, modality: Modality, num_images: int = 1) -> str:
    """One user turn through the checkpoint's chat template, ending with the assistant header.

    Images (or the one video) come before the text, as in Qwen2-VL's examples; the processor
    later expands each placeholder to one token per merged patch.
    """
    content = []
    if modality == "image":
        content += [{"type": "image"}] * num_images
    elif modality == "video":
        content.append({"type": "video"})
    content.append({"type": "text", "text": prompt})
    messages = [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def prepare_batch(
    processor,
    prompts: Sequence[str],
    visuals: Sequence[Sequence[Image.Image]],
    modality: Modality,
) -> BatchFeature:
    """Model inputs for a batch of one domain's rows, left-padded for generation.

    `visuals[i]` is row i's `images` column: [] for text, the images of an image row, the frames
    of a video row. Returns input_ids, attention_mask, mm_token_type_ids and the processor's pixel
    inputs (Qwen2-VL: pixel_values/image_grid_thw or pixel_values_videos/video_grid_thw; Llava:
    pixel_values); which of them a forward takes is the model family's (families.py).
    """
    if modality not in ("text", "image", "video"):
        raise ValueError(f"modality={modality!r}; expected 'text', 'image' or 'video'")
    texts = [chat_text(processor, p, modality, len(v)) for p, v in zip(prompts, visuals, strict=True)]
    images = [image for row in visuals for image in row] if modality == "image" else None
    videos = [list(row) for row in visuals] if modality == "video" else None
    return processor(
        text=texts,
        images=images,
        videos=videos,
        padding=True,
        padding_side="left",
        return_mm_token_type_ids=True,
        return_tensors="pt",
    )


def placeholder_token_ids(processor) -> list[int]:
    """Vision placeholder and delimiter ids: a policy must never sample these (pass as suppress_tokens)."""
    tokenizer = processor.tokenizer
    ids = {getattr(processor, "image_token_id", None), getattr(processor, "video_token_id", None)}
    for token in ("<|vision_start|>", "<|vision_end|>"):
        if token in tokenizer.get_vocab():
            ids.add(tokenizer.convert_tokens_to_ids(token))
    return sorted(i for i in ids if i is not None)


def completion_mask(completion_ids: torch.Tensor, eos_token_ids: Sequence[int]) -> torch.Tensor:
    """1 for completion tokens up to and including the first EOS, 0 for the padding generate adds after it."""
    is_eos = torch.isin(completion_ids, torch.as_tensor(list(eos_token_ids), device=completion_ids.device))
    eos_before = is_eos.long().cumsum(-1) - is_eos.long()  # EOS strictly before this position
    return (eos_before == 0).long()


def extend_for_completion(
    inputs: dict[str, torch.Tensor],
    completion_ids: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Inputs that score prompt + completion in one forward.

    The logits at positions P-1 .. P+C-2 (P = prompt length) predict the C completion tokens.
    Completion tokens are text, so mm_token_type_ids grow by zeros; the attention mask grows by
    `mask` (default all ones). Pixel values and grids are reused as they are.
    """
    mask = torch.ones_like(completion_ids) if mask is None else mask
    extended = dict(inputs)
    extended["input_ids"] = torch.cat([inputs["input_ids"], completion_ids], dim=1)
    extended["attention_mask"] = torch.cat(
        [inputs["attention_mask"], mask.to(inputs["attention_mask"].dtype)], dim=1
    )
    if "mm_token_type_ids" in inputs:
        zeros = torch.zeros_like(completion_ids, dtype=inputs["mm_token_type_ids"].dtype)
        extended["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], zeros], dim=1)
    return extended
