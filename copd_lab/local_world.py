"""The world a config names, built in this process: the simulator (cfg.sim) or experts on a VLM (cfg.vlm); with
placement.engine = "ray", the same world sharded over one Ray actor per expert, each actor building its own local
world with `world_from_dict` (copd_lab.distributed gets that builder handed in, so it imports no world)."""

from __future__ import annotations

import torch

from copd_lab.algorithm.recipes import build_recipes
from copd_lab.config import ConfigError, ExperimentConfig
from copd_lab.config_io import build
from copd_lab.preflight import model_folder
from copd_lab.world import ExactAccuracy, ShardableSlots, World, missing, require_capability


def make_world(cfg: ExperimentConfig) -> World:
    """The world `cfg.world` names: the simulator (cfg.sim) or LoRA or full experts on a VLM (cfg.vlm); with
    placement.engine = "ray", the same world sharded over one Ray actor per expert
    (copd_lab.distributed.ray_cluster)."""
    if cfg.placement.engine == "ray":
        world = _make_ray_world(cfg)
    elif cfg.world == "sim":
        from copd_lab.sim.world import SimWorld

        # the simulator's tensors are tiny: one thread avoids thread start-up and oversubscription
        torch.set_num_threads(1)
        world = SimWorld(cfg.sim, cfg.domains)
    else:
        world = _make_vlm_world(cfg)
    check_world(cfg, world)
    return world


def check_world(cfg: ExperimentConfig, world: World) -> None:
    """Once, where a world is built or handed in: it implements every capability it declares (copd_lab.world), and
    declares those the config needs."""
    broken = missing(world)
    if broken:
        raise TypeError(f"{type(world).__name__} declares the capabilities {broken} of copd_lab.world but lacks "
                        f"their methods")
    if cfg.metrics.score == "acc_exact":
        require_capability(world, ExactAccuracy, "metrics.score", cfg.metrics.score,
                f"world = {cfg.world!r} cannot enumerate its answers (use acc_sampled)")


def _make_ray_world(cfg: ExperimentConfig) -> World:
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise ConfigError("placement.engine = 'ray' is not allowed here: Ray is not installed (pip install -e "
                          "'.[ray]')")
    from copd_lab.distributed.placement import experts_of_slots
    from copd_lab.distributed.ray_cluster import ray_sharded_world

    if cfg.world == "sim":
        from copd_lab.sim.world import SimWorld as kind
    else:
        from copd_lab.vlm.world import VLMWorld as kind
    require_capability(kind, ShardableSlots, "placement.engine", "ray", "each expert's shard holds a world of its own")
    owner = experts_of_slots(build_recipes(cfg))
    return ray_sharded_world(cfg, list(dict.fromkeys(owner.values())), owner, world_from_dict)


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


def world_from_dict(config: dict) -> World:
    """The local world of a config given as a dict (config_io.to_dict): what each shard of a sharded world builds."""
    return make_world(build(ExperimentConfig, config))
