"""What Ray costs: the same CoPD run in one process and on one Ray actor per expert, side by side.

    python benchmarks/ray_overhead.py                 # sim K = 3 and 10, tiny VLM K = 3; hub and all-pairs
    python benchmarks/ray_overhead.py --quick         # a few ticks each (the test)

Per run: seconds per tick in one process and on Ray, where the Ray run's time goes (rollouts, teacher scoring,
the update, the measurements), and the bytes moved per tick by kind: rollouts sent to teachers' shards, the
scores that come back (log-probs; whole distributions for the gap metrics), dL/d(log-probs) sent and gradients
back, weights at copies and merges (and the measurements' task vectors), the sampled rollouts back from each
shard. A last table measures one Ray call: its latency, and its throughput on a numpy buffer (docs/scaling.md
builds its cluster model on these figures). On 2 CPU cores Ray is not faster: the experts share the cores.

The tiny VLM has three task suites, so its K is 3 (K = 10 would need ten suites registered in every actor).
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

from copd_lab.algorithm.recipes import build_recipes
from copd_lab.algorithm.schedule import timeline
from copd_lab.config_io import load_config
from copd_lab.experiment import run_comparison
from copd_lab.local_world import make_world
from copd_lab.records.measure import Meter

ROOT = Path(__file__).resolve().parents[1]
PHASES = {"sample": "rollout", "pair_logprobs": "teacher scoring", "token_logprobs": "update", "step": "update",
          "full_logprobs": "update", "non_finite": "update"}
_in_measure = [False]
_seconds: Counter = Counter()


def _measured(method):
    def run(self, *args, **kwargs):
        _in_measure[0], start = True, time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            _in_measure[0] = False
            _seconds["measurements"] += time.perf_counter() - start
    return run


for _name in ("measure_groups", "accuracy_of", "conflict_of"):
    setattr(Meter, _name, _measured(getattr(Meter, _name)))


class Timed:
    """A world whose calls are timed by phase (measurement calls apart); everything else is the world's."""

    def __init__(self, world):
        self.__dict__["_world"] = world

    def __getattr__(self, name):
        value = getattr(self._world, name)
        if not callable(value) or name not in PHASES:
            return value

        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return value(*args, **kwargs)
            finally:
                if not _in_measure[0]:
                    _seconds[PHASES[name]] += time.perf_counter() - start
        return call


def config(world: str, k: int, topology: str, quick: bool, model: str):
    domains = [f"d{i}" for i in range(k)] if world == "sim" else ["text", "image", "video"][:k]
    steps = (2, 2, 1) if quick else ((10, 10, 2) if world == "sim" else (3, 3, 1))
    settings = [f"world='{world}'", f"domains={domains}", "methods=['copd']", f"copd.topology='{topology}'",
                f"copd.hub='{domains[0]}'", f"copd.rl_steps={steps[0]}", f"copd.opd_steps={steps[1]}",
                f"copd.cycles={steps[2]}", "checkpoint_every=0", "metrics.gap_every=10", "metrics.eval_every=20"]
    if world == "vlm":
        settings += [f"vlm.model='{model}'", "grpo.prompts_per_step=4", "grpo.group_size=4", "vlm.n_eval=4",
                     "metrics.gap_prompts=2", "metrics.eval_samples=1", "vlm.max_new_tokens=16"]
    return load_config(None, settings)


def run_once(cfg, ray: bool, cpus: float):
    """(seconds per tick, seconds by phase per tick, bytes by kind per tick, seconds to build the world) of one
    run; the world is built apart from the timed run (on Ray: placement groups, actors, a world in each)."""
    from dataclasses import replace

    from copd_lab.config import PlacementConfig

    if ray:
        cfg = replace(cfg, placement=PlacementConfig(engine="ray", num_cpus=cpus))
    start = time.perf_counter()
    world = make_world(cfg)
    built = time.perf_counter() - start
    ticks = max(end for _, end in timeline(build_recipes(cfg)).values())
    _seconds.clear()
    start = time.perf_counter()
    run_comparison(cfg, progress=False, world=Timed(world))
    seconds = time.perf_counter() - start
    traffic = Counter(getattr(world, "traffic", {}))
    if ray:
        world.close()
    return (seconds / ticks, {k: v / ticks for k, v in _seconds.items()}, {k: v / ticks for k, v in traffic.items()},
            built)


KINDS = [("rollouts to teachers", ["rollouts to teachers"]), ("scores back", ["scores back"]),
         ("grads", ["gradients out", "gradients back"]), ("weights", ["weights out", "weights back"]),
         ("rollouts back", ["rollouts back", "draws back"])]


def call_costs(sizes_mb: list[float]) -> list[tuple[str, float]]:
    """A Ray actor call's latency and its throughput on numpy buffers (there and back)."""
    import ray

    @ray.remote(num_cpus=0.1)
    class Echo:
        def echo(self, x):
            return x

    echo = Echo.remote()
    ray.get(echo.echo.remote(0))
    rows = []
    start, n = time.perf_counter(), 200
    for _ in range(n):
        ray.get(echo.echo.remote(0))
    rows.append(("empty call, round trip", (time.perf_counter() - start) / n * 1e3))
    for mb in sizes_mb:
        x = np.ones(int(mb * 2**20) // 4, dtype=np.float32)
        ray.get(echo.echo.remote(x))
        start, n = time.perf_counter(), 5
        for _ in range(n):
            ray.get(echo.echo.remote(x))
        rows.append((f"{mb:g} MB there and back, MB/s", 2 * mb * n / (time.perf_counter() - start)))
    ray.kill(echo)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few ticks per run (the benchmark's test)")
    parser.add_argument("--sizes", default="3,10", help="sim expert counts K (default 3,10)")
    parser.add_argument("--no-vlm", action="store_true", help="skip the tiny VLM runs")
    parser.add_argument("--cpus", type=float, default=0.2, help="placement.num_cpus per expert (logical)")
    parser.add_argument("--model", default=str(ROOT / "tiny_models" / "qwen2vl-tiny"))
    args = parser.parse_args()
    from copd_lab.config import PlacementConfig
    from copd_lab.distributed.ray_cluster import connect

    runs = [("sim", int(k), t) for k in args.sizes.split(",") for t in ("hub", "all_pairs")]
    if not args.no_vlm:
        runs += [("vlm", 3, t) for t in ("hub", "all_pairs")]
    connect(PlacementConfig(engine="ray", num_cpus=args.cpus), max(k for _, k, _ in runs))
    head = ("| world | K | topology | one process s/tick | Ray s/tick | Ray / one | Ray start s | Ray: rollout, "
            "teacher scoring, update, measurements s/tick | "
            + " | ".join(f"{name} KB/tick" for name, _ in KINDS) + " |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for world, k, topology in runs:
        cfg = config(world, k, topology, args.quick, args.model)
        one, _, _, _ = run_once(cfg, ray=False, cpus=args.cpus)
        far, phases, traffic, start = run_once(cfg, ray=True, cpus=args.cpus)
        split = ", ".join(f"{phases.get(p, 0.0):.3f}" for p in ("rollout", "teacher scoring", "update",
                                                               "measurements"))
        kb = " | ".join(f"{sum(traffic.get(x, 0.0) for x in keys) / 1024:.1f}" for _, keys in KINDS)
        print(f"| {world} | {k} | {topology} | {one:.4f} | {far:.4f} | {far / one:.1f}x | {start:.1f} | {split} "
              f"| {kb} |", flush=True)
    print()
    print("| one Ray call (2 CPU cores, loopback) | value |")
    print("|---|---|")
    for name, value in call_costs([1.0] if args.quick else [1.0, 16.0]):
        print(f"| {name} | {value:.2f}{' ms' if 'empty' in name else ''} |")


if __name__ == "__main__":
    main()
