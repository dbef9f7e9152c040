"""benchmarks/vlm_speed.py with vLLM installed: the three engines side by side, on small sizes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_vlm_speed_prints_the_three_engines_side_by_side(tmp_path):
    shim = ROOT / "tests" / "with_vllm" / "shim"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(shim), str(ROOT)])}
    small = ["grpo.prompts_per_step=2", "grpo.group_size=2", "vlm.max_new_tokens=4", "vlm.n_train=8",
             "vlm.n_eval=2", "metrics.eval_samples=2", "metrics.gap_prompts=2"]
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "vlm_speed.py"), "--steps", "20", "--repeats",
                           "1", "--tick-steps", "20", *[a for s in small for a in ("--set", s)]],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    engines = done.stdout.split("rollout engines, the same 3 GRPO batches")[1]
    for engine in ("hf_generate", "cached", "vllm"):
        rows = [line.split() for line in engines.splitlines() if line.startswith(engine)]
        assert len(rows) == 3 and all(float(row[-1]) > 0 for row in rows), engines
    assert "vLLM engine start:" in done.stdout
    assert done.stdout.strip().splitlines()[-1].startswith("copd_3x20_s=")


def test_vllm_push_prints_the_push_options_and_the_ranks(tmp_path):
    shim = ROOT / "tests" / "with_vllm" / "shim"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(shim), str(ROOT)])}
    small = ["grpo.prompts_per_step=2", "grpo.group_size=2", "vlm.max_new_tokens=4", "vlm.n_train=8", "vlm.n_eval=2"]
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "vllm_push.py"), "--rounds", "2",
                           *[a for s in small for a in ("--set", s)]],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line[:28].strip(): line[28:].split() for line in done.stdout.splitlines()}
    assert rows["unchanged (floor)"][-1] == "3"  # pushed once, on the warm-up round
    assert rows["new folder, new id"][-1] == rows["in place + prefix reset"][-1] == "9"  # 3 rounds x 3 adapters
    assert float(rows["8"][0]) > 0 and float(rows["32"][0]) > 0
