"""What a user types at the command line, at its edges: every bad value fails before any work with one line that
names the flag or field, the value and what is allowed; no run folder is replaced unless asked; no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from copd_lab.algorithm.trainer import Trainer
from copd_lab.cli import main
from copd_lab.records.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint

TINY = ["--set", "methods=['base','experts','copd']", "--set", "expert_steps=4", "--set", "copd.cycles=1",
        "--set", "copd.rl_steps=2", "--set", "copd.opd_steps=2", "--set", "metrics.gap_every=100"]


def sim(out, *extra) -> list[str]:
    return ["sim", "--quiet", "--out", str(out), *TINY, *extra]


def refused(capsys, argv: list[str], *words: str) -> str:
    """Run the CLI, expect exit 2 and one line on stderr holding every word."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("copd-lab: error: "), err
    for word in words:
        assert word in err, (word, err)
    return err


def test_out_that_is_a_file_is_refused_and_left_alone(tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    refused(capsys, sim(target), f"--out '{target}'", "is a file, not a folder")
    assert target.read_text() == "mine"


def test_out_under_a_file_empty_or_unwritable_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    refused(capsys, sim(tmp_path / "file" / "run"), "is a file, so no folder can be made under it")
    refused(capsys, sim(""), "--out ''", "name a folder")
    refused(capsys, sim("/proc/copd_lab_run"), "'/proc' cannot be written")  # unwritable even for root


def test_a_finished_run_is_never_replaced_without_resume_or_overwrite(tmp_path, capsys):
    assert main(sim(tmp_path)) == 0
    (tmp_path / "my_notes.md").write_text("keep me")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    state = load_checkpoint(checkpoint_path(tmp_path, 0))
    refused(capsys, sim(tmp_path, "--set", "sim.lr=0.05"), "holds a run", "--resume", "--overwrite")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    assert load_checkpoint(checkpoint_path(tmp_path, 0))["config"] == state["config"]
    # --overwrite replaces the run's own files, and only those
    assert main(sim(tmp_path, "--set", "sim.lr=0.05", "--overwrite")) == 0
    assert (tmp_path / "my_notes.md").read_text() == "keep me"
    assert 'lr = 0.05' in (tmp_path / "config.toml").read_text()
    refused(capsys, sim(tmp_path, "--resume", "--overwrite"), "--resume and --overwrite are not allowed together")


def test_an_unfinished_run_is_not_replaced_and_resume_names_the_field_that_differs(tmp_path, capsys, monkeypatch):
    after_step = Trainer.after_step

    def interrupt(self, tick):  # after the tick's step and measurements, before its checkpoint
        if tick == 5:
            raise KeyboardInterrupt
        after_step(self, tick)

    def run(*extra):
        return sim(tmp_path, "--set", "checkpoint_every=2", "--set", "expert_steps=8", *extra)

    monkeypatch.setattr(Trainer, "after_step", interrupt)
    with pytest.raises(KeyboardInterrupt):
        main(run())
    monkeypatch.setattr(Trainer, "after_step", after_step)
    tick = load_checkpoint(checkpoint_path(tmp_path, 0))["tick"]
    assert tick == 4
    refused(capsys, run("--set", "grpo.aggregation='constant'"), "holds a run (checkpoints)")
    refused(capsys, run("--set", "sim.lr=0.05", "--set", "copd.rl_steps=3", "--resume"),
            "sim.lr is 0.01 there, 0.05 here", "copd.rl_steps is 2 there, 3 here")
    assert load_checkpoint(checkpoint_path(tmp_path, 0))["tick"] == tick
    assert main(run("--resume")) == 0


def test_stale_temp_files_of_a_killed_checkpoint_write_are_removed(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    stale = folder / ".seed0.pt.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    other = folder / ".seed1.pt.k1ll3d.tmp"  # another seed's write may be running beside this one
    other.write_bytes(b"")
    assert main(sim(tmp_path, "--resume")) == 0
    assert not stale.exists() and other.exists()
    assert (folder / "seed0.pt").exists()


def test_config_that_is_a_folder_or_not_text_is_refused(tmp_path, capsys):
    refused(capsys, sim(tmp_path / "run", "--config", str(tmp_path)), "is a folder", "name a TOML file")
    binary = tmp_path / "c.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    refused(capsys, sim(tmp_path / "run", "--config", str(binary)), "not a UTF-8 text file")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("settings, words", [
    (["copd.topology='edges'"], ["copd.topology = 'edges'", "no OPD edge", "copd.edges is empty"]),
    (["domains=['text']", "copd.hub='text'"], ["no OPD edge", "two or more domains"]),
    (["copd.drop_edges=['text<-image','image<-text','text<-video','video<-text']"], ["every edge is dropped"]),
    (["merge.weights=[0,0,0]"], ["merge.weights", "at least one > 0"]),
    (["sim.lr=inf"], ["sim.lr = inf", "finite"]),
    (["expert_steps=99999999999999"], ["expert_steps = 99999999999999", "1,000,000 ticks"]),
])
def test_values_that_used_to_run_and_crash_or_never_end_fail_before_work(tmp_path, capsys, settings, words):
    refused(capsys, sim(tmp_path / "x", *[a for s in settings for a in ("--set", s)]), *words)
    assert not (tmp_path / "x").exists()


def test_a_huge_learning_rate_stops_cleanly_and_keeps_a_checkpoint(tmp_path, capsys):
    """The run stops with the non-finite message (exit 1), never with an error from deep inside sampling."""
    assert main(sim(tmp_path, "--set", "sim.lr=1e38")) == 1
    err = capsys.readouterr().err
    assert err.startswith("copd-lab: error: ") and err.count("\n") == 1, err
    assert "NaN" in err and "tick 0" in err and "last good checkpoint stays" in err
    state = load_checkpoint(checkpoint_path(tmp_path, 0))
    assert state["tick"] == 0 and not state["done"]  # the one written before the first step


def test_run_without_the_vlm_extra_says_which_pip_install(tmp_path):
    """`copd-lab run` after the README's first command (no vlm extra): which pip install, not a traceback."""
    code = ("import sys; sys.modules['datasets'] = None; sys.modules['peft'] = None\n"
            "from copd_lab.cli import main\n"
            f"sys.exit(main(['run', '--quiet', '--out', {str(tmp_path / 'x')!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "pip install -e '.[vlm]'" in done.stderr and "peft, datasets" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_checkpoint_of_another_state_format_is_refused_on_resume(tmp_path, capsys):
    assert main(sim(tmp_path)) == 0
    path = checkpoint_path(tmp_path, 0)
    state = load_checkpoint(path)
    save_checkpoint(path, {**state, "format": state["format"] - 1})
    refused(capsys, sim(tmp_path, "--resume"), "written by another copd_lab version", "--overwrite")
