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
