"""What differs between VLM families on the way from processor outputs to a forward: the one seam.

Everything else is shared by every family: the chat template and tokenisation (the processor's own),
the LoRA adapters on the text decoder, prefix-shared generation and re-scoring (decoding.py). Vision features are
computed once per prompt with the model's own `get_image_features` / `get_video_features` and passed
back to every later forward as `mm_encoder_outputs` (transformers 5 takes it in every family listed
here), so generation and re-scoring under any adapter skip the vision tower. What a family adds:

* the visual kinds it takes and the processor output holding each kind's pixels;
* per-item inputs: processor outputs with one row per image/video that the vision encoder needs and
  the forward needs again next to the features (Qwen2-VL: `image_grid_thw`, for M-RoPE);
* per-token inputs of the forward besides input_ids and attention_mask (Qwen2-VL: `mm_token_type_ids`,
  for M-RoPE); completion tokens are text, so they extend by zeros (processing.extend_for_completion);
* positions: plain 1-D positions (Llava) or Qwen2-VL's 3-D M-RoPE positions of the prompt, which a forward
  over tokens after a cached prompt cannot infer alone (`prompt_position_ids`).

A family is chosen by `model.config.model_type`; an unlisted one is refused by name rather than run
through code that was never checked against it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch


class UnsupportedFamily(ValueError):
    """The model's family, or a visual kind asked of it, is not supported (the message says which)."""


@dataclass(frozen=True)
class Family:
    """One model family's inputs; see the module docstring."""

    name: str  # model_type in the checkpoint's config.json
    pixels: Mapping[str, str]  # visual kind ("image"/"video") it takes -> the processor output with its pixels
    item_inputs: Mapping[str, tuple[str, ...]]  # visual kind -> processor outputs with one row per item
    token_inputs: tuple[str, ...] = ()  # per-token forward inputs besides input_ids and attention_mask
    mrope: bool = False  # Qwen2-VL's 3-D (time, height, width) positions instead of 1-D ones

    def check_visual(self, kind: str, domain: str) -> None:
        if kind in ("image", "video") and kind not in self.pixels:
            raise UnsupportedFamily(
                f"domain {domain!r} is a {kind} suite, which the {self.name} family does not take in copd_lab "
                f"(it takes text and {' and '.join(self.pixels)}): leave {domain!r} out of the domains, or use a "
                f"model of a family that takes {kind}")

    def placeholder_id(self, model, kind: str) -> int:
        """The token id whose positions receive the `kind` features (`image_token_id` / `video_token_id` in the
        config of every family listed here)."""
        return getattr(model.config, f"{kind}_token_id")

    def encode(self, model, batch: Mapping[str, torch.Tensor], kind: str
               ) -> tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor]]:
        """(one feature tensor per item, the item inputs with one row per item) of a processed batch.

        Runs the vision tower (no adapters there); call under no_grad, once per prompt.
        """
        items = {name: batch[name] for name in self.item_inputs[kind]}
        pixels = batch[self.pixels[kind]].to(model.dtype)
        encoder = getattr(model.model, f"get_{kind}_features")
        features = encoder(**{self.pixels[kind]: pixels}, **items, return_dict=True).pooler_output
        return tuple(features), items

    def prompt_position_ids(self, model, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Positions of left-padded prompt tokens ([B, L]; M-RoPE: [3, B, L]), counted from each row's first
        real token: a forward over tokens after a cached prompt cannot infer them alone (decoding.py), and
        Qwen2-VL would otherwise count a text-only row's padding, or reuse `rope_deltas` kept from an earlier
        call."""
        mask = inputs["attention_mask"]
        text = (mask.long().cumsum(-1) - 1).clamp(min=0)  # padding gets 0 (it is masked anyway)
        if not self.mrope:
            return text
        grids = {name: inputs[name] for names in self.item_inputs.values() for name in names if name in inputs}
        if not grids:  # text only: M-RoPE's three axes all carry the text positions
            return text[None].expand(3, -1, -1)
        positions, _ = model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                                  attention_mask=mask, **grids)
        return positions


FAMILIES = {
    family.name: family
    for family in (
        Family("qwen2_vl", pixels={"image": "pixel_values", "video": "pixel_values_videos"},
               item_inputs={"image": ("image_grid_thw",), "video": ("video_grid_thw",)},
               token_inputs=("mm_token_type_ids",), mrope=True),
        Family("llava", pixels={"image": "pixel_values"}, item_inputs={"image": ()}),
    )
}


def family_of(model) -> Family:
    """The Family of a transformers VLM, from `model.config.model_type`."""
    model_type = model.config.model_type
    if model_type not in FAMILIES:
        raise UnsupportedFamily(
            f"model_type {model_type!r} ({type(model).__name__}) is not a supported VLM family: copd_lab runs "
            f"{', '.join(sorted(FAMILIES))}. Another family needs an entry in copd_lab/vlm/families.py (its "
            f"vision inputs, per-token inputs and positions) and a test on a tiny model of it")
    return FAMILIES[model_type]
