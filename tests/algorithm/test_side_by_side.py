"""Seeds side by side in one world (copd_lab.algorithm.side_by_side) give each seed the rows and checkpoints it gets
alone."""

import pandas as pd
import pytest
import torch

from copd_lab.algorithm.loop import run_seeds
from copd_lab.algorithm.recipes import build_recipes
from copd_lab.algorithm.trainer import Trainer
from copd_lab.config_io import load_config
from copd_lab.experiment import run_comparison
from copd_lab.local_world import make_world
from copd_lab.records import checkpoint as ckpt
from copd_lab.records.rows import ROW_COLUMNS
from copd_lab.streams import Streams, seeded
from copd_lab.world import NonFiniteError

SMALL = ["expert_steps=12", "distill_steps=6", "copd.rl_steps=3", "copd.opd_steps=2", "copd.cycles=3",
         "metrics.eval_every=5", "metrics.gap_every=4", "checkpoint_every=5",
         "methods=['base','experts','mixed','static_opd:image->text','mopd','copd','copd_frozen']"]


def one_by_one(cfg, out=None):
    world, rows = make_world(cfg), []
    for seed in range(cfg.seed, cfg.seed + cfg.seeds):
        path = ckpt.checkpoint_path(out, seed) if out is not None else None
        rows += run_seeds([Trainer(cfg, world, build_recipes(cfg), seed=seed, progress=False, checkpoint=path)],
                          [None])[0]
    return pd.DataFrame(rows, columns=list(ROW_COLUMNS))


def test_side_by_side_rows_and_checkpoints_equal_those_of_the_seeds_run_one_by_one(tmp_path):
    cfg = load_config(None, SMALL + ["seeds=3", "seed=4"])
    together = run_comparison(cfg, progress=False, out=tmp_path / "together").metrics
    alone = one_by_one(cfg, tmp_path / "alone")
    assert together.equals(alone), together.compare(alone)
    for seed in (4, 5, 6):
        a, b = (ckpt.load_checkpoint(ckpt.checkpoint_path(tmp_path / kind, seed)) for kind in ("together", "alone"))
        for name in ("flat", "m", "v", "t"):
            assert torch.equal(a["world"][name], b["world"][name]), (seed, name)
        assert a["world"]["streams"]["seed"] == seed and a["world"]["streams"]["states"].keys() == \
            b["world"]["streams"]["states"].keys()
        for name, state in a["world"]["streams"]["states"].items():
            assert torch.equal(state, b["world"]["streams"]["states"][name])


def test_seeded_streams_draw_what_the_seed_draws_alone():
    shared, alone = Streams(0), Streams(7)
    assert torch.equal(torch.rand(5, generator=shared(seeded("mixed", 7))), torch.rand(5, generator=alone("mixed")))
    torch.rand(3, generator=shared(seeded("copd", 7)))
    torch.rand(3, generator=shared("copd"))  # the shared world's own stream of that name is another one
    state = shared.state_dict(7)
    assert state["seed"] == 7 and set(state["states"]) == {"mixed", "copd"}
    again = Streams(1)
    again.load_state_dict(state, 7)
    assert torch.equal(torch.rand(4, generator=again(seeded("copd", 7))),
                       torch.rand(4, generator=shared(seeded("copd", 7))))


def test_a_non_finite_loss_side_by_side_names_its_seed(monkeypatch):
    from copd_lab.sim.world import SimWorld

    cfg = load_config(None, ["methods=['experts']", "expert_steps=8", "seeds=2"])
    token_logprobs = SimWorld.token_logprobs

    def blow_up_seed_1(self, batch, slots, grad):  # NaN on the rows of seed 1's slots, from its 4th step on
        out = token_logprobs(self, batch, slots, grad)
        if grad and getattr(self, "steps", 0) >= 3:
            return out + torch.tensor([float("nan") if s % 2 else 0.0 for s in slots])[:, None, None]  # seed 1: odd
        self.steps = getattr(self, "steps", 0) + bool(grad)
        return out

    monkeypatch.setattr(SimWorld, "token_logprobs", blow_up_seed_1)
    with pytest.raises(NonFiniteError, match=r"GRPO loss is nan in method 'experts'.*at tick 3 \(seed 1\)"):
        run_comparison(cfg, progress=False)
