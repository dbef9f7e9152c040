"""Run a comparison: every configured method, over seeds, on one world; write what a paper table needs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from copd_lab.config import ExperimentConfig, dump_toml
from copd_lab.policy import World
from copd_lab.recipes import Recipe, build_recipes
from copd_lab.results import format_table, results_table
from copd_lab.trainer import Trainer


@dataclass
class Comparison:
    config: ExperimentConfig
    recipes: list[Recipe]
    metrics: pd.DataFrame  # tidy rows: run, method, seed, step, branch, pair, metric, value
    results: pd.DataFrame  # one row per reported model (see results.results_table)

    def table(self) -> str:
        return format_table(self.results, self.config.domains, self.config.seeds)

    def save(self, out: str | Path) -> Path:
        """metrics.parquet, results.csv, results.md and the config.toml that reproduces them."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.metrics.to_parquet(out / "metrics.parquet", index=False)
        self.results.to_csv(out / "results.csv")
        (out / "results.md").write_text(self.table())
        (out / "config.toml").write_text(dump_toml(self.config))
        return out


def make_world(cfg: ExperimentConfig) -> World:
    if cfg.world == "sim":
        from copd_lab.sim.world import SimWorld

        # the simulator's tensors are tiny: one thread avoids thread start-up and oversubscription
        torch.set_num_threads(1)
        return SimWorld(cfg.sim, cfg.domains, cfg.grpo.lr)
    raise NotImplementedError(f"world = {cfg.world!r} is not available yet")


def run_comparison(cfg: ExperimentConfig, run: str = "run", progress: bool = True,
                   world: World | None = None) -> Comparison:
    """Train and evaluate every method for `cfg.seeds` seeds (seed, seed+1, ...)."""
    recipes = build_recipes(cfg)  # validates the methods before any work
    world = world or make_world(cfg)
    rows = []
    for i in range(cfg.seeds):
        rows += Trainer(cfg, world, recipes, seed=cfg.seed + i, run=run, progress=progress).run_all()
    metrics = pd.DataFrame(rows, columns=["run", "method", "seed", "step", "branch", "pair", "metric", "value"])
    listed = sorted(recipes, key=lambda r: cfg.methods.index(r.name) if r.name in cfg.methods else -1)
    return Comparison(cfg, recipes, metrics, results_table(metrics, listed, cfg.domains, cfg.metrics.score))
