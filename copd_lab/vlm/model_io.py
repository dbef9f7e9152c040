"""Load a VLM checkpoint and its processor from a local folder (or a hub name a user has cached).

Qwen2-VL checkpoints get `Qwen2VLProcessorNoTorchvision`, so the same processing runs on a CPU box
without torchvision and on a GPU box with it; other families go through AutoProcessor.
Weights load from safetensors only: a pickle checkpoint is refused rather than unpickled.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, PreTrainedModel

from copd_lab.vlm.processing import Qwen2VLProcessorNoTorchvision

PROCESSORS = {"qwen2_vl": Qwen2VLProcessorNoTorchvision}


def load_vlm(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, object]:
    """Return (model in eval mode on `device`, processor) for a checkpoint folder.

    dtype None keeps the checkpoint's stored dtype for hub models and float32 for the tiny ones
    (which are saved in float32); pass torch.bfloat16 on a GPU.
    """
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    model = AutoModelForImageTextToText.from_pretrained(
        path,
        dtype=dtype if dtype is not None else "auto",
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
    )
    model.to(device).eval()
    processor_class = PROCESSORS.get(config.model_type)
    if processor_class is not None:
        processor = processor_class.from_pretrained(path)
    else:
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    return model, processor
