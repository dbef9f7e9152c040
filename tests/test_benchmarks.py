"""Benchmark scripts run and end with their result line (no timing is asserted: benchmarks print tables)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tiny_models.build import build_tiny_qwen2vl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
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


def test_vlm_speed_prints_every_shared_work_row_and_the_run_seconds_last(tmp_path):
    """The CPU path of benchmarks/vlm_speed.py (the one `--device cuda` takes with another device), tiny sizes."""
    model = build_tiny_qwen2vl(tmp_path / "qwen2vl", seed=0, **SIZES)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    small = ["grpo.prompts_per_step=2", "grpo.group_size=2", "vlm.max_new_tokens=4", "vlm.n_train=8",
             "vlm.n_eval=2", "metrics.eval_samples=2", "metrics.gap_prompts=2"]
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "vlm_speed.py"), "--model", str(model),
                           "--steps", "20", "--repeats", "1", "--tick-steps", "20",
                           *[a for s in small for a in ("--set", s)]],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for row in ("sample 3 GRPO batches", "score 3 batches with grad", "teacher-score 4 OPD batches",
                "teacher-score 1 batch under 3 teachers", "encode image prompts", "encode video prompts"):
        assert row in done.stdout, done.stdout
    engines = done.stdout.split("rollout engines, the same 3 GRPO batches")[1]
    for engine in ("hf_generate", "cached"):  # vLLM's rows: tests/with_vllm/test_vllm_benchmark.py
        assert sum(line.startswith(engine) for line in engines.splitlines()) == 3, engines  # 2 samples, 1 run
    assert "vLLM is not installed here" in done.stdout
    name, _, value = done.stdout.strip().splitlines()[-1].partition("=")
    assert name == "copd_3x20_s" and float(value) > 0


def test_the_gpu_benchmarks_second_model_is_a_half_billion_parameter_qwen2vl():
    """`vlm_speed.py --device cuda` builds HALF_B from a config; on the meta device here (no weights, no GPU)."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from tiny_models.build import TinySizes, build_config, build_tokenizer

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from vlm_speed import HALF_B

    sizes = TinySizes(**HALF_B)
    with torch.device("meta"):
        model = Qwen2VLForConditionalGeneration(build_config(build_tokenizer(sizes.vocab_size), sizes))
    assert 0.4e9 < sum(p.numel() for p in model.parameters()) < 0.6e9


def test_sim_speed_prints_its_table_and_both_result_lines_last():
    command = [sys.executable, str(ROOT / "benchmarks" / "sim_speed.py"), "--repeats", "1", "--branches", "3",
               "--comparison", "4"]  # K = 30, the size, takes a minute
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("case") and any("5 seeds" in line for line in lines)
    assert any(line.startswith("K=4 experts+copd, gap auto") for line in lines)
    assert lines[-3].startswith("comparison_k4_gap_auto_s=") and float(lines[-3].split("=")[1]) > 0
    assert lines[-2].startswith("default_comparison_s=") and float(lines[-2].split("=")[1]) > 0
    assert lines[-1].startswith("default_comparison_5seeds_s=") and float(lines[-1].split("=")[1]) > 0


def test_sim_mechanisms_prints_a_row_per_signature():
    command = [sys.executable, str(ROOT / "benchmarks" / "sim_mechanisms.py"), "--seeds", "1", "--ceiling-steps", "50",
               "--set", "expert_steps=20", "--set", "distill_steps=10", "--set", "copd.cycles=1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")][1:]
    assert {line.split(" | ")[0].lstrip("| ") for line in table} == {
        "base", "drift", "capacity", "conflict", "transfer", "pooled shares", "divergence", "absorption",
        "merge damage", "answer lengths", "saw-tooth", "co-evolution"}
    assert all(line.count(" | ") == 4 for line in table)  # five cells: no stray "|" inside one


def test_playground_latency_prints_its_table_and_the_figure_last():
    from playground_browser import browser_available

    if not browser_available() and not os.environ.get("COPD_REQUIRE_BROWSER"):
        import pytest

        pytest.skip("Debian chromium and chromium-driver are not installed")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "playground_latency.py"), "--moves", "1"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT / "benchmarks",
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("case") and "cached" in lines[-2]
    name, _, value = lines[-1].partition("=")
    assert name == "knob_to_redraw_s" and float(value) > 0


def test_sim_map_prints_a_cell_per_setting_with_paired_differences():
    command = [sys.executable, str(ROOT / "benchmarks" / "sim_map.py"), "--seeds", "2", "--capacity", "0", "48",
               "--conflict", "0.25", "--private", "0.5", "--pretrain", "equal", "3:1:1",
               "--set", "expert_steps=10", "--set", "distill_steps=5",
               "--set", "copd.cycles=1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    table = [line for line in done.stdout.split("\n\n")[1].splitlines() if line.startswith("| ")][1:]
    assert [line.split(" | ")[:4] for line in table] == [[f"| {mix}", capacity, "0.25", "0.5"] for mix in
                                                         ("equal", "3:1:1") for capacity in ("0", "48")]
    assert all(line.count(" ± ") == 4 for line in table)  # two seeds: every difference has its std
