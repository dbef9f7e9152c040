import subprocess
import sys

import pandas as pd

from copd_lab.cli import main


def test_methods_lists_every_method(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("experts", "mixed", "static_opd", "mopd", "copd", "copd_drop"):
        assert name in out


def test_sim_writes_metrics_table_and_config(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "copd_lab.cli", "sim", "--quiet", "--out", str(out), "--set", "expert_steps=10",
           "--set", "distill_steps=5", "--set", "copd.cycles=2", "--set", "methods=['base','experts','mopd','copd']"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "| copd |" in done.stdout and "| mopd |" in done.stdout
    metrics = pd.read_parquet(out / "metrics.parquet")
    assert {"overlap", "final_acc_sampled/text", "steps"} <= set(metrics.metric)
    assert (out / "results.md").read_text().startswith("| model |")
    rerun = subprocess.run([sys.executable, "-m", "copd_lab.cli", "sim", "--quiet", "--config",
                            str(out / "config.toml"), "--out", str(tmp_path / "again")], capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert pd.read_parquet(tmp_path / "again" / "metrics.parquet").drop(columns="run").equals(
        metrics.drop(columns="run"))


def test_bad_value_fails_before_work(tmp_path, capsys):
    assert main(["sim", "--out", str(tmp_path / "x"), "--set", "copd.topology=star"]) == 2
    err = capsys.readouterr().err
    assert "copd.topology = 'star'" in err and "all_pairs" in err
    assert not (tmp_path / "x").exists()
