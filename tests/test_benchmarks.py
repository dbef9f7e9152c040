"""Benchmark scripts run and end with their result line (no timing is asserted: benchmarks print tables)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tiny_models.build import build_tiny_qwen2vl

ROOT = Path(__file__).resolve().parents[1]
SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=1, vision_embed_dim=16, vision_depth=1, vision_num_heads=2)


def test_vs_trl_runs_one_step_per_side_and_prints_the_ratio_last(tmp_path):
    model = build_tiny_qwen2vl(tmp_path / "qwen2vl", seed=0, **SIZES)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "vs_trl.py"), "--model", str(model),
                           "--steps", "1", "--warmup", "0", "--prompts", "2", "--group", "2",
                           "--max-new-tokens", "4", "--threads", "1"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert "LoRA r=8 alpha=16" in done.stdout and "per_device_train_batch_size=4" in done.stdout
    assert any(line.startswith("copd_lab ") for line in lines) and any(line.startswith("TRL ") for line in lines)
    name, _, value = lines[-1].partition("=")
    assert name == "trl_over_copd_step_ratio" and float(value) > 0
