"""One GRPO step of copd_lab against TRL's GRPOTrainer: same model, prompts, batch and settings, side by side.

    pip install -e '.[bench]'                 # TRL, CPU only
    python benchmarks/vs_trl.py               # prints a table, last line trl_over_copd_step_ratio=<x>

Target (docs/design.md §6): an RLVR step at least 2x faster than TRL's, i.e. a ratio >= 2.

copd_lab's step is the real one: a Trainer over the one-expert "experts" recipe on `--domain`, calling the loop's
one GRPO update (`copd_lab.algorithm.update.train_step`: sample G rollouts per prompt with their log-probs, group
advantages, clipped loss, AdamW step). TRL's is `GRPOTrainer.train()` with LoRA from a peft config. Both load the
same checkpoint and train a fresh LoRA on it, and the train split holds exactly `--prompts` rows, so every step of
both sides samples the same prompts (each side in its own order). The settings, printed in the table header, are the
same on both sides; TRL's batch knobs are set so that one optimizer step takes all P*G rollouts of one `generate`
call: per_device_train_batch_size = generation_batch_size = P*G, no gradient accumulation.

Steady state, alternating: TRL's train() runs warm-up plus measured steps; a TrainerCallback, at the end of each
TRL step, runs and times one copd_lab step. A TRL step is the time from the end of one callback to the start of
the next, so it holds everything TRL's loop does per step (data loading, logging) and none of copd_lab's.
The breakdown is exclusive time inside wrapped calls (a call's time less that of wrapped calls inside it).

Work one side does and the other does not (with these settings):
- copd_lab re-scores every rollout after sampling (a no-grad forward for the sampling log-probs, π_old); TRL
  skips it when one update follows each generation and uses the grad forward's log-probs, detached.
- TRL runs the image processor twice per rollout row and the vision tower once per rollout in generation and
  again in the grad forward; copd_lab encodes each prompt's image once and reuses the features.
- TRL computes per-token entropies in the grad forward, the gradient norm, and its logged metrics every step;
  copd_lab computes the full-vocabulary logits of every position in its forwards (the vocabulary is tiny here).
- Group advantages: TRL divides by the unbiased std + 1e-4, copd_lab by the population std + 1e-6 (same cost).
Video rows are not supported: TRL's GRPOTrainer takes images from a dataset, not videos.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never reach for a hub

import argparse
import functools
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable

import torch
import transformers
import trl
from datasets import Dataset
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback
from trl import GRPOConfig, GRPOTrainer

from copd_lab.algorithm import update
from copd_lab.algorithm.recipes import build_recipe
from copd_lab.algorithm.slots import SlotKey
from copd_lab.algorithm.trainer import Trainer
from copd_lab.config import CoPDConfig, ExperimentConfig, VLMConfig
from copd_lab.config import GRPOConfig as CopdGRPOConfig
from copd_lab.local_world import make_world
from copd_lab.tasks import TaskSuite
from copd_lab.vlm.adapters import LoraSettings
from copd_lab.vlm.model_io import load_vlm
from copd_lab.vlm.processing import placeholder_token_ids
from copd_lab.world import Request

LR = 1e-3  # AdamW, both sides (copd_lab's vlm.lr default for tiny models)
LORA = LoraSettings(r=8, alpha=16.0)  # rank 8, alpha 16, dropout 0, text decoder linears only (TEXT_DECODER)
TEMPERATURE = 1.0  # pure sampling: no top-k, no top-p
CLIP_LOW, CLIP_HIGH = 0.2, 0.28

GENERATE, RESCORE, ROLLOUT, FORWARD, UPDATE, OTHER = (
    "generate", "re-score", "rollout other", "grad forward", "backward+AdamW", "other")
PHASES = (GENERATE, RESCORE, ROLLOUT, FORWARD, UPDATE, OTHER)
PHASE_NOTES = {
    GENERATE: "model.generate of all rollouts",
    RESCORE: "no-grad forward for the sampling log-probs",
    ROLLOUT: "rest of the rollout: processor, vision tower (copd_lab), decode, verifier, advantages",
    FORWARD: "forward with grad (TRL: vision tower again, entropies)",
    UPDATE: "backward, AdamW step (TRL: grad norm too)",
    OTHER: "step total less the above: loss math, data loading, logging",
}


class Phases:
    """Exclusive wall time per phase: a wrapped call's time less the time of the wrapped calls inside it."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._inner: list[float] = []  # per open wrapped call, the time of the wrapped calls inside it

    def wrap(self, owner: object, name: str, phase: str | Callable[..., str]) -> None:
        """Time `owner.name` (a method, wrapped on this instance only) as `phase`, or as phase(*args).

        A method the library no longer has is left alone: its time lands in OTHER.
        """
        original = getattr(owner, name, None)
        if original is None:
            return

        @functools.wraps(original)
        def timed(*args, **kwargs):
            label = phase(*args, **kwargs) if callable(phase) else phase
            self._inner.append(0.0)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                self.seconds[label] += elapsed - self._inner.pop()
                if self._inner:
                    self._inner[-1] += elapsed

        setattr(owner, name, timed)

    def take(self, total: float) -> dict[str, float]:
        """This step's phases, with OTHER = total less the timed ones; the counters start again at 0."""
        out = dict(self.seconds)
        out[OTHER] = total - sum(out.values())
        self.seconds.clear()
        return out


# ------------------------------------------------------------------------------------------ copd_lab


def copd_lab_step(args: argparse.Namespace) -> tuple[Callable[[int], None], Phases, TaskSuite, dict]:
    """copd_lab's GRPO step as a function of the tick, its phase timer, the task suite and rollout stats."""
    cfg = ExperimentConfig(
        world="vlm", domains=(args.domain,), methods=("experts",), seed=args.seed,
        copd=CoPDConfig(hub=args.domain),  # unused by the experts recipe, but must name a domain
        grpo=CopdGRPOConfig(group_size=args.group, prompts_per_step=args.prompts, temperature=TEMPERATURE,
                            clip_low=CLIP_LOW, clip_high=CLIP_HIGH, kl_coef=0.0, aggregation="token_mean",
                            scale_by_std=True, epochs=1),
        # n_train = prompts: each step draws every train row once, the same prompts TRL's steps see
        vlm=VLMConfig(model=args.model, lora_r=LORA.r, lora_alpha=LORA.alpha, max_new_tokens=args.max_new_tokens,
                      lr=LR, n_train=args.prompts, n_eval=1),
    )
    world = make_world(cfg)
    trainer = Trainer(cfg, world, [build_recipe("experts", cfg)], seed=args.seed, progress=False)
    world.reset(len(trainer.slots), args.seed)
    torch.manual_seed(args.seed)
    request = Request(trainer.slots[SlotKey("experts", args.domain)], (0,))
    owner = ("experts", args.domain, "")

    phases = Phases()
    stats: dict[str, list[float]] = defaultdict(list)
    phases.wrap(getattr(world, "engine", None), "generate", GENERATE)
    phases.wrap(world, "sample", ROLLOUT)
    phases.wrap(world, "token_logprobs", lambda batch, slots, grad: FORWARD if grad else RESCORE)
    phases.wrap(world, "step", UPDATE)
    sample = world.sample

    def sample_and_record(*a, **k):
        batch = sample(*a, **k)
        lengths = batch.mask.sum(-1)
        stats["mean tokens"].append(float(lengths.mean()))
        stats["max tokens"].append(float(lengths.max()))
        stats["reward"].append(float(batch.rewards.mean()))
        return batch

    world.sample = sample_and_record

    def stop(row: int, what: str) -> None:
        raise trainer.non_finite_error(owner, what)

    # the loop's own step of one request (copd_lab.algorithm.loop.run_seeds calls exactly this)
    return lambda tick: update.train_step(world, cfg, [request], stop), phases, world.suites[0], stats


# ------------------------------------------------------------------------------------------ TRL


def trl_dataset(suite: TaskSuite) -> Dataset:
    """The suite's train rows as TRL wants them: a conversational prompt, and `images` for image rows only."""
    data = suite.train.map(lambda row: {"prompt": [{"role": "user", "content": row["prompt"]}]})
    return data if suite.modality == "image" else data.remove_columns("images")


def trl_reward(suite: TaskSuite) -> Callable[..., list[float]]:
    """The suite's verifier as a TRL reward function (TRL passes the other dataset columns by name)."""

    def verifier(prompts, completions, **columns) -> list[float]:
        names = [c for c in suite.train.column_names if c != "prompt"]
        rows = [{name: columns[name][i] for name in names if name in columns} for i in range(len(completions))]
        return [suite.verifier(completion[-1]["content"], row) for completion, row in zip(completions, rows)]

    return verifier


def trl_config(args: argparse.Namespace, output_dir: str, placeholders: list[int]) -> GRPOConfig:
    rollouts = args.prompts * args.group
    return GRPOConfig(
        output_dir=output_dir, use_cpu=True, bf16=False, seed=args.seed,
        # one generate call of P*G rollouts, one optimizer step on all of them
        per_device_train_batch_size=rollouts, gradient_accumulation_steps=1, generation_batch_size=rollouts,
        num_generations=args.group, max_completion_length=args.max_new_tokens,
        temperature=TEMPERATURE, top_k=0, top_p=1.0, generation_kwargs={"suppress_tokens": placeholders},
        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, optim="adamw_torch",
        max_grad_norm=0.0,  # copd_lab does not clip gradients
        beta=0.0, num_iterations=1, epsilon=CLIP_LOW, epsilon_high=CLIP_HIGH,
        loss_type="dapo", scale_rewards="group",  # dapo: Σ over all tokens / #tokens, copd_lab's token_mean
        activation_checkpointing=False,  # TRL's default trades compute for memory; copd_lab does not
        max_steps=args.warmup + args.steps, logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True,
    )


class Alternate(TrainerCallback):
    """At the end of each TRL step, runs and times one copd_lab step; a TRL step runs from callback to callback."""

    def __init__(self, copd_step: Callable[[int], None], copd_phases: Phases, trl_phases: Phases):
        self.copd_step, self.copd_phases, self.trl_phases = copd_step, copd_phases, trl_phases
        self.copd: list[dict[str, float]] = []  # per step: phase -> seconds, "total" too
        self.trl: list[dict[str, float]] = []
        self.mark = self.optimizer_start = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.mark = time.perf_counter()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.optimizer_start = time.perf_counter()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.trl_phases.seconds[UPDATE] += time.perf_counter() - self.optimizer_start

    def on_step_end(self, args, state, control, **kwargs):
        total = time.perf_counter() - self.mark
        self.trl.append({**self.trl_phases.take(total), "total": total})
        start = time.perf_counter()
        self.copd_step(state.global_step)
        total = time.perf_counter() - start
        self.copd.append({**self.copd_phases.take(total), "total": total})
        self.mark = time.perf_counter()


def trl_trainer(args: argparse.Namespace, suite: TaskSuite, output_dir: str) -> tuple[GRPOTrainer, Phases]:
    model, processor = load_vlm(args.model)  # its own copy: TRL patches the model's forward
    peft_config = LORA.peft_config()
    trainer = GRPOTrainer(model=model, reward_funcs=trl_reward(suite),
                          args=trl_config(args, output_dir, placeholder_token_ids(processor)),
                          train_dataset=trl_dataset(suite), processing_class=processor, peft_config=peft_config)
    trainer.remove_callback(PrinterCallback)  # the log dict of every step would bury the table
    phases = Phases()
    phases.wrap(trainer, "_generate_single_turn", GENERATE)
    phases.wrap(trainer, "_generate_and_score_completions", ROLLOUT)
    phases.wrap(trainer, "_prepare_inputs", ROLLOUT)
    phases.wrap(trainer, "compute_loss", FORWARD)
    phases.wrap(trainer, "training_step", UPDATE)  # exclusive: the backward
    return trainer, phases


# ------------------------------------------------------------------------------------------ report


def row(name: str, steps: list[dict[str, float]], tokens: str, reward: float) -> str:
    totals = [s["total"] for s in steps]
    phases = "".join(f"{statistics.median(s.get(p, 0.0) for s in steps):>15.3f}" if any(p in s for s in steps)
                     else f"{'-':>15}" for p in PHASES)  # "-": this side never does that work
    return (f"{name:<10}{statistics.median(totals):>9.3f}{min(totals):>8.3f}{max(totals):>8.3f}{phases}"
            f"{tokens:>12}{reward:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="measured steps per side")
    parser.add_argument("--warmup", type=int, default=2, help="steps per side before measuring")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step")
    parser.add_argument("--group", type=int, default=8, help="rollouts per prompt (G)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="longest completion")
    parser.add_argument("--model", default="tiny_models/qwen2vl-tiny", help="VLM checkpoint folder")
    parser.add_argument("--domain", choices=("text", "image"), default="image",
                        help="task suite (video: TRL's GRPOTrainer takes no videos)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads, both sides")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if min(args.steps, args.prompts, args.max_new_tokens) < 1 or args.warmup < 0 or args.group < 2:
        parser.error("--steps, --prompts, --max-new-tokens >= 1, --warmup >= 0, --group >= 2")
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()

    copd_step, copd_phases, suite, copd_stats = copd_lab_step(args)
    with tempfile.TemporaryDirectory() as output_dir:
        trainer, trl_phases = trl_trainer(args, suite, output_dir)
        alternate = Alternate(copd_step, copd_phases, trl_phases)
        trainer.add_callback(alternate)
        trainer.train()
    logs = [log for log in trainer.state.log_history if "completions/mean_length" in log][args.warmup:]
    copd, trl_steps = alternate.copd[args.warmup:], alternate.trl[args.warmup:]
    measured = slice(args.warmup, None)

    rollouts = args.prompts * args.group
    print(f"copd_lab vs TRL {trl.__version__} GRPOTrainer: one GRPO step on {args.model}, {args.domain} tasks, "
          f"torch {torch.__version__} float32 CPU, torch threads {args.threads}, seed {args.seed}")
    print(f"both: {args.prompts} prompts x {args.group} rollouts = {rollouts} rollouts per optimizer step (the same "
          f"{args.prompts} prompts every step), max {args.max_new_tokens} new tokens, temperature {TEMPERATURE} "
          f"(top-k 0, top-p 1), vision placeholders suppressed")
    print(f"both: LoRA r={LORA.r} alpha={LORA.alpha:g} dropout 0 on the text decoder's linears, AdamW lr {LR:g} "
          f"wd 0 constant, no grad clipping, KL 0, 1 update per batch, clip eps {CLIP_LOW}/{CLIP_HIGH}, token-mean "
          f"loss, group-std advantages")
    print(f"TRL: per_device_train_batch_size={rollouts} gradient_accumulation_steps=1 generation_batch_size="
          f"{rollouts} num_generations={args.group} loss_type=dapo beta=0 num_iterations=1 gradient_checkpointing="
          f"False bf16=False use_vllm=False")
    print(f"{args.warmup} warm-up steps, then {args.steps} measured per side, alternating TRL, copd_lab, TRL, ...; "
          f"seconds; phases are medians of exclusive time:")
    for phase in PHASES:
        print(f"  {phase:<15}{PHASE_NOTES[phase]}")
    print(f"{'side':<10}{'median':>9}{'min':>8}{'max':>8}" + "".join(f"{p:>15}" for p in PHASES)
          + f"{'tokens':>12}{'reward':>8}")
    print(row("copd_lab", copd,
              f"{statistics.mean(copd_stats['mean tokens'][measured]):.1f}/"
              f"{max(copd_stats['max tokens'][measured]):.0f}",
              statistics.mean(copd_stats["reward"][measured])))
    print(row("TRL", trl_steps,
              f"{statistics.mean(log['completions/mean_length'] for log in logs):.1f}/"
              f"{max(log['completions/max_length'] for log in logs):.0f}",
              statistics.mean(log["reward"] for log in logs)))
    print("tokens: mean/max completion tokens per rollout; reward: mean verifier reward of the measured steps")
    ratio = statistics.median(s["total"] for s in trl_steps) / statistics.median(s["total"] for s in copd)
    print(f"trl_over_copd_step_ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
