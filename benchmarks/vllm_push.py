"""How to give vLLM new adapter weights every step: the options side by side, on the same GRPO batches.

    PYTHONPATH=tests/with_vllm/shim .venv-vllm/bin/python benchmarks/vllm_push.py   # needs vLLM (README)

Each round changes the three branches' adapters (as a GRPO step does) and samples their three batches; the
rows differ only in how the new weights reach vLLM:
* new folder, new id (the engine's AdapterPush): write, load under a fresh id, unload the old one;
* in place + prefix-cache reset: rewrite one folder per adapter, reload it under its id (`load_inplace`), then
  `reset_prefix_cache()` (without the reset, prompts longer than a KV block keep the old weights' cache);
* unchanged: the same weights every round, nothing pushed (the floor).
Median of --rounds; the push's share is the difference to the floor. Then the floor again with vLLM restarted at
max_lora_rank 32 (what a merge of three rank-8 experts needs): vLLM computes every adapter at max_lora_rank.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from copd_lab.config_io import load_config
from copd_lab.local_world import make_world
from copd_lab.vlm.vllm_engine import InPlacePush
from copd_lab.world import Request


def timed_round(world, requests, g) -> float:
    start = time.perf_counter()
    world.sample(requests, g.prompts_per_step, g.group_size, g.temperature)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    args = parser.parse_args()
    cfg = load_config(None, ["vlm.engine='vllm'"] + args.set, defaults={"world": "vlm"})
    world, g = make_world(cfg), cfg.grpo
    world.reset(4, 0)
    engine = world.engine
    requests = [Request(k + 1, (k,)) for k in range(3)]
    pushes = {"new folder, new id": engine.push,
              "in place + prefix reset": InPlacePush(engine.llm, engine.root, reset_prefix_cache=True)}
    rows = []
    for label, change in (("unchanged (floor)", False), ("new folder, new id", True),
                          ("in place + prefix reset", True)):
        engine.push = pushes.get(label, engine.push)
        times, writes = [], engine.push.writes
        for _ in range(args.rounds + 1):  # the first round warms up
            if change:
                with torch.no_grad():
                    for slot in (1, 2, 3):
                        for p in world.slots.params(slot):
                            p.add_(1e-4)
            times.append(timed_round(world, requests, g))
        rows.append((label, statistics.median(times[1:]), engine.push.writes - writes))
    engine.push = pushes["new folder, new id"]
    ranks = {engine.max_rank: rows[0][1]}
    engine.reserve(engine.max_loras, rank=32)  # a restart; the adapters are pushed again on the first round
    world.sample(requests, g.prompts_per_step, g.group_size, g.temperature)
    ranks[engine.max_rank] = statistics.median(
        timed_round(world, requests, g) for _ in range(args.rounds))
    floor = rows[0][1]
    print(f"\n3 GRPO batches of {g.prompts_per_step} x {g.group_size} rollouts, 3 adapters changed per round, "
          f"median of {args.rounds}")
    print(f"{'weights reach vLLM by':<28}{'s per round':>12}{'push ms':>9}{'folders':>9}")
    for label, seconds, writes in rows:
        print(f"{label:<28}{seconds:>12.3f}{(seconds - floor) * 1000:>9.0f}{writes:>9}")
    print(f"\n{'max_lora_rank':<28}{'s per round':>12}   (rank-8 adapters, unchanged)")
    for rank, seconds in ranks.items():
        print(f"{rank:<28}{seconds:>12.3f}")
    engine.close()


if __name__ == "__main__":
    main()
