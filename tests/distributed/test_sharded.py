"""The sharded world (copd_lab.distributed.sharded) with its shards in this process: the same rows as one world, and
what
crosses between shards (no Ray here; tests/with_ray runs the same world on Ray actors)."""

from __future__ import annotations

import dataclasses
from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch

from copd_lab.algorithm.recipes import build_recipes
from copd_lab.algorithm.slots import SlotKey
from copd_lab.config import ExperimentConfig, MetricsConfig, OPDConfig
from copd_lab.config_io import to_dict
from copd_lab.distributed.placement import experts_of_slots, local_sharded_world
from copd_lab.distributed.shard import from_wire, to_wire, wire_bytes
from copd_lab.experiment import run_comparison
from copd_lab.local_world import world_from_dict
from copd_lab.sim.draws import SimDraws
from copd_lab.world import Request

KEYS = ["run", "method", "seed", "step", "branch", "pair", "metric"]
METHODS = ("base", "experts", "mixed", "static_opd:image->text", "mopd", "copd", "copd_frozen")


def small(**changes) -> ExperimentConfig:
    cfg = ExperimentConfig(expert_steps=20, distill_steps=6, methods=METHODS, checkpoint_every=0,
                           metrics=MetricsConfig(gap_every=5, eval_every=10))
    return dataclasses.replace(cfg, **changes)


def sharded(cfg: ExperimentConfig):
    owner = experts_of_slots(build_recipes(cfg))
    return local_sharded_world(list(dict.fromkeys(owner.values())), owner, partial(world_from_dict, to_dict(cfg)))


def assert_same_rows(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert len(a) == len(b) > 0
    merged = a.merge(b, on=KEYS, how="outer", suffixes=("_one", "_sharded"), validate="one_to_one")
    assert merged.value_one.notna().all() and merged.value_sharded.notna().all()
    assert (merged.value_one == merged.value_sharded).all(), merged[merged.value_one != merged.value_sharded].head()


@pytest.mark.parametrize("opd", [OPDConfig(), OPDConfig(estimator="topk")], ids=["sampled", "topk"])
def test_sharded_sim_gives_the_rows_of_one_world(opd):
    cfg = small(opd=opd)
    world = sharded(cfg)
    assert_same_rows(run_comparison(cfg, progress=False).metrics, run_comparison(cfg, progress=False,
                                                                                world=world).metrics)
    # CoPD's students sampled on their shards and were graded on their teachers' shards
    assert world.traffic["rollouts to teachers"] > 0 and world.traffic["gradients out"] > 0


def test_experts_own_their_branches_snapshots_and_merge():
    cfg = small(methods=("experts", "copd", "copd_frozen", "mopd"))
    recipes = build_recipes(cfg)
    owner = experts_of_slots(recipes)
    from copd_lab.algorithm.schedule import allocate_slots

    slots = allocate_slots(recipes)
    assert owner[slots[SlotKey("copd", "image")]] == "image" and owner[slots[SlotKey("experts", "video")]] == "video"
    assert owner[slots[SlotKey("copd", "merged")]] == "text"  # where the method's first branch lives
    # a snapshot lives with the branch it freezes
    assert owner[slots[SlotKey("copd_frozen", "image", frozen=True)]] == "image"
    assert owner[slots[SlotKey("mopd", "student")]] == "student" and 0 not in owner


def test_wire_round_trip_keeps_values_and_counts_bytes():
    draws = SimDraws(torch.arange(6).view(2, 3), torch.rand(2, 8, 1), 4)
    obj = {"a": [torch.ones(3, dtype=torch.float64), (torch.tensor([True, False]), 5)], "d": draws,
           "r": Request(1, (0, 2), teacher=3, beta=0.5, stream="copd")}
    wire = to_wire(obj)
    assert isinstance(wire["a"][0], np.ndarray) and isinstance(wire["d"].uniform, np.ndarray)
    assert wire_bytes(wire) == 3 * 8 + 2 + 6 * 8 + 16 * 4
    back = from_wire(wire)
    assert torch.equal(back["a"][0], obj["a"][0]) and torch.equal(back["d"].uniform, draws.uniform)
    assert back["r"] == obj["r"] and back["a"][1][1] == 5
    # a request's share of a call's draws is what that request draws alone
    part = draws.take([1])
    assert torch.equal(part.content, draws.content[1:]) and torch.equal(part.uniform, draws.uniform[:, 4:])


def test_the_example_ray_config_loads_and_placement_refusals_name_the_field():
    from copd_lab.config import ConfigError
    from copd_lab.config_io import load_config

    cfg = load_config("configs/ray_cluster.toml")
    assert cfg.placement.engine == "ray" and cfg.placement.num_cpus == 1.0 and cfg.checkpoint_every == 20
    for override, message in [("placement.num_cpus=0", "placement.num_cpus = 0.0 is not allowed: a number > 0"),
                              ("placement.engine='slurm'", "placement.engine = 'slurm' is not allowed: one of"),
                              ("placement.address='auto'", "placement.address = 'auto' is not allowed: empty unless"),
                              ("placement.num_gpus=-1", "placement.num_gpus = -1.0 is not allowed")]:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            load_config(None, [override])
    with pytest.raises(ConfigError, match="placement.engine = 'ray' is not allowed: 'local' with vlm.engine = 'vllm'"):
        load_config(None, ["placement.engine='ray'", "world='vlm'", "vlm.engine='vllm'"])


def test_ray_engine_without_ray_installed_is_refused_in_one_line(monkeypatch):
    import importlib.util

    from copd_lab.config import ConfigError, PlacementConfig
    from copd_lab.local_world import make_world

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(ConfigError, match=r"placement.engine = 'ray' is not allowed here: Ray is not installed "
                                          r"\(pip install -e '.\[ray\]'\)"):
        make_world(small(placement=PlacementConfig(engine="ray")))
