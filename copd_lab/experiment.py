"""Run a comparison: every configured method, over seeds, on one world; write what a paper table needs."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from copd_lab.checkpoint import checkpoint_path, load_checkpoint
from copd_lab.config import ConfigError, ExperimentConfig
from copd_lab.config_io import dump_toml
from copd_lab.lockstep import SlotView, run_side_by_side
from copd_lab.policy import World
from copd_lab.preflight import check_run, clear_run, model_folder
from copd_lab.recipes import Recipe, build_recipes
from copd_lab.results import format_table, results_table
from copd_lab.rows import ROW_COLUMNS, unpack_rows
from copd_lab.schedule import allocate_slots
from copd_lab.trainer import STATE_FORMAT, Trainer, resume_key


@dataclass
class Comparison:
    config: ExperimentConfig
    recipes: list[Recipe]
    metrics: pd.DataFrame  # tidy rows: run, method, seed, step, branch, pair, metric, value
    results: pd.DataFrame  # one row per reported model (see results.results_table)
    final: tuple[World, dict[str, int]] | None = None  # the last seed run here: its world (or its view of the
    # shared one) and slots ("<recipe>/<branch>" -> slot), holding the final weights (copd_lab.inspector reads them)

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
    """The world `cfg.world` names: the simulator (cfg.sim) or LoRA or full experts on a VLM (cfg.vlm); with
    placement.engine = "ray", the same world sharded over one Ray actor per expert (copd_lab.ray_cluster)."""
    if cfg.placement.engine == "ray":
        return _make_ray_world(cfg)
    if cfg.world == "sim":
        from copd_lab.sim.world import SimWorld

        # the simulator's tensors are tiny: one thread avoids thread start-up and oversubscription
        torch.set_num_threads(1)
        return SimWorld(cfg.sim, cfg.domains, cfg.grpo.lr)
    if cfg.world == "vlm":
        return _make_vlm_world(cfg)
    raise NotImplementedError(f"world = {cfg.world!r} is not available yet")


def _make_ray_world(cfg: ExperimentConfig) -> World:
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise ConfigError("placement.engine = 'ray' is not allowed here: Ray is not installed (pip install -e "
                          "'.[ray]')")
    from copd_lab.placement import experts_of_slots
    from copd_lab.ray_cluster import ray_sharded_world

    owner = experts_of_slots(build_recipes(cfg))
    return ray_sharded_world(cfg, list(dict.fromkeys(owner.values())), owner)


def _make_vlm_world(cfg: ExperimentConfig) -> World:
    from copd_lab.tasks import build_suites
    from copd_lab.vlm.adapters import LoraSettings
    from copd_lab.vlm.families import UnsupportedFamily
    from copd_lab.vlm.model_io import load_vlm
    from copd_lab.vlm.world import VLMWorld

    v = cfg.vlm
    dtype = None if v.dtype == "auto" else getattr(torch, v.dtype)
    if dtype is None and v.device != "cpu":
        dtype = torch.bfloat16  # load straight into the dtype the world runs the base in
    try:
        suites = build_suites(cfg.domains, v.n_train, v.n_eval, v.task_seed, v.difficulty)
    except (ValueError, TypeError) as err:  # a user's suite builder refused these settings
        raise ConfigError(f"domains = {list(cfg.domains)} with vlm.difficulty = {v.difficulty} is not allowed: "
                          f"{err}") from None
    try:
        model, processor = load_vlm(model_folder(v.model) or v.model, v.device, dtype,
                                    trust_remote_code=v.trust_remote_code)
    except Exception as err:  # preflight checked the folder; whatever transformers still refuses is named here
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ConfigError(f"vlm.model = {v.model!r} is not allowed: transformers could not load it "
                          f"({type(err).__name__}: {first[:300]})") from None
    try:
        return VLMWorld(model, processor, suites, LoraSettings(v.lora_r, v.lora_alpha),
                        max_new_tokens=v.max_new_tokens, device=v.device, lr=v.lr, eval_prompts=v.n_eval,
                        experts=v.experts, engine=v.engine)
    except UnsupportedFamily as err:
        raise ConfigError(f"vlm.model = {v.model!r} with domains = {list(cfg.domains)} is not allowed: {err}") from None
    except ValueError as err:  # the vLLM engine refused the model (vllm_engine.check_cpu_head_dim)
        if v.engine == "vllm":
            raise ConfigError(f"vlm.{err}") from None
        raise


def run_comparison(cfg: ExperimentConfig, run: str = "run", progress: bool | Callable = True,
                   world: World | None = None, out: str | Path | None = None, resume: bool = False,
                   overwrite: bool = False, on_eval: Callable[[list[dict], int], None] | None = None) -> Comparison:
    """Train and evaluate every method for `cfg.seeds` seeds (seed, seed+1, ...).

    progress: a tqdm bar per seed (True), none (False), or a factory of tqdm-like bars (a notebook's own).
    on_eval(rows so far, tick): called after each evaluation during training of the seeds run one by one.

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
    world = world or make_world(cfg)
    if overwrite and out is not None:
        clear_run(out)
    rows = []
    todo = [seed for seed, state in states.items() if state is None or not state["done"]]
    together = getattr(world, "runs_seeds_side_by_side", False) and len(todo) > 1
    ran, final = _side_by_side(cfg, world, recipes, todo, paths, states, run, progress) if together else ({}, None)
    for seed, path in paths.items():
        state = states.pop(seed)  # dropped once used: a finished seed's rows are not held twice
        if seed in ran:
            rows += ran.pop(seed)
        elif state is not None and state["done"]:
            rows += unpack_rows(state["rows"])
        else:
            trainer = Trainer(cfg, world, recipes, seed=seed, run=run, progress=progress, checkpoint=path,
                              on_eval=on_eval)
            rows += trainer.run_all(resume=state)
            final = (world, trainer.slots)
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


def _side_by_side(cfg: ExperimentConfig, world: World, recipes: list[Recipe], seeds: list[int], paths: dict,
                  states: dict, run: str, progress: bool | Callable) -> tuple[dict[int, list[dict]], tuple]:
    """The seeds' rows from one run of all of them side by side in `world` (copd_lab.lockstep): each seed draws
    and writes what it would alone, for about the time of one seed. Also the last seed's view and slots."""
    n_slots = len(allocate_slots(recipes))
    trainers = [Trainer(cfg, SlotView(world, i, len(seeds), n_slots, seed), recipes, seed=seed, run=run,
                        progress=progress, checkpoint=paths[seed]) for i, seed in enumerate(seeds)]
    rows = dict(zip(seeds, run_side_by_side(trainers, [states[seed] for seed in seeds])))
    return rows, (trainers[-1].world, trainers[-1].slots)


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
    """The dotted fields where two config dicts differ, with both values: "grpo.lr is 0.02 there, 0.05 here"."""
    out = []
    for key in sorted(set(stored) | set(ours)):
        a, b = stored.get(key, "<unset>"), ours.get(key, "<unset>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} is {a!r} there, {b!r} here")
    return out
