"""Real-world speed: where a CoPD tick's time goes on a VLM, and a whole 3-branch CoPD run.

    python benchmarks/vlm_speed.py                    # tiny Qwen2-VL on the CPU; last line copd_3x100_s=<s>
    python benchmarks/vlm_speed.py --device cuda      # the same on a GPU (bf16), then a ~0.5B Qwen2-VL-shaped
                                                      # model built from a config (random weights, no hub)
    python benchmarks/vlm_speed.py --device cuda --set "vlm.engine='vllm'"   # its CoPD runs rolled out by vLLM

    PYTHONPATH=tests/with_vllm/shim .venv-vllm/bin/python benchmarks/vlm_speed.py   # with the vLLM engine (README)

Each row times one piece of a tick both ways, side by side in this process (median of --repeats):
the work a group's rollouts share (vision features, the prompt's prefill) done once per rollout or
once per prompt, and scoring OPD batches under several teachers one adapter at a time or in one
mixed-adapter forward. Target (docs/design.md §6): a 3-branch CoPD run with 100 steps per branch
on the default tiny VLM in <= 180 s on 2 CPU cores (its defaults: 8 prompts x 8 rollouts per batch,
16 new tokens, gap metrics every 20 ticks, evaluations every 100 ticks and of the base and the merged
model at the end, 32 samples per eval prompt: `copd-lab run`'s defaults).

Then the rollout engines side by side on the same three GRPO batches (rollouts per second, under three
LoRA adapters and under the base alone), and a whole CoPD cycle per engine (seconds per tick); the vLLM
engine is in both tables when vLLM is installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time

import torch

from copd_lab.config_io import RUN_DEFAULTS, load_config
from copd_lab.experiment import run_comparison
from copd_lab.local_world import make_world
from copd_lab.vlm.engine import CachedEngine, HFGenerateEngine
from copd_lab.vlm.prompts import VLMPayload
from copd_lab.world import Request

# about 0.5B parameters in Qwen2-VL's layout: a Qwen2-0.5B-like decoder and a 12-block vision tower
HALF_B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
              num_key_value_heads=2, vision_embed_dim=1024, vision_depth=12, vision_num_heads=16)


def timed(fn, repeats: int, device: str) -> float:
    """Median seconds of fn() after one warm-up call."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def per_rollout(batch):
    """The same batch with every rollout carrying its own copy of its prompt (no prefix sharing)."""
    payload = batch.payload
    copies = [payload.expanded(r) for r in range(len(payload.prompts))]
    return type(batch)(batch.requests, batch.domain, batch.tokens, batch.mask, batch.rewards, batch.correct,
                       batch.sample_logprobs, VLMPayload(copies, 1, payload.temperature))


def tick_rows(overrides: list[str], repeats: int, device: str) -> list[tuple[str, str, float, float]]:
    """(piece, unit, shared-work-repeated seconds, shared-work-once seconds) for one tick's pieces."""
    cfg = load_config(None, overrides + ["vlm.engine='cached'"], defaults={"world": "vlm"})
    world, g = make_world(cfg), cfg.grpo
    world.reset(4, 0)  # base + 3 branches
    grpo = [Request(k + 1, (k,)) for k in range(3)]
    # Phase II of the hub topology (text hub): 4 OPD batches, each graded by another branch
    opd = [Request(1, (1,), teacher=2), Request(1, (2,), teacher=3), Request(2, (0,), teacher=1),
           Request(3, (0,), teacher=1)]
    engines = {name: cls(world.placeholders, world.eos, world.pad_id)
               for name, cls in (("hf", HFGenerateEngine), ("cached", CachedEngine))}

    def sample_with(name, requests):
        world.engine = engines[name]
        return lambda: world.sample(requests, g.prompts_per_step, g.group_size, g.temperature)

    rows = []
    rollouts = g.prompts_per_step * g.group_size
    rows.append((f"sample 3 GRPO batches ({3 * rollouts} rollouts)", "prompt prefill per rollout | per prompt",
                 timed(sample_with("hf", grpo), repeats, device), timed(sample_with("cached", grpo), repeats, device)))
    world.engine = engines["cached"]
    batch = world.sample(grpo, g.prompts_per_step, g.group_size, g.temperature)

    def train_forward(b):
        return lambda: world.token_logprobs(b, [1, 2, 3], grad=True).sum().backward()

    rows.append(("score 3 batches with grad + backward", "prompt per rollout | per prompt",
                 timed(train_forward(per_rollout(batch)), repeats, device),
                 timed(train_forward(batch), repeats, device)))
    opd_batch = world.sample(opd, g.prompts_per_step, g.group_size, g.temperature)
    teachers = [r.teacher for r in opd]

    def one_at_a_time():
        for i, t in enumerate(teachers):
            world.token_logprobs(opd_batch, [t if j == i else -1 for j in range(len(teachers))], grad=False)

    rows.append(("teacher-score 4 OPD batches (3 teachers)", "one adapter at a time | one mixed forward",
                 timed(one_at_a_time, repeats, device),
                 timed(lambda: world.token_logprobs(opd_batch, teachers, grad=False), repeats, device)))
    # The gap metrics' case: one student's rollouts graded by every neighbour (same prompts, no padding)
    student = world.sample([Request(1, (1,))], g.prompts_per_step, g.group_size, g.temperature)
    neighbours = [0, 2, 3]  # the base and the other two branches
    graded = student.take([0] * len(neighbours))
    rows.append((f"teacher-score 1 batch under {len(neighbours)} teachers", "one adapter at a time | one mixed forward",
                 timed(lambda: [world.token_logprobs(student, [t], grad=False) for t in neighbours], repeats, device),
                 timed(lambda: world.token_logprobs(graded, neighbours, grad=False), repeats, device)))
    for domain in (1, 2):
        kind = world.domains[domain]
        rows_p = list(range(g.prompts_per_step))
        rows_r = [i for i in rows_p for _ in range(g.group_size)]
        rows.append((f"encode {kind} prompts (vision tower)", "per rollout | per prompt",
                     timed(lambda d=domain, r=rows_r: world._encode(d, r, "train"), repeats, device),
                     timed(lambda d=domain, r=rows_p: world._encode(d, r, "train"), repeats, device)))
    return rows


def engine_rows(overrides: list[str], repeats: int, device: str, engines: list[str]) -> list[tuple]:
    """(engine, slots, rollouts, seconds) of sampling the same 3 GRPO batches with each engine."""
    cfg = load_config(None, overrides + ["vlm.engine='cached'"], defaults={"world": "vlm"})
    world, g = make_world(cfg), cfg.grpo
    world.reset(4, 0)  # base + 3 branches
    built = {"cached": world.engine, "hf_generate": HFGenerateEngine(world.placeholders, world.eos, world.pad_id)}
    if "vllm" in engines:
        from copd_lab.vlm.vllm_engine import engine_for_world

        start = time.perf_counter()
        built["vllm"] = engine_for_world(world, world.hf_model, world.slots.lora, cfg.vlm.device)
        built["vllm"].reserve(5)
        print(f"vLLM engine start: {time.perf_counter() - start:.1f} s")
    rows = []
    for slots, label in (([1, 2, 3], "3 LoRA adapters"), ([0, 0, 0], "base, no adapter")):
        requests = [Request(s, (k,)) for k, s in enumerate(slots)]
        for name in engines:
            world.engine = built[name]
            seconds = timed(lambda r=requests: world.sample(r, g.prompts_per_step, g.group_size, g.temperature),
                            repeats, device)
            rows.append((name, label, 3 * g.prompts_per_step * g.group_size, seconds))
    if "vllm" in built:
        built["vllm"].close()
    return rows


def copd_run(overrides: list[str], steps: int) -> tuple[float, float]:
    """(seconds to build the world and its engine, seconds of `copd-lab run` in it) for CoPD alone, 3 branches,
    `steps` steps per branch (S_RL:S_OPD 12:8)."""
    cfg = load_config(None, overrides + ["methods=['copd']", f"copd.cycles={max(1, steps // 20)}",
                                         "copd.rl_steps=12", "copd.opd_steps=8"], defaults=RUN_DEFAULTS)
    start = time.perf_counter()
    world = make_world(cfg)
    built = time.perf_counter()
    run_comparison(cfg, progress=False, world=world)
    done = time.perf_counter()
    if hasattr(world.engine, "close"):
        world.engine.close()
    return built - start, done - built


def report(title: str, rows: list) -> None:
    print(f"\n{title}")
    print(f"{'piece of a tick':<44}{'compared':<42}{'repeated s':>11}{'once s':>9}{'speed-up':>9}")
    for piece, unit, repeated, once in rows:
        print(f"{piece:<44}{unit:<42}{repeated:>11.3f}{once:>9.3f}{repeated / once:>8.1f}x")


# the engines' CoPD cycle: training ticks, with evaluation and gap metrics cut to a token amount (transformers'
# generate on one row per rollout would hold every eval rollout's cache at once: out of memory at run defaults)
LIGHT_EVAL = ["vlm.n_eval=8", "metrics.eval_samples=1", "metrics.eval_every=1000", "metrics.gap_every=1000",
              "metrics.gap_at_phase_end=false"]


def report_engines(rows: list, cycles: dict[str, tuple[float, float]], steps: int) -> None:
    print("\nrollout engines, the same 3 GRPO batches")
    print(f"{'engine':<14}{'slots':<20}{'rollouts':>9}{'s':>9}{'rollouts/s':>12}")
    for name, label, rollouts, seconds in rows:
        print(f"{name:<14}{label:<20}{rollouts:>9}{seconds:>9.3f}{rollouts / seconds:>12.0f}")
    print(f"\nCoPD 3 branches x {steps} steps per engine (run defaults, evaluation cut to 8 prompts x 1 sample)")
    print(f"{'engine':<14}{'world s':>9}{'run s':>9}{'s per tick':>12}")
    for name, (built, seconds) in cycles.items():
        print(f"{name:<14}{built:>9.1f}{seconds:>9.1f}{seconds / steps:>12.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--model", default=None, help="checkpoint folder (default: the config's vlm.model)")
    parser.add_argument("--steps", type=int, default=100, help="CoPD steps per branch of the end-to-end run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--tick-steps", type=int, default=20, help="CoPD steps per engine in the engines' table")
    args = parser.parse_args()
    overrides = [f"vlm.device='{args.device}'"] + ([f"vlm.model='{args.model}'"] if args.model else []) + args.set
    print(f"device {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    report("default tiny VLM", tick_rows(overrides, args.repeats, args.device))
    if args.device.startswith("cuda"):
        from tiny_models.build import build_tiny_qwen2vl

        with tempfile.TemporaryDirectory() as folder:
            path = build_tiny_qwen2vl(folder, seed=0, **HALF_B)
            big = [o for o in overrides if not o.startswith("vlm.model")] + [f"vlm.model='{path}'"]
            world = make_world(load_config(None, big, defaults={"world": "vlm"}))
            n_params = sum(p.numel() for p in world.hf_model.parameters())
            report(f"Qwen2-VL-shaped model, {n_params / 1e6:.0f}M parameters, bf16", tick_rows(big, args.repeats,
                                                                                                args.device))
            del world
            big_steps = 20
            seconds = sum(copd_run(big, big_steps))
            print(f"\nCoPD 3 branches x {big_steps} steps on the {n_params / 1e6:.0f}M model: {seconds:.1f} s "
                  f"({seconds / big_steps:.2f} s per tick)")
    engines = ["hf_generate", "cached"] + (["vllm"] if importlib.util.find_spec("vllm") else [])
    if "vllm" not in engines:
        print("\nvLLM is not installed here: the engines' tables leave it out (README: the vLLM engine)")
    rows = engine_rows(overrides, args.repeats, args.device, engines)
    cycles = {name: copd_run(overrides + LIGHT_EVAL + [f"vlm.engine='{name}'"], args.tick_steps) for name in engines}
    report_engines(rows, cycles, args.tick_steps)
    seconds = sum(copd_run(overrides, args.steps))
    print(f"\nCoPD 3 branches x {args.steps} steps per branch on the default tiny VLM "
          f"(copd-lab run's defaults): {seconds:.1f} s")
    print(f"copd_3x{args.steps}_s={seconds:.1f}")


if __name__ == "__main__":
    main()
