"""The recipe that builds tiny, real Qwen2-VL checkpoints locally (no hub), and the checkpoints it made."""
