"""Experiment configuration: frozen dataclasses with one documented default per field.

Configs are validated once, at the edge (TOML file, ``--set`` overrides, notebook knobs: config_io.py),
so a bad value fails before any work starts, with a message naming the field, the value and what is
allowed.
Defaults follow the paper (docs/paper.md §1) where it gives a value; where it is silent the
field's comment says so.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from typing import Any


class ConfigError(ValueError):
    """A config value is not allowed; the message names field, value and what is allowed."""


def require(ok: bool, name: str, value: Any, allowed: str) -> None:
    """Raise ConfigError naming the field, its value and what is allowed, unless `ok`."""
    if not ok:
        raise ConfigError(f"{name} = {value!r} is not allowed: {allowed}")


def require_finite(config: Any) -> None:
    """Every float of a config (also inside tuples and tables) is finite: TOML reads `inf` and `nan` as numbers,
    and an infinite learning rate or weight would pass a `> 0` check and crash deep inside a run."""
    for f in fields(config):
        value = getattr(config, f.name)
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, tuple) else ()
        for key, item in [(None, value), *items]:
            if isinstance(item, float) and not math.isfinite(item):
                name = f.name if key is None else f"{f.name}.{key}" if isinstance(value, dict) else f"{f.name}[{key}]"
                raise ConfigError(f"{name} = {item!r} is not allowed: a finite number")


# Sizes a run can reach in reasonable time and memory on one machine; larger values are refused before any work
# (a typo such as expert_steps=99999999999999 would otherwise start a run of 3e14 ticks).
MAX_TICKS = 1_000_000  # ticks of one seed's comparison (every method side by side)
MAX_SEEDS = 1_000
MAX_SEED = 2**32 - 1  # seeds are unsigned 32-bit, as numpy's and most frameworks' are
MAX_ROLLOUTS = 16_384  # rollouts of one request: grpo.prompts_per_step * grpo.group_size
DOMAIN_NAME = re.compile(r"[A-Za-z0-9_-]+")  # "/" names a recipe's branch, "<-" an edge, "." a config table

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "constant")
OPD_ESTIMATORS = ("sampled", "topk", "full")
TOPOLOGIES = ("hub", "all_pairs", "ring", "one_way", "edges")
MERGE_METHODS = ("average", "task_arithmetic", "ties", "dare")
TEACHER_MODES = ("live", "frozen")
COMBINE_MODES = ("mean", "split", "tokens")
WORLDS = ("sim", "vlm")
GAP_PAIRS = ("auto", "all", "edges")
ALL_PAIRS_UP_TO = 10  # metrics.gap_pairs = auto measures every pair up to this many branches


@dataclass(frozen=True)
class GRPOConfig:
    """Phase I: GRPO with verifiable rewards (paper Eq. 7)."""

    group_size: int = 8  # G rollouts per prompt (paper: 8)
    prompts_per_step: int = 8  # prompts per branch per step; rollouts per step = G * this (64)
    temperature: float = 1.0  # rollout temperature (paper: 1.0)
    clip_low: float = 0.2  # ε_low of the clipped ratio (paper: 0.2)
    clip_high: float = 0.28  # ε_high, "clip-higher" (paper: 0.28)
    kl_coef: float = 0.0  # KL to the base as reference; paper's framework disables it (probably)
    aggregation: str = "token_mean"  # token_mean | seq_mean_token_mean (Eq. 7) | constant (Dr.GRPO)
    scale_by_std: bool = True  # divide group-centred rewards by the group std (False: Dr.GRPO)
    epochs: int = 1  # policy updates per sampled batch; >1 makes the clip active

    def __post_init__(self) -> None:
        require_finite(self)
        require(self.group_size >= 2, "group_size", self.group_size, "an integer >= 2 (GRPO needs a group)")
        require(self.prompts_per_step >= 1, "prompts_per_step", self.prompts_per_step, "an integer >= 1")
        require(1e-3 <= self.temperature <= 1e3, "temperature", self.temperature,
                "a number in [0.001, 1000] (below, logits / temperature overflow; greedy accuracy is measured apart)")
        require(0 <= self.clip_low < 1, "clip_low", self.clip_low, "a number in [0, 1)")
        require(self.clip_high >= 0, "clip_high", self.clip_high, "a number >= 0")
        require(self.kl_coef >= 0, "kl_coef", self.kl_coef, "a number >= 0")
        require(self.aggregation in AGGREGATIONS, "aggregation", self.aggregation, f"one of {AGGREGATIONS}")
        require(self.epochs >= 1, "epochs", self.epochs, "an integer >= 1")
        require(self.group_size <= 1024, "group_size", self.group_size, "an integer in [2, 1024]")
        require(self.group_size * self.prompts_per_step <= MAX_ROLLOUTS, "prompts_per_step", self.prompts_per_step,
                f"at most {MAX_ROLLOUTS} rollouts per step (prompts_per_step * group_size = "
                f"{self.prompts_per_step * self.group_size})")
        require(self.epochs <= 100, "epochs", self.epochs, "an integer in [1, 100]")


@dataclass(frozen=True)
class OPDConfig:
    """Phase II signal: on-policy distillation from a teacher branch (paper Eq. 8)."""

    beta: float = 1.0  # β, weight of the OPD advantage; the paper gives no value
    estimator: str = "sampled"  # sampled (paper: log-ratio of the sampled token) | topk | full reverse KL
    topk: int = 16  # support size of the top-k estimator (thunlp/OPD default 16)
    teacher: str = "live"  # live: neighbours' current weights; frozen: snapshot at phase start (open)
    # How a branch's batches of one Phase II update weigh against each other (the paper: "combine and update",
    # no weights given). mean: each batch alike, so the hub of K=3 keeps 1/3 on its own GRPO loss and each spoke
    # 1/2 | split: the own GRPO batch weighs rlvr_weight and the OPD batches share the rest, whatever the number
    # of neighbours | tokens: each batch by its share of the branch's tokens, one token-mean over the union (naive
    # multi-teacher OPD: longer answers take more of the update). Default mean: the plain reading of one update on
    # B_nat ∪ (∪_j B_j).
    combine: str = "mean"
    rlvr_weight: float = 0.5  # the own GRPO batch's weight with combine = "split"
    # Divide each OPD batch's advantages β·(log π_teacher − log π_student) by their std over its tokens, to GRPO's
    # unit scale (raw ones are 1-5 nats in the simulator). Default off: the paper's advantage is the raw log-ratio,
    # and β sets its scale. Sampled estimator only.
    normalize: bool = False

    def __post_init__(self) -> None:
        require_finite(self)
        require(self.beta >= 0, "beta", self.beta, "a number >= 0")
        require(self.combine in COMBINE_MODES, "combine", self.combine, f"one of {COMBINE_MODES}")
        require(0 <= self.rlvr_weight <= 1, "rlvr_weight", self.rlvr_weight, "a number in [0, 1]")
        require(not self.normalize or self.estimator == "sampled", "normalize", self.normalize,
                "false with estimator = 'topk' or 'full' (it scales the sampled estimator's advantages)")
        require(self.estimator in OPD_ESTIMATORS, "estimator", self.estimator, f"one of {OPD_ESTIMATORS}")
        require(self.topk >= 1, "topk", self.topk, "an integer >= 1")
        require(self.teacher in TEACHER_MODES, "teacher", self.teacher, f"one of {TEACHER_MODES}")


@dataclass(frozen=True)
class MergeConfig:
    """How branches become one model at the end (the paper only says "simple parameter merging")."""

    method: str = "average"  # average (default reading) | task_arithmetic | ties | dare
    weights: tuple[float, ...] = ()  # one weight per branch; empty means uniform
    density: float = 0.5  # TIES/DARE: fraction of task-vector entries kept
    scale: float = 1.0  # task arithmetic/TIES/DARE: λ on the merged task vector

    def __post_init__(self) -> None:
        require_finite(self)
        require(self.method in MERGE_METHODS, "method", self.method, f"one of {MERGE_METHODS}")
        require(all(w >= 0 for w in self.weights), "weights", self.weights, "non-negative numbers")
        require(not self.weights or sum(self.weights) > 0, "weights", self.weights,
                "non-negative numbers, at least one > 0 (or empty: uniform)")
        require(0 < self.density <= 1, "density", self.density, "a number in (0, 1]")
        require(self.scale > 0, "scale", self.scale, "a number > 0")


@dataclass(frozen=True)
class MixedConfig:
    """Mixed-data RLVR: one branch on every domain's prompts pooled."""

    weights: tuple[float, ...] = ()  # each domain's share of the pooled RL batch, one per domain (empty: equal);
    # each pooled prompt's domain is drawn by these weights from the method's random stream

    def __post_init__(self) -> None:
        require_finite(self)
        require(all(w >= 0 for w in self.weights), "weights", self.weights, "non-negative numbers")
        require(not self.weights or sum(self.weights) > 0, "weights", self.weights,
                "non-negative numbers, at least one > 0 (or empty: equal shares)")


@dataclass(frozen=True)
class CoPDConfig:
    """Co-Evolving Policy Distillation: N cycles of S_RL GRPO steps then S_OPD mixed steps (Alg. 1)."""

    rl_steps: int = 12  # S_RL per cycle (paper: only the ratio S_RL:S_OPD = 1.5:1 is given)
    opd_steps: int = 8  # S_OPD per cycle
    cycles: int = 10  # N; default gives 200 steps per branch, the experts' budget
    topology: str = "hub"  # hub (paper, K=3) | all_pairs | ring | one_way | edges
    hub: str = "text"  # hub branch for topology=hub (paper: the text branch)
    edges: tuple[str, ...] = ()  # "student<-teacher" list, used when topology = "edges"
    drop_edges: tuple[str, ...] = ()  # "student<-teacher" edges removed (the direction ablations)
    beta_per_edge: dict[str, float] = field(default_factory=dict)  # "student<-teacher" -> β override
    step_rates: dict[str, float] = field(default_factory=dict)  # branch -> steps per tick in (0, 1]
    adaptive_threshold: float = 0.0  # >0: a pair's OPD phase starts when its top-k overlap drops below
    adaptive_check_every: int = 4  # adaptive schedule: ticks between overlap checks
    report_branches: bool = True  # also evaluate each branch just before the merge (rows copd[<domain>]); in the
    # VLM world each is one more final evaluation (about 16 s each for the tiny model at copd-lab run's defaults)

    def __post_init__(self) -> None:
        require_finite(self)
        for name in ("rl_steps", "opd_steps"):
            require(getattr(self, name) >= 0, name, getattr(self, name), "an integer >= 0")
        require(self.rl_steps + self.opd_steps >= 1, "rl_steps", self.rl_steps, "rl_steps + opd_steps >= 1")
        require(self.cycles >= 1, "cycles", self.cycles, "an integer >= 1")
        require(self.topology in TOPOLOGIES, "topology", self.topology, f"one of {TOPOLOGIES}")
        for name in ("edges", "drop_edges"):
            for edge in getattr(self, name):
                require("<-" in edge, name, edge, 'edges written "student<-teacher", e.g. "text<-image"')
        for edge, beta in self.beta_per_edge.items():
            require("<-" in edge, "beta_per_edge", edge, 'keys written "student<-teacher"')
            require(beta >= 0, f"beta_per_edge.{edge}", beta, "a number >= 0")
        for branch, rate in self.step_rates.items():
            require(0 < rate <= 1, f"step_rates.{branch}", rate, "a number in (0, 1]")
        require(0 <= self.adaptive_threshold < 1, "adaptive_threshold", self.adaptive_threshold,
                 "a number in [0, 1) (0 disables the adaptive schedule)")
        require(self.adaptive_check_every >= 1, "adaptive_check_every", self.adaptive_check_every,
                 "an integer >= 1")
        require(self.cycles * (self.rl_steps + self.opd_steps) <= MAX_TICKS, "cycles", self.cycles,
                f"cycles * (rl_steps + opd_steps) <= {MAX_TICKS:,} ticks (here "
                f"{self.cycles * (self.rl_steps + self.opd_steps):,})")


@dataclass(frozen=True)
class SimConfig:
    """The simulator world (copd_lab/sim, docs/simulator.md): prompts are feature vectors, each domain's answers
    follow its own rule over them, and a tiny policy is warm-started into a capable base that RL sharpens."""

    shared_features: int = 8  # features every domain's prompts have (the common part of the input)
    own_features: int = 8  # features of a domain's own (zero in the other domains' prompts: its modality)
    train_prompts: int = 4096  # prompts per domain RLVR and OPD draw from (many: RL learns rules, not prompts)
    eval_prompts: int = 128  # held-out prompts per domain (disjoint from train): accuracy and gap measurements
    answer_len: int = 4  # T, digits per answer: a format is chosen at the first token and must be held to the end
    answer_lens: tuple[int, ...] = ()  # each domain's answer length, one per domain, each in [1, answer_len] (empty:
    # answer_len for all): unequal lengths give token-mean losses unequal weights per domain (Open-MOPD's token budget)
    digits: int = 6  # Q, values a digit takes
    styles: int = 8  # M, equally rewarded ways to write an answer: lets experts drift apart while accurate
    # (the drift knob; 1 = off)
    style_habit: float = 0.5  # extra probability of domain d's habitual style (d mod M) in the base's pretraining
    # data: experts of different domains then drift to different styles (0: only chance breaks the symmetry)
    filler: int = 8  # tokens that are never right, so the vocabulary (digits * styles + filler) is well above k
    shared_skill: float = 0.5  # s, share of every domain's rule that is common to all domains, on the shared
    # features (the transfer knob)
    conflict: float = 0.25  # c, share of a domain's rule that reads the shared features in a way opposed to the
    # other domains' (the interference knob); the rest, 1 - s - c, reads the domain's own features
    pretrain_mix: tuple[float, ...] = ()  # each domain's share of the base's pretraining prompts, one weight per
    # domain (empty: equal): a base that saw more of one domain fits the shared features that domain's way
    base_steps: int = 150  # supervised warm-start steps that make the base π_0 (its skill; 0: a random network)
    base_lr: float = 0.05  # Adam lr of the warm start
    lr: float = 0.01  # the simulator world's Adam lr (paper: 1e-6 for a 4B model); the VLM world's is vlm.lr. 0.01:
    # the largest of 0.01, 0.02 at which no expert's own-domain accuracy falls below the base (docs/simulator.md)
    init_scale: float = 1.0  # scale of the network's random initialisation, before the warm start
    task_seed: int = 0  # seed of the task (rules, prompts) and of the base: fixed across run seeds
    capacity: int = 48  # units of the policy's domain-gated hidden layer (copd_lab/sim/net.py): a multiplicative
    # path that lets one model read the shared features one way per domain; 48 = twice what three domains' opposed
    # rules need (0: one linear readout for every domain, which cannot represent opposed rules)
    style_private: float = 0.5  # ρ, share of a digit's logit read from its style's own row: 1 = each style a
    # private copy of the skill (learnt in one style, absent in another: the absorption barrier); 0 = styles are
    # formats over one skill (no barrier)

    @property
    def vocab_size(self) -> int:
        """Tokens of the simulator's vocabulary: each style writes the digits with tokens of its own, plus filler."""
        return self.digits * self.styles + self.filler

    def n_features(self, n_domains: int) -> int:
        """Features of a prompt: the shared ones, then a block of own features per domain."""
        return self.shared_features + n_domains * self.own_features

    def __post_init__(self) -> None:
        require_finite(self)
        for name, least, most in (("shared_features", 1, 256), ("own_features", 1, 256), ("train_prompts", 1, 8192),
                                  ("eval_prompts", 1, 4096), ("answer_len", 1, 16), ("digits", 2, 64),
                                  ("styles", 1, 16), ("filler", 0, 1024), ("base_steps", 0, 10_000)):
            # the toy policy's tensors stay small enough to run in a second
            require(least <= getattr(self, name) <= most, name, getattr(self, name),
                    f"an integer in [{least}, {most:,}]")
        require(0 <= self.capacity <= 1024, "capacity", self.capacity, "an integer in [0, 1,024]")
        require(all(isinstance(n, int) and 1 <= n <= self.answer_len for n in self.answer_lens), "answer_lens",
                self.answer_lens, f"empty or integers in [1, answer_len = {self.answer_len}]")
        for name in ("shared_skill", "conflict", "style_habit", "style_private"):
            require(0 <= getattr(self, name) <= 1, name, getattr(self, name), "a number in [0, 1]")
        require(self.shared_skill + self.conflict <= 1, "conflict", self.conflict,
                f"a number in [0, {1 - self.shared_skill:g}] (shared_skill + conflict <= 1: the rest of a rule reads "
                f"the domain's own features)")
        require(all(w >= 0 for w in self.pretrain_mix) and (not self.pretrain_mix or sum(self.pretrain_mix) > 0),
                "pretrain_mix", self.pretrain_mix, "empty (equal) or weights >= 0 with a positive sum")
        require(0 < self.base_lr <= 1, "base_lr", self.base_lr, "a number in (0, 1]")
        require(self.lr > 0, "lr", self.lr, "a number > 0")
        require(0 <= self.task_seed <= MAX_SEED, "task_seed", self.task_seed, f"an integer in [0, {MAX_SEED}]")
        require(0 < self.init_scale <= 10, "init_scale", self.init_scale, "a number in (0, 10]")


VLM_DTYPES = ("auto", "float32", "bfloat16", "float16")
VLM_ENGINES = ("cached", "hf_generate", "vllm")
VLM_EXPERTS = ("lora", "full")


@dataclass(frozen=True)
class VLMConfig:
    """The real world: LoRA or full-weight experts on one Hugging Face VLM, trained on the built-in task suites."""

    model: str = "tiny_models/qwen2vl-tiny"  # checkpoint folder (or a cached hub name); build the tiny one
    # with `python -m tiny_models.build --out tiny_models/qwen2vl-tiny`
    device: str = "cpu"  # cpu (float32) | cuda, cuda:N (the base runs in bf16, adapters and full copies in float32)
    dtype: str = "auto"  # dtype the weights load in (auto: as stored; bf16 on cuda); the world then casts
    experts: str = "lora"  # lora: a peft adapter per expert on one shared base (memory: about one model) |
    # full: a float32 copy of the text decoder per expert (K models, plus AdamW's two moments each)
    engine: str = "cached"  # rollouts: cached (each prompt prefilled once for its group, all slots in one batch) |
    # hf_generate (transformers' generate, one row per rollout: the reference; lora experts only) |
    # vllm (one vLLM engine, each slot a LoRA adapter; Qwen2-VL, lora experts only; `pip install -e '.[gpu]'`)
    lora_r: int = 8  # rank of every expert's LoRA adapter (experts = "lora")
    lora_alpha: float = 16.0  # LoRA alpha; ΔW = (alpha / r) B A
    max_new_tokens: int = 16  # longest completion a rollout generates
    lr: float = 1e-3  # AdamW lr of every expert (tiny models; ~1e-5 for 2B models); sim.lr is the sim's
    n_train: int = 512  # training prompts per domain
    n_eval: int = 64  # eval prompts per domain (accuracy and gap measurements use all of them)
    difficulty: int = 1  # task difficulty level of the built-in suites (1 = easiest)
    task_seed: int = 0  # seed of the task draw; fixed across run seeds
    trust_remote_code: bool = False  # let transformers run a checkpoint's own Python code (off: safe)

    def __post_init__(self) -> None:
        require_finite(self)
        require(bool(self.model), "model", self.model, "a checkpoint folder or hub name")
        require(bool(re.fullmatch(r"cpu|cuda(:[0-9]+)?", self.device)), "device", self.device, "cpu, cuda or cuda:N")
        require(self.dtype in VLM_DTYPES, "dtype", self.dtype, f"one of {VLM_DTYPES}")
        require(self.experts in VLM_EXPERTS, "experts", self.experts, f"one of {VLM_EXPERTS}")
        require(self.engine in VLM_ENGINES, "engine", self.engine, f"one of {VLM_ENGINES}")
        require(not (self.engine == "hf_generate" and self.experts == "full"), "engine", self.engine,
                 "'cached' with experts = 'full' (transformers' generate runs one set of weights per call)")
        require(not (self.engine == "vllm" and self.experts == "full"), "engine", self.engine,
                 "'cached' with experts = 'full' (vLLM serves LoRA adapters on one base, not full copies)")
        for name in ("lora_r", "max_new_tokens", "n_train", "n_eval", "difficulty"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "an integer >= 1")
        require(self.lora_alpha > 0, "lora_alpha", self.lora_alpha, "a number > 0")
        require(0 <= self.task_seed <= MAX_SEED, "task_seed", self.task_seed, f"an integer in [0, {MAX_SEED}]")
        require(self.lr > 0, "lr", self.lr, "a number > 0")
        for name, most in (("max_new_tokens", 32_768), ("n_train", 1_000_000), ("n_eval", 100_000),
                           ("lora_r", 1024)):
            require(getattr(self, name) <= most, name, getattr(self, name), f"an integer in [1, {most:,}]")


@dataclass(frozen=True)
class MetricsConfig:
    """What is measured and how often (docs/design.md §4)."""

    topk: int = 10  # k of the top-k overlap O_k (paper: 10)
    nucleus: float = 0.9  # mass of the sets nucleus_overlap compares (O_k over the tokens that carry mass: the top
    # tokens holding this much probability, at most topk of them)
    gap_every: int = 20  # ticks between behavioural-gap measurements
    gap_at_phase_end: bool = True  # also measure the gap at every phase end (the saw-tooth's corners)
    gap_prompts: int = 16  # eval prompts per domain whose student rollouts the gap metrics use (0: all of them;
    # the sim has 16; the VLM's 64 make every measurement 4x dearer for a smoother curve)
    eval_every: int = 100  # ticks between per-domain accuracy evaluations during training
    eval_samples: int = 8  # sampled completions per eval prompt for sampled pass@1
    gap_pairs: str = "auto"  # which branch pairs the gap metrics measure: all (every ordered pair of a method's
    # branches) | edges (the pairs CoPD's topology joins, copd.topology, both ways) | auto (all up to 10 branches,
    # edges beyond: K = 30 has 870 ordered pairs); each branch against the base always
    score: str = "auto"  # metric in the results table: auto (acc_exact where the world computes it, the
    # simulator; else acc_sampled) | acc_exact | acc_calibrated (the simulator: each model at its best temperature
    # on train prompts) | acc_sampled | acc_greedy | reward

    def __post_init__(self) -> None:
        require_finite(self)
        require(self.topk >= 1, "topk", self.topk, "an integer >= 1")
        require(0 < self.nucleus <= 1, "nucleus", self.nucleus, "a number in (0, 1]")
        require(self.gap_every >= 1, "gap_every", self.gap_every, "an integer >= 1")
        require(self.gap_prompts >= 0, "gap_prompts", self.gap_prompts, "an integer >= 0 (0: all eval prompts)")
        require(self.eval_every >= 1, "eval_every", self.eval_every, "an integer >= 1")
        require(self.eval_samples >= 1, "eval_samples", self.eval_samples, "an integer >= 1")
        require(self.gap_pairs in GAP_PAIRS, "gap_pairs", self.gap_pairs, f"one of {GAP_PAIRS}")
        allowed = ("auto", "acc_exact", "acc_calibrated", "acc_sampled", "acc_greedy", "reward")
        require(self.score in allowed, "score", self.score, f"one of {allowed}")
        require(self.eval_samples <= 1024, "eval_samples", self.eval_samples, "an integer in [1, 1024]")


PLACEMENT_ENGINES = ("local", "ray")


@dataclass(frozen=True)
class PlacementConfig:
    """Where the experts run: all in this process, or each in a Ray actor of its own
    (copd_lab.distributed.ray_cluster)."""

    engine: str = "local"  # local: one world in this process | ray: one actor per expert, in a placement group each
    address: str = ""  # ray: a running cluster to join ("auto", "ray://host:10001", "host:6379"); empty: start a
    # local one on loopback
    num_cpus: float = 1.0  # ray: CPUs of each expert's placement group (a local cluster gets enough logical CPUs)
    num_gpus: float = 0.0  # ray: GPUs of each expert's placement group; fractions pack tiny experts on one GPU

    def __post_init__(self) -> None:
        require_finite(self)
        require(self.engine in PLACEMENT_ENGINES, "engine", self.engine, f"one of {PLACEMENT_ENGINES}")
        require(self.num_cpus > 0, "num_cpus", self.num_cpus, "a number > 0 (fractions allowed)")
        require(self.num_gpus >= 0, "num_gpus", self.num_gpus, "a number >= 0 (fractions allowed)")
        require(not self.address or self.engine == "ray", "address", self.address, "empty unless engine = 'ray'")


DEFAULT_METHODS = (
    "base", "experts", "mixed", "static_opd:image->text", "static_opd:text->image", "mopd", "copd",
)

@dataclass(frozen=True)
class ExperimentConfig:
    """One comparison: which methods, on which domains, with which budgets and knobs."""

    world: str = "sim"  # sim | vlm
    domains: tuple[str, ...] = ("text", "image", "video")  # one branch per domain
    methods: tuple[str, ...] = DEFAULT_METHODS  # see `copd-lab methods`
    seed: int = 0  # first seed; seed i of a sweep is seed + i
    seeds: int = 1  # number of seeds; results report mean ± std over them
    expert_steps: int = 200  # RLVR steps of each domain expert (mixed RLVR gets K times this)
    distill_steps: int = 100  # steps of the extra OPD stage of static OPD and of MOPD
    mopd_rlvr: bool = False  # MOPD student also gets an own-domain GRPO batch (MiMo's α·A_ORM)
    checkpoint_every: int = 100  # ticks between checkpoints of a run with an output folder (0: only at seed end);
    # a checkpoint holds every row so far: in the simulator, where a tick takes about a millisecond, every 25 ticks
    # took a third of a run
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    opd: OPDConfig = field(default_factory=OPDConfig)
    copd: CoPDConfig = field(default_factory=CoPDConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    mixed: MixedConfig = field(default_factory=MixedConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    vlm: VLMConfig = field(default_factory=VLMConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    placement: PlacementConfig = field(default_factory=PlacementConfig)

    def __post_init__(self) -> None:
        require_finite(self)
        require(self.world in WORLDS, "world", self.world, f"one of {WORLDS}")
        require(len(self.domains) >= 1 and len(set(self.domains)) == len(self.domains), "domains",
                 self.domains, "one or more distinct domain names")
        for name in self.domains:
            require(bool(DOMAIN_NAME.fullmatch(name)), "domains", name,
                    "names of letters, digits, '_' and '-' (e.g. 'text')")
        require(len(self.methods) >= 1, "methods", self.methods, "at least one method (see `copd-lab methods`)")
        require(1 <= self.seeds <= MAX_SEEDS, "seeds", self.seeds, f"an integer in [1, {MAX_SEEDS}]")
        require(0 <= self.seed <= MAX_SEED - self.seeds + 1, "seed", self.seed,
                f"an integer in [0, {MAX_SEED - self.seeds + 1}] (seeds seed .. seed + seeds - 1 are unsigned 32-bit)")
        require(self.expert_steps >= 1, "expert_steps", self.expert_steps, "an integer >= 1")
        require(self.distill_steps >= 1, "distill_steps", self.distill_steps, "an integer >= 1")
        # a seed runs every method side by side: mixed RLVR takes K x expert_steps ticks, static OPD and MOPD
        # expert_steps + distill_steps
        cap = MAX_TICKS // len(self.domains) if any(m == "mixed" for m in self.methods) else MAX_TICKS
        require(self.expert_steps <= cap, "expert_steps", self.expert_steps,
                f"an integer in [1, {cap:,}] (a seed's comparison takes at most {MAX_TICKS:,} ticks; mixed RLVR "
                f"runs expert_steps x {len(self.domains)} domains)")
        require(self.expert_steps + self.distill_steps <= MAX_TICKS, "distill_steps", self.distill_steps,
                f"an integer in [1, {MAX_TICKS - self.expert_steps:,}] (expert_steps + distill_steps <= "
                f"{MAX_TICKS:,} ticks)")
        require(self.checkpoint_every >= 0, "checkpoint_every", self.checkpoint_every,
                 "an integer >= 0 (0: checkpoint only at the end of each seed)")
        if self.copd.topology == "hub" and any(m.startswith("copd") for m in self.methods):
            require(self.copd.hub in self.domains, "copd.hub", self.copd.hub, f"one of the domains {self.domains}")
        for branch in self.copd.step_rates:
            require(branch in self.domains, "copd.step_rates", branch, f"keys among the domains {self.domains}")
        if self.world == "sim":  # the VLM world's vocabulary is checked against the model (preflight.py)
            require(self.metrics.topk < self.sim.vocab_size, "metrics.topk", self.metrics.topk,
                    f"an integer below the simulator's vocabulary of {self.sim.vocab_size} tokens (sim.digits x "
                    f"sim.styles + sim.filler): at k >= the vocabulary every pair's top-k overlap is 1")
        require(not (self.placement.engine == "ray" and self.world == "vlm" and self.vlm.engine == "vllm"),
                "placement.engine", self.placement.engine, "'local' with vlm.engine = 'vllm' (one vLLM engine per "
                "expert's actor is not built yet)")
        require(not self.merge.weights or len(self.merge.weights) == len(self.domains), "merge.weights",
                 self.merge.weights, f"empty (uniform) or one weight per domain ({len(self.domains)})")
        require(not self.sim.answer_lens or len(self.sim.answer_lens) == len(self.domains), "sim.answer_lens",
                 self.sim.answer_lens, f"empty (answer_len for all) or one length per domain ({len(self.domains)})")
        require(not self.sim.pretrain_mix or len(self.sim.pretrain_mix) == len(self.domains), "sim.pretrain_mix",
                 self.sim.pretrain_mix, f"empty (equal) or one weight per domain ({len(self.domains)})")
        require(not self.mixed.weights or len(self.mixed.weights) == len(self.domains), "mixed.weights",
                 self.mixed.weights, f"empty (equal shares) or one weight per domain ({len(self.domains)})")
