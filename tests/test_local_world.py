"""Where a world is built (copd_lab.local_world): the capabilities it declares are checked once, and a config that
needs one the world lacks is refused in one line; a world without the optional ones still runs every method."""

from __future__ import annotations

import dataclasses

import pytest

from copd_lab.config import ConfigError, ExperimentConfig, MetricsConfig, SimConfig
from copd_lab.experiment import run_comparison
from copd_lab.local_world import check_world, make_world
from copd_lab.sim.world import SimWorld
from copd_lab.world import ExactAccuracy, ShardableSlots, SideBySide, TokenText, has, missing, require_capability

SMALL = ExperimentConfig(expert_steps=12, distill_steps=4, seeds=2, methods=("base", "experts", "mopd", "copd"),
                         metrics=MetricsConfig(gap_every=4, eval_every=6))


class PlainSimWorld(SimWorld):
    """The simulator declaring none of the optional capabilities: a world as a user might first write one."""

    capabilities = frozenset()


class BrokenSimWorld(SimWorld):
    """Declares a capability it does not implement."""

    capabilities = frozenset({ExactAccuracy, TokenText})
    token_text = None


def plain(cfg: ExperimentConfig = SMALL) -> PlainSimWorld:
    return PlainSimWorld(cfg.sim, cfg.domains)


def test_the_simulator_declares_and_keeps_its_capabilities():
    world = make_world(SMALL)
    assert world.capabilities == {ExactAccuracy, ShardableSlots, SideBySide, TokenText} and missing(world) == []
    assert has(world, SideBySide) and not has(plain(), SideBySide)


def test_a_declared_capability_that_is_not_there_is_refused_where_the_world_is_built():
    world = BrokenSimWorld(SMALL.sim, SMALL.domains)
    assert missing(world) == ["TokenText"]
    with pytest.raises(TypeError, match=r"BrokenSimWorld declares the capabilities \['TokenText'\]"):
        run_comparison(SMALL, progress=False, world=world)


def test_a_config_that_needs_a_missing_capability_is_refused_in_one_line():
    cfg = dataclasses.replace(SMALL, metrics=MetricsConfig(score="acc_exact"))
    with pytest.raises(ConfigError) as err:
        check_world(cfg, plain(cfg))
    assert str(err.value) == (
        "metrics.score = 'acc_exact' is not allowed: world = 'sim' cannot enumerate its answers (use acc_sampled), "
        "and PlainSimWorld lacks the capability ExactAccuracy (copd_lab.world)")
    why = "each expert's shard holds a world"
    with pytest.raises(ConfigError, match="lacks the capability ShardableSlots"):
        require_capability(PlainSimWorld, ShardableSlots, "placement.engine", "ray", why)
    require_capability(SimWorld, ShardableSlots, "placement.engine", "ray", why)


def test_a_world_without_side_by_side_or_exact_accuracy_runs_seeds_one_by_one_with_the_same_rows():
    together = run_comparison(SMALL, run="r", progress=False).metrics
    alone = run_comparison(SMALL, run="r", progress=False, world=plain())
    exact = "acc_exact|acc_calibrated|calibrated_temperature"  # what a world that enumerates its answers adds
    assert not alone.metrics.metric.str.contains(exact).any()  # it cannot enumerate its answers
    assert alone.results.index.tolist() == ["base", "expert:text", "expert:image", "expert:video", "mopd", "copd",
                                            "copd[text]", "copd[image]", "copd[video]"]
    kept = together[~together.metric.str.contains(exact)].reset_index(drop=True)
    assert kept.equals(alone.metrics), kept.compare(alone.metrics)  # seeds alone, in order: the same rows


def test_the_sim_world_takes_its_lr_from_sim_lr():
    world = SimWorld(SimConfig(lr=0.05), ("text", "image"))
    assert world.lr_setting == "sim.lr = 0.05"
