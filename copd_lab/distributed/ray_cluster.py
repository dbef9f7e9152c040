"""Experts as Ray actors: start a loopback cluster or join one, one placement group and one actor per expert.

`placement.engine = "ray"` makes copd_lab.local_world.make_world build a ShardedWorld (copd_lab.distributed.sharded)
whose shards are `Shard` actors, each in a placement group of its own with `placement.num_cpus` CPUs and
`placement.num_gpus` GPUs (fractions pack several tiny experts on one GPU). Each actor builds its own world from the
run's config: on a VLM run, each loads its own model. Calls to all actors are submitted before any answer is
awaited, so the experts of a tick work at once. A dead actor (killed, out of memory, its node lost) surfaces as
WorldLost naming the expert; the trainer adds the tick and the checkpoint kept.

A local cluster binds loopback only: Ray probes cloud metadata addresses unless started with the variables of
LOOPBACK_ENV and HOME holding a ray_bootstrap_config.yaml of `{}`, which must be set before Ray is imported (it
reads them then), and its node address is 127.0.0.1. Every listener is then on 127.0.0.1 (tests/with_ray checks
it); with the variables set after Ray's import, its servers listened on every interface (measured, `ss -ltnp`).
"""

from __future__ import annotations

import math
import os
import tempfile
import weakref
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

from copd_lab.config import ConfigError, ExperimentConfig, PlacementConfig
from copd_lab.config_io import to_dict
from copd_lab.distributed.shard import Shard
from copd_lab.distributed.sharded import ShardedWorld
from copd_lab.world import World, WorldLost

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
LOOPBACK = "127.0.0.1"  # the node address of a local cluster: every Ray server listens there only
READY_TIMEOUT_S = 300  # placement groups and actors (a VLM actor loads its model) must be up by then


def loopback_env() -> None:
    """Set what keeps a local Ray cluster on loopback (LOOPBACK_ENV, and a HOME that holds an empty bootstrap
    config); the Hugging Face cache stays where the user's HOME put it."""
    for name, value in LOOPBACK_ENV.items():
        os.environ.setdefault(name, value)
    if not (Path.home() / "ray_bootstrap_config.yaml").exists():
        os.environ.setdefault("HF_HOME", str(Path.home() / ".cache" / "huggingface"))
        home = Path(tempfile.mkdtemp(prefix="copd_lab_ray_home_"))
        (home / "ray_bootstrap_config.yaml").write_text("{}\n")
        os.environ["HOME"] = str(home)


def connect(placement: PlacementConfig, n_experts: int) -> None:
    """Join placement.address, or start a local loopback cluster with a logical CPU per expert's share (Ray's
    CPUs are scheduling units; the experts share the cores there are). A process already connected stays so."""
    if not placement.address:
        loopback_env()  # before Ray is imported: it reads its settings then
    import ray

    if ray.is_initialized():
        return
    if placement.address:
        ray.init(address=placement.address, logging_level="WARNING", log_to_driver=False)
        return
    cpus = max(os.cpu_count() or 1, math.ceil(placement.num_cpus * n_experts))
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="WARNING", log_to_driver=False,
             _node_ip_address=LOOPBACK)


class RayTransport:
    """Calls to Shard actors: submit returns Ray's future; gather awaits them in order and names a dead expert."""

    def __init__(self, actors: dict, groups: list):
        self.actors, self.groups = actors, groups
        self._closer = weakref.finalize(self, _release, list(actors.values()), groups)

    def submit(self, name: str, method: str, *args):
        return getattr(self.actors[name], method).remote(*args)

    def gather(self, futures: list[tuple[str, object]]) -> list:
        import ray

        out = []
        for name, future in futures:  # all were submitted already: awaiting in order loses no concurrency
            try:
                out.append(ray.get(future))
            except ray.exceptions.RayTaskError as err:  # the shard's own error (a refusal, NaN weights): as raised
                raise err.cause from None
            except (ray.exceptions.RayActorError, ray.exceptions.NodeDiedError, ray.exceptions.ObjectLostError) as err:
                first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
                raise WorldLost(f"the Ray actor of expert {name!r} died ({type(err).__name__}: {first})") from None
        return out

    def close(self) -> None:
        self._closer()


def _release(actors: list, groups: list) -> None:
    """Kill the actors and free their placement groups (a finished or failed run's resources go back)."""
    try:
        import ray
        from ray.util.placement_group import remove_placement_group

        if not ray.is_initialized():
            return
        for actor in actors:
            ray.kill(actor)
        for group in groups:
            remove_placement_group(group)
    except Exception:  # the cluster is already gone (interpreter exit): nothing left to free
        pass


def ray_sharded_world(cfg: ExperimentConfig, experts: list[str], owner: dict[int, str],
                      build_world: Callable[[dict], World]) -> ShardedWorld:
    """A ShardedWorld of one Shard actor per expert, each in its own placement group; each actor makes its world
    with build_world(the run's config as a dict, placed locally) (copd_lab.local_world.world_from_dict)."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    p = cfg.placement
    connect(p, len(experts))
    have = ray.cluster_resources()
    for field, key, each in (("num_cpus", "CPU", p.num_cpus), ("num_gpus", "GPU", p.num_gpus)):
        if each * len(experts) > have.get(key, 0.0) + 1e-9:
            raise ConfigError(f"placement.{field} = {each} is not allowed: {len(experts)} experts "
                              f"({', '.join(experts)}) need {each * len(experts):g} {key}s and the Ray cluster has "
                              f"{have.get(key, 0.0):g}")
    bundle = {key: value for key, value in (("CPU", p.num_cpus), ("GPU", p.num_gpus)) if value > 0}
    groups = [placement_group([bundle]) for _ in experts]
    try:
        ray.get([g.ready() for g in groups], timeout=READY_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        _release([], groups)
        raise ConfigError(f"placement.num_cpus = {p.num_cpus}, num_gpus = {p.num_gpus} is not allowed here: the "
                          f"placement groups of {len(experts)} experts were not placed in {READY_TIMEOUT_S} s"
                          ) from None
    # each actor builds the run's world in this process's place: in one process, with the model's absolute path
    shard_cfg = replace(cfg, placement=PlacementConfig())
    if cfg.world == "vlm" and Path(cfg.vlm.model).is_dir():
        shard_cfg = replace(shard_cfg, vlm=replace(cfg.vlm, model=str(Path(cfg.vlm.model).resolve())))
    remote = ray.remote(Shard)
    threads = max(1, int(p.num_cpus))
    actors = {name: remote.options(num_cpus=p.num_cpus, num_gpus=p.num_gpus, max_restarts=0, max_task_retries=0,
                                   scheduling_strategy=PlacementGroupSchedulingStrategy(group))
              .remote(name, partial(build_world, to_dict(shard_cfg)), threads) for name, group in zip(experts, groups)}
    return ShardedWorld(RayTransport(actors, groups), experts, owner)
