"""How to give vLLM new adapter weights every step: the options side by side, on the same GRPO batches.

    PYTHONPATH=tests/with_vllm/shim .venv-vllm/bin/python benchmarks/vllm_push.py   # needs vLLM (README)

Each round changes the three branches' adapters (as a GRPO step does) and samples their three batches; the
rows differ only in how the new weights reach vLLM:
* new folder, new id (the engine's AdapterPush): write, load under a fresh id, unload the old one;
* in place + prefix-cache reset: rewrite one folder per adapter, reload it under its id (`load_inplace`), then
  `reset_prefix_cache()` (without the reset, prompts longer than a KV block keep the old weights' cache);
* unchanged: the same weights every round, nothing pushed (the floor).
Median of --rounds; the push's share is the difference to the floor.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time

import torch
from safetensors.torch import save_file

from copd_lab.config_io import load_config
from copd_lab.experiment import make_world
from copd_lab.policy import Request
from copd_lab.vlm.vllm_engine import AdapterPush


class InPlacePush(AdapterPush):
    """One folder per adapter, rewritten and reloaded under its first id; the prefix cache reset after."""

    def request(self, name, tensors, config):
        from vllm.lora.request import LoRARequest

        folder = self.root / f"inplace-{name}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        save_file(tensors, str(folder / "adapter_model.safetensors"))
        config.save_pretrained(str(folder))
        first = self.pushed.setdefault(name, (self.next_id, None))[0]
        self.next_id += 1
        self.llm.reset_prefix_cache()
        self.writes += 1
        return LoRARequest(name, first, str(folder), load_inplace=True)


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
    pushes = {"new folder, new id": engine.push, "in place + prefix reset": InPlacePush(engine.llm, engine.root)}
    pushes["in place + prefix reset"].next_id = 10_000  # ids of its own beside the engine's
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
            start = time.perf_counter()
            world.sample(requests, g.prompts_per_step, g.group_size, g.temperature)
            times.append(time.perf_counter() - start)
        rows.append((label, statistics.median(times[1:]), engine.push.writes - writes))
    engine.push = pushes["new folder, new id"]
    floor = rows[0][1]
    print(f"\n3 GRPO batches of {g.prompts_per_step} x {g.group_size} rollouts, 3 adapters changed per round, "
          f"median of {args.rounds}")
    print(f"{'weights reach vLLM by':<28}{'s per round':>12}{'push ms':>9}{'folders':>9}")
    for label, seconds, writes in rows:
        print(f"{label:<28}{seconds:>12.3f}{(seconds - floor) * 1000:>9.0f}{writes:>9}")
    engine.close()


if __name__ == "__main__":
    main()
