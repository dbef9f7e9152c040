"""`copd-lab run` in the VLM world: a tiny Qwen2-VL built into a temp folder, CoPD and baselines end to end."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import time

import pandas as pd
import pytest

from copd_lab.algorithm.trainer import Trainer
from copd_lab.cli import main
from copd_lab.records.checkpoint import checkpoint_path, load_checkpoint
from tiny_models.build import build_tiny_qwen2vl

SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=1, vision_embed_dim=16, vision_depth=1, vision_num_heads=2)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_qwen2vl(tmp_path_factory.mktemp("tiny") / "qwen2vl", seed=0, **SIZES)


def run_args(model_dir, out) -> list[str]:
    settings = [f"vlm.model='{model_dir}'", "domains=['text','image']", "methods=['base','experts','copd']",
                "expert_steps=2", "copd.cycles=1", "copd.rl_steps=1", "copd.opd_steps=1", "grpo.group_size=2",
                "grpo.prompts_per_step=1", "vlm.max_new_tokens=6", "vlm.n_train=8", "vlm.n_eval=2",
                "vlm.lora_r=4", "metrics.eval_samples=1", "metrics.eval_every=1000", "metrics.gap_every=1000",
                "checkpoint_every=1"]
    return ["run", "--quiet", "--out", str(out)] + [arg for s in settings for arg in ("--set", s)]


def test_run_trains_the_vlm_world_and_writes_metrics_and_table(model_dir, tmp_path, capsys):
    start = time.perf_counter()
    assert main(run_args(model_dir, tmp_path)) == 0  # world defaults to "vlm" for `run`
    seconds = time.perf_counter() - start
    printed = capsys.readouterr().out
    assert "| copd |" in printed and "| expert:image |" in printed
    metrics = pd.read_parquet(tmp_path / "metrics.parquet")
    assert {"train_reward", "opd_reverse_kl", "final_acc_sampled/text", "final_acc_greedy/image"} <= set(metrics.metric)
    assert metrics.value.notna().all()
    assert (tmp_path / "results.md").read_text().startswith("| model |")
    assert 'world = "vlm"' in (tmp_path / "config.toml").read_text()
    state = load_checkpoint(checkpoint_path(tmp_path, 0))
    assert state["done"] and "adapters" in state["world"]
    print(f"\ncopd-lab run, tiny VLM, base+experts+copd: {seconds:.1f} s")
    assert seconds < 90


def test_resume_after_interruption_matches_in_the_vlm_world(model_dir, tmp_path, monkeypatch):
    assert main(run_args(model_dir, tmp_path / "whole")) == 0
    after_step = Trainer.after_step

    def interrupt(self, tick):  # after the tick's step and measurements, before its checkpoint
        if tick == 2:
            raise KeyboardInterrupt
        after_step(self, tick)

    monkeypatch.setattr(Trainer, "after_step", interrupt)
    with pytest.raises(KeyboardInterrupt):
        main(run_args(model_dir, tmp_path / "cut"))
    monkeypatch.setattr(Trainer, "after_step", after_step)
    assert load_checkpoint(checkpoint_path(tmp_path / "cut", 0))["tick"] == 2
    assert main(run_args(model_dir, tmp_path / "cut") + ["--resume"]) == 0
    whole = pd.read_parquet(tmp_path / "whole" / "metrics.parquet").drop(columns="run")
    resumed = pd.read_parquet(tmp_path / "cut" / "metrics.parquet").drop(columns="run")
    assert resumed.equals(whole), resumed.compare(whole)


def test_missing_model_names_the_field_and_how_to_build_one(tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path / "x"), "--set", f"vlm.model='{tmp_path / 'none'}'"]) == 2
    err = capsys.readouterr().err
    assert "vlm.model" in err and "python -m tiny_models.build --out tiny_models/qwen2vl-tiny" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("override, words", [
    ("vlm.device='tpu'", ["vlm.device", "'tpu'", "cuda"]),
    ("vlm.dtype='int8'", ["vlm.dtype", "'int8'", "bfloat16"]),
    ("vlm.lora_r=0", ["vlm.lora_r", "0", ">= 1"]),
    ("vlm.lr=0", ["vlm.lr", "0", "> 0"]),
    ("checkpoint_every=-1", ["checkpoint_every", "-1", ">= 0"]),
    ("vlm.engine='sglang'", ["vlm.engine", "'sglang'", "hf_generate", "vllm"]),
])
def test_bad_vlm_values_fail_before_work(tmp_path, capsys, override, words):
    assert main(["run", "--out", str(tmp_path / "x"), "--set", override]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
    assert not (tmp_path / "x").exists()
