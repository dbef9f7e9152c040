"""Where the experts live: which shard owns each slot, and shards in this process (no Ray).

A run's experts are its branch names: a method's branch of that name, its frozen snapshots and the merged model of a
method whose first branch it is belong to that expert's shard (copd_lab.distributed.sharded); slot 0, the base, is
in every shard. `local_sharded_world` runs the shards in this process, every call copied as a process boundary would
copy it: the sharded world's logic without Ray (tests; placement.engine = "ray" runs them as actors).
"""

from __future__ import annotations

from collections.abc import Callable

from copd_lab.algorithm.recipes import Recipe
from copd_lab.algorithm.schedule import allocate_slots
from copd_lab.algorithm.slots import MERGED
from copd_lab.distributed.shard import Shard, local_copy
from copd_lab.distributed.sharded import ShardedWorld
from copd_lab.world import World


def experts_of_slots(recipes: list[Recipe]) -> dict[int, str]:
    """Slot -> the expert (a branch name) whose shard owns it; slot 0 (the base) is in every shard."""
    by_name = {r.name: r for r in recipes}
    return {slot: by_name[key.recipe].branches[0].name if key.branch == MERGED else key.branch
            for key, slot in allocate_slots(recipes).items() if slot != 0}


class LocalTransport:
    """Shards in this process; each call's arguments and answer are copied as a process boundary would."""

    def __init__(self, shards: dict[str, Shard]):
        self.shards = shards

    def submit(self, name: str, method: str, *args):
        return local_copy(getattr(self.shards[name], method)(*local_copy(args)))

    def gather(self, futures: list[tuple[str, object]]) -> list:
        return [value for _, value in futures]

    def close(self) -> None:
        self.shards.clear()


def local_sharded_world(experts: list[str], owner: dict[int, str], build_world: Callable[[], World]) -> ShardedWorld:
    """A ShardedWorld of shards in this process (no Ray): the same calls and copies, one process. Each shard's world
    is build_world() (e.g. a partial of copd_lab.local_world.world_from_dict)."""
    shards = {name: Shard(name, build_world) for name in experts}
    return ShardedWorld(LocalTransport(shards), experts, owner)
