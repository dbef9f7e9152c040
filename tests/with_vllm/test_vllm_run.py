"""`copd-lab run --set vlm.engine=vllm`: every method end to end on the shipped tiny Qwen2-VL."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import pandas as pd

from copd_lab.cli import main

SHIPPED = Path(__file__).resolve().parents[2] / "tiny_models" / "qwen2vl-tiny"
METHODS = ["base", "experts", "mixed", "static_opd:image->text", "mopd", "copd", "copd_no_merge", "copd_frozen",
           "copd_drop:text<-image"]


def run_args(out, engine: str, methods: list[str]) -> list[str]:
    settings = [f"vlm.model='{SHIPPED}'", f"vlm.engine='{engine}'", "domains=['text','image','video']",
                f"methods={methods}", "expert_steps=2", "copd.cycles=1", "copd.rl_steps=1", "copd.opd_steps=1",
                "grpo.group_size=2", "grpo.prompts_per_step=1", "vlm.max_new_tokens=8", "vlm.n_train=8",
                "vlm.n_eval=2", "vlm.lora_r=4", "metrics.eval_samples=2", "metrics.eval_every=1000",
                "metrics.gap_every=1000"]
    return ["run", "--quiet", "--out", str(out)] + [arg for s in settings for arg in ("--set", s)]


def test_every_method_runs_on_vllm_and_greedy_base_rows_equal_the_cached_engines(tmp_path, capsys):
    assert main(run_args(tmp_path / "vllm", "vllm", METHODS)) == 0
    printed = capsys.readouterr().out
    for row in ("| base |", "| mixed |", "| mopd |", "| copd |", "| copd_frozen |", "| expert:video |"):
        assert row in printed
    metrics = pd.read_parquet(tmp_path / "vllm" / "metrics.parquet")
    assert metrics.value.notna().all()
    assert {"train_reward", "opd_reverse_kl", "final_acc_greedy/image"} <= set(metrics.metric)
    trained = metrics[metrics.metric.isin(["train_reward", "opd_reverse_kl"])].method.unique()
    assert set(trained) == set(METHODS) - {"base"}  # every method but base logged its GRPO or OPD steps
    assert main(run_args(tmp_path / "cached", "cached", ["base"])) == 0
    cached = pd.read_parquet(tmp_path / "cached" / "metrics.parquet")

    def greedy_base(frame):
        rows = frame[(frame.method == "base") & frame.metric.str.startswith("final_acc_greedy/")]
        return rows.set_index(["branch", "metric"]).value.sort_index()

    pd.testing.assert_series_equal(greedy_base(metrics), greedy_base(cached))


def test_a_model_vllms_cpu_attention_cannot_take_is_refused_in_one_line(tmp_path, capsys):
    from tests.vlm.test_run import SIZES
    from tiny_models.build import build_tiny_qwen2vl

    model = build_tiny_qwen2vl(tmp_path / "head16", seed=0, **SIZES)  # head size 32 / 2 = 16
    capsys.readouterr()
    argv = ["run", "--quiet", "--out", str(tmp_path / "out"), "--set", f"vlm.model='{model}'", "--set",
            "vlm.engine='vllm'", "--set", "methods=['base']"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "vlm.engine = 'vllm' on CPU is not allowed" in err and "head size 16" in err, err
    assert not (tmp_path / "out").exists()  # refused by the preflight, before the model is loaded
