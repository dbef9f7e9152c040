"""Checkpoints: atomic writes, weights_only loads, resume with identical results, NaN/inf stops the run."""

import pytest
import torch

from copd_lab.algorithm.trainer import NonFiniteError, Trainer
from copd_lab.cli import main
from copd_lab.config import ConfigError
from copd_lab.config_io import load_config
from copd_lab.experiment import run_comparison
from copd_lab.records import checkpoint as ckpt
from copd_lab.sim.world import SimWorld

SMALL = ["expert_steps=12", "distill_steps=6", "copd.rl_steps=3", "copd.opd_steps=2", "copd.cycles=3",
         "metrics.eval_every=10", "metrics.gap_every=4", "checkpoint_every=5", "seeds=2",
         "methods=['base','experts','mixed','static_opd:image->text','mopd','copd']"]


class Interrupted(Exception):
    pass


def test_save_is_atomic_and_loads_with_weights_only(tmp_path, monkeypatch):
    path = ckpt.checkpoint_path(tmp_path, 3)
    assert path == tmp_path / "checkpoints" / "seed3.pt"
    state = {"tick": 4, "rows": {"value": [1.0, float("nan")]}, "t": torch.arange(3), "nested": [{"a": "b"}]}
    ckpt.save_checkpoint(path, state)
    back = ckpt.load_checkpoint(path)
    assert back["tick"] == 4 and torch.equal(back["t"], state["t"]) and back["nested"] == [{"a": "b"}]

    def broken_save(obj, f):  # dies half-way through writing
        f.write(b"partial")
        raise Interrupted

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(Interrupted):
        ckpt.save_checkpoint(path, {"tick": 5})
    assert ckpt.load_checkpoint(path)["tick"] == 4  # the old checkpoint is whole
    assert [p.name for p in path.parent.iterdir()] == ["seed3.pt"]  # no temp file left behind


def test_checkpoint_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"world": Interrupted()}, path)  # an arbitrary class: weights_only refuses to build it
    with pytest.raises(Exception, match="[Ww]eights"):
        ckpt.load_checkpoint(path)


def interrupt_seed_1_at_tick_13(monkeypatch):
    after_step = Trainer.after_step

    def interrupt(self, tick, *args, **kwargs):  # a crash in seed 1 at tick 13: its last checkpoint is at tick 10
        if self.seed == 1 and tick == 13:
            raise Interrupted
        after_step(self, tick, *args, **kwargs)

    monkeypatch.setattr(Trainer, "after_step", interrupt)
    return lambda: monkeypatch.setattr(Trainer, "after_step", after_step)


def test_resume_after_interruption_gives_identical_metrics(tmp_path, monkeypatch):
    """The simulator runs its seeds side by side (copd_lab.algorithm.side_by_side): a crash in one leaves every
    seed at its last checkpoint, and --resume continues them all to the rows of an uninterrupted run."""
    cfg = load_config(None, SMALL)
    whole = run_comparison(cfg, run="r", progress=False, out=tmp_path / "whole").metrics
    restore = interrupt_seed_1_at_tick_13(monkeypatch)
    with pytest.raises(Interrupted):
        run_comparison(cfg, run="r", progress=False, out=tmp_path / "cut")
    restore()
    for seed in (0, 1):
        state = ckpt.load_checkpoint(ckpt.checkpoint_path(tmp_path / "cut", seed))
        assert not state["done"] and state["tick"] == 10
    resumed = run_comparison(cfg, run="r", progress=False, out=tmp_path / "cut", resume=True).metrics
    assert resumed.equals(whole), resumed.compare(whole)
    assert all(ckpt.load_checkpoint(ckpt.checkpoint_path(tmp_path / "cut", seed))["done"] for seed in (0, 1))


def test_a_finished_seed_is_not_run_again_and_one_left_runs_alone(tmp_path, monkeypatch):
    cfg = load_config(None, SMALL)
    whole = run_comparison(cfg, run="r", progress=False).metrics
    run_comparison(load_config(None, SMALL + ["seeds=1"]), run="r", progress=False, out=tmp_path)  # seed 0 done
    restore = interrupt_seed_1_at_tick_13(monkeypatch)
    with pytest.raises(Interrupted):
        run_comparison(cfg, run="r", progress=False, out=tmp_path, resume=True)
    restore()
    started = []
    begin = Trainer.begin
    monkeypatch.setattr(Trainer, "begin", lambda self, resume=None: started.append(
        (self.seed, resume and resume["tick"], type(self.world).__name__)) or begin(self, resume))
    resumed = run_comparison(cfg, run="r", progress=False, out=tmp_path, resume=True).metrics
    assert started == [(1, 10, "SimWorld")]  # seed 0 was finished: not run again; seed 1 alone, not in a SlotView
    assert resumed.equals(whole), resumed.compare(whole)


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path):
    cfg = load_config(None, ["methods=['experts']", "expert_steps=4", "seeds=1"])
    run_comparison(cfg, progress=False, out=tmp_path)
    other = load_config(None, ["methods=['experts']", "expert_steps=4", "sim.lr=0.05", "seeds=3"])
    with pytest.raises(ConfigError, match=r"sim\.lr is 0\.01 there, 0\.05 here"):
        run_comparison(other, progress=False, out=tmp_path, resume=True)
    more_seeds = load_config(None, ["methods=['experts']", "expert_steps=4", "seeds=2", "checkpoint_every=2"])
    assert run_comparison(more_seeds, progress=False, out=tmp_path, resume=True).metrics.seed.nunique() == 2


def test_an_older_stored_key_with_grpo_lr_equals_todays_with_sim_lr():
    """A checkpoint of an older copd_lab stored the simulator's lr as grpo.lr: its key still matches today's
    config with that lr as sim.lr (and not another lr)."""
    cfg = load_config(None, ["methods=['experts']", "sim.lr=0.05"])
    old = ckpt.resume_key(cfg)
    old["grpo"], old["sim"] = {**old["grpo"], "lr": 0.05}, {k: v for k, v in old["sim"].items() if k != "lr"}
    stored = {**old, "seed": 3, "checkpoint_every": 7}
    assert ckpt.resume_key(stored) == ckpt.resume_key(cfg)
    assert stored["grpo"]["lr"] == 0.05 and "lr" not in stored["sim"]  # the stored dict is read, not changed
    assert ckpt.resume_key(stored) != ckpt.resume_key(load_config(None, ["methods=['experts']"]))


def test_seeds_run_apart_gather_into_one_table(tmp_path):
    """Seed 1 run on its own (say on another machine) is reused by a 2-seed --resume in the same folder,
    and the gathered rows equal a 2-seed run's."""
    small = ["methods=['base','experts']", "expert_steps=4", "metrics.eval_every=2"]
    run_comparison(load_config(None, small + ["seed=1", "seeds=1"]), progress=False, out=tmp_path / "apart")
    both = load_config(None, small + ["seeds=2"])
    gathered = run_comparison(both, progress=False, out=tmp_path / "apart", resume=True).metrics
    whole = run_comparison(both, progress=False).metrics
    assert sorted(gathered.seed.unique()) == [0, 1]
    assert gathered.equals(whole), gathered.compare(whole)


class BlowsUp(SimWorld):
    """A simulator whose training log-probs turn NaN at tick 7, or a few of whose weights turn inf at tick 4."""

    def __init__(self, *args, where: str):
        super().__init__(*args)
        self.where, self.forwards, self.steps = where, 0, 0

    def token_logprobs(self, batch, slots, grad):
        out = super().token_logprobs(batch, slots, grad)
        if grad and self.where in ("loss", "first_loss"):
            self.forwards += 1  # one training forward per tick
            return out + float("nan") if self.forwards == (8 if self.where == "loss" else 1) else out
        return out

    def step(self, loss, slots):
        super().step(loss, slots)
        self.steps += 1
        if self.where == "weights" and self.steps == 5:
            with torch.no_grad():
                self.flat[slots[0], :3] = float("inf")


@pytest.mark.parametrize("where, words, saved", [
    ("loss", ["GRPO loss is nan", "'experts'", "branch 'text'", "tick 7"], 6),
    # a few inf weights the next loss would not show: caught right after the update that made them
    ("weights", ["update made the weights of branch 'text'", "'experts'", "NaN or inf", "tick 4"], 3),
    # before the first cadence checkpoint: the one written before the first step is kept
    ("first_loss", ["GRPO loss is nan", "tick 0"], 0),
])
def test_non_finite_stops_with_a_clear_error_and_keeps_the_last_checkpoint(tmp_path, where, words, saved):
    cfg = load_config(None, ["methods=['experts']", "expert_steps=20", "checkpoint_every=3", "seeds=1",
                             "metrics.gap_every=50"])
    world = BlowsUp(cfg.sim, cfg.domains, where=where)
    with pytest.raises(NonFiniteError) as info:
        run_comparison(cfg, progress=False, world=world, out=tmp_path)
    message = str(info.value)
    for text in words + ["lower learning rate than sim.lr = 0.01", "last good checkpoint stays", "seed0.pt"]:
        assert text in message
    state = ckpt.load_checkpoint(ckpt.checkpoint_path(tmp_path, 0))
    assert state["tick"] == saved and not state["done"]
    assert ckpt.first_non_finite(state) is None


def test_cli_resume_of_a_finished_run_reruns_nothing(tmp_path, monkeypatch):
    args = ["sim", "--quiet", "--out", str(tmp_path), "--set", "methods=['experts','copd']", "--set",
            "expert_steps=6", "--set", "copd.cycles=1", "--set", "copd.rl_steps=3", "--set", "copd.opd_steps=3"]
    assert main(args) == 0
    table = (tmp_path / "results.md").read_text()
    assert (tmp_path / "checkpoints" / "seed0.pt").exists()
    monkeypatch.setattr(Trainer, "begin", None)  # resuming a finished seed trains nothing
    assert main(args + ["--resume"]) == 0
    assert (tmp_path / "results.md").read_text() == table
