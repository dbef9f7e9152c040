"""Run a comparison: every configured method, over seeds, on one world; write what a paper table needs."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from copd_lab.algorithm.loop import run_seeds
from copd_lab.algorithm.recipes import Recipe, build_recipes
from copd_lab.algorithm.schedule import allocate_slots
from copd_lab.algorithm.side_by_side import SlotView
from copd_lab.algorithm.trainer import Trainer
from copd_lab.config import ConfigError, ExperimentConfig
from copd_lab.config_io import dump_toml
from copd_lab.local_world import check_world, make_world
from copd_lab.preflight import check_run, clear_run
from copd_lab.records.checkpoint import STATE_FORMAT, checkpoint_path, load_checkpoint, resume_key
from copd_lab.records.rows import ROW_COLUMNS, unpack_rows
from copd_lab.results import (
    format_paired,
    format_scores,
    format_table,
    paired_differences,
    results_table,
    scores_overall,
)
from copd_lab.world import SideBySide, World, has


@dataclass
class Comparison:
    config: ExperimentConfig
    recipes: list[Recipe]
    metrics: pd.DataFrame  # tidy rows: run, method, seed, step, branch, pair, metric, value
    results: pd.DataFrame  # one row per reported model (see results.results_table)
    final: tuple[World, dict[str, int]] | None = None  # the last seed run here: its world (or its view of the
    # shared one) and slots (copd_lab.algorithm.slots.SlotKey -> slot), holding the final weights (the inspector,
    # copd_lab.studies.inspector, reads them)

    def table(self) -> str:
        """The results table; with several seeds, then CoPD minus each other model, paired by seed; then, where the
        world logged more than one score, the ranking under each."""
        text = format_table(self.results, self.config.domains, self.config.seeds)
        if self.config.seeds > 1:
            paired = paired_differences(self.metrics, self.config.domains, list(self.results.index),
                                        self.config.metrics.score)
            if not paired.empty:
                text += "\n" + format_paired(paired, self.config.domains)
        scores = scores_overall(self.metrics, self.config.domains, list(self.results.index))
        if len(scores.columns) > 2:
            text += "\n" + format_scores(scores)
        return text

    def save(self, out: str | Path) -> Path:
        """metrics.parquet, results.csv, results.md and the config.toml that reproduces them."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.metrics.to_parquet(out / "metrics.parquet", index=False)
        self.results.to_csv(out / "results.csv")
        (out / "results.md").write_text(self.table())
        (out / "config.toml").write_text(dump_toml(self.config))
        return out


def run_comparison(cfg: ExperimentConfig, run: str = "run", progress: bool | Callable = True,
                   world: World | None = None, out: str | Path | None = None, resume: bool = False,
                   overwrite: bool = False, on_eval: Callable[[list[dict], int], None] | None = None) -> Comparison:
    """Train and evaluate every method for `cfg.seeds` seeds (seed, seed+1, ...).

    progress: a tqdm bar per seed (True), none (False), or a factory of tqdm-like bars (a notebook's own).
    on_eval(rows so far, tick): called after each evaluation during training of seeds run one by one (not side by
    side).

    out: run folder; each seed's state is checkpointed to out/checkpoints/seed<k>.pt (checkpoint.py). A
    folder that holds a run is refused unless `resume` or `overwrite` says what to do with it.
    resume: reuse those checkpoints: a finished seed is not run again, an interrupted one continues
    from its last checkpoint (same config required), with the same rows as an uninterrupted run on CPU.
    overwrite: remove the run files of `out` (preflight.RUN_FILES, nothing else) and start afresh.
    """
    recipes = build_recipes(cfg)  # validates the methods before any work
    check_run(cfg, out, resume, overwrite, world=world is None)
    paths = {seed: checkpoint_path(out, seed) if out is not None else None
             for seed in range(cfg.seed, cfg.seed + cfg.seeds)}
    # every seed's checkpoint is read and checked before any work
    states = {seed: _resumable(cfg, path) if resume and path is not None else None for seed, path in paths.items()}
    if world is None:
        world = make_world(cfg)
    else:
        check_world(cfg, world)
    if overwrite and out is not None:
        clear_run(out)
    todo = [seed for seed, state in states.items() if state is None or not state["done"]]
    ran, final = _train(cfg, world, recipes, todo, paths, states, run, progress, on_eval)
    rows = []
    for seed in paths:
        state = states.pop(seed)  # dropped once used: a finished seed's rows are not held twice
        rows += ran.pop(seed) if seed in ran else unpack_rows(state["rows"])
    metrics = pd.DataFrame(rows, columns=list(ROW_COLUMNS))
    listed = sorted(recipes, key=lambda r: cfg.methods.index(r.name) if r.name in cfg.methods else -1)
    return Comparison(cfg, recipes, metrics, results_table(metrics, listed, cfg.domains, cfg.metrics.score), final)


_CACHED: OrderedDict[str, Comparison] = OrderedDict()  # config TOML -> its comparison, most recent last
CACHE_SIZE = 32


def cached_comparison(cfg: ExperimentConfig) -> Comparison:
    """run_comparison without progress bars or a folder, cached by the config (its TOML): identical settings are
    not run again (the playground's knobs, the mechanism table's shared runs). The CACHE_SIZE latest are kept."""
    key = dump_toml(cfg)
    if key in _CACHED:
        _CACHED.move_to_end(key)
    else:
        _CACHED[key] = run_comparison(cfg, progress=False)
        while len(_CACHED) > CACHE_SIZE:
            _CACHED.popitem(last=False)
    return _CACHED[key]


def _train(cfg: ExperimentConfig, world: World, recipes: list[Recipe], seeds: list[int], paths: dict, states: dict,
           run: str, progress: bool | Callable, on_eval: Callable | None) -> tuple[dict[int, list[dict]], tuple | None]:
    """Each seed's rows, and the last seed's world (or its view of the shared one) and slots. A world that runs
    seeds side by side (copd_lab.algorithm.side_by_side) runs them all in one loop, each seed drawing and writing
    what it would alone, for about the time of one seed; other worlds run them one after another."""
    together = has(world, SideBySide) and len(seeds) > 1
    n_slots = len(allocate_slots(recipes))
    rows, final = {}, None
    for batch in [seeds] if together else [[seed] for seed in seeds]:
        trainers = [Trainer(cfg, SlotView(world, i, len(batch), n_slots, seed) if together else world, recipes,
                            seed=seed, run=run, progress=progress, checkpoint=paths[seed],
                            on_eval=None if together else on_eval) for i, seed in enumerate(batch)]
        rows.update(zip(batch, run_seeds(trainers, [states[seed] for seed in batch])))
        final = (trainers[-1].world, trainers[-1].slots)
    return rows, final


def _resumable(cfg: ExperimentConfig, path: Path) -> dict | None:
    """The checkpoint at `path` if there is one; an error if it was written under another config."""
    if not path.exists():
        return None
    state = load_checkpoint(path)
    if state.get("format", 1) != STATE_FORMAT:
        raise ConfigError(f"--resume is not allowed with {path}: it was written by another copd_lab version (state "
                          f"format {state.get('format', 1)}, this one reads {STATE_FORMAT}); use a new --out or "
                          f"--overwrite")
    ours, theirs = resume_key(cfg), resume_key(state["config"])
    if theirs != ours:
        raise ConfigError(f"--resume is not allowed with {path}: it was written under another config "
                          f"({'; '.join(config_differences(theirs, ours))}); use the same config, a new --out or "
                          f"--overwrite")
    return state


def config_differences(stored: dict, ours: dict, prefix: str = "") -> list[str]:
    """The dotted fields where two config dicts differ, with both values: "sim.lr is 0.02 there, 0.05 here"."""
    out = []
    for key in sorted(set(stored) | set(ours)):
        a, b = stored.get(key, "<unset>"), ours.get(key, "<unset>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} is {a!r} there, {b!r} here")
    return out
