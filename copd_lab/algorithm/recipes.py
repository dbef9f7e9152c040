"""Every method is a recipe over branches (docs/design.md §3).

A branch is one set of weights with an RLVR data mixture; a stage says, for some steps, which
branches train and which OPD edges are active; a recipe is a list of stages, then an optional merge.
The builders below turn a method name (``copd-lab methods``) and an ExperimentConfig into a Recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from copd_lab.algorithm.slots import BASE, MERGED, SlotKey
from copd_lab.algorithm.topology import build_edges, format_edge, parse_edge
from copd_lab.config import ConfigError, ExperimentConfig, MergeConfig


@dataclass(frozen=True)
class Branch:
    name: str  # unique within its recipe, e.g. "text"
    domains: tuple[str, ...]  # RLVR data mixture for its native GRPO batches
    init: SlotKey = BASE  # BASE, or another recipe's branch to start from its final weights
    step_rate: float = 1.0  # fraction of ticks on which this branch takes a step (asymmetric experts)
    shares: tuple[float, ...] = ()  # weight of each of `domains` in a pooled RL batch (empty: equal)


@dataclass(frozen=True)
class OPDEdge:
    student: str  # branch of this recipe that learns
    teacher: str | SlotKey  # a branch of this recipe, or a finished recipe's branch (frozen: it trains no more)
    domain: str  # the student samples on this domain's prompts (the teacher's domain in CoPD)
    beta: float = 1.0  # β, weight of this edge's OPD advantage
    live: bool = True  # teacher scored with its current weights, or a snapshot taken at stage start

    @property
    def teacher_name(self) -> str:
        """The teacher's branch name (of this recipe or of the one it comes from)."""
        return self.teacher.branch if isinstance(self.teacher, SlotKey) else self.teacher

    @property
    def snapshots(self) -> bool:
        """Whether the teacher is a branch of this recipe scored by a snapshot taken when its stage starts."""
        return not self.live and not isinstance(self.teacher, SlotKey)

    @property
    def label(self) -> str:
        return format_edge((self.student, self.teacher_name))


@dataclass(frozen=True)
class Stage:
    name: str  # e.g. "phase1", "phase2", "rlvr", "distill"
    steps: int  # ticks this stage lasts
    train: tuple[str, ...]  # branches that take gradient steps
    rlvr: bool = True  # each trained branch gets a native GRPO batch on its own domains each step
    edges: tuple[OPDEdge, ...] = ()  # OPD batches joined to the same update (Phase II)
    adaptive_threshold: float = 0.0  # >0: an edge is active only in a window opened by low overlap
    adaptive_window: int = 0  # steps an adaptively opened OPD window lasts (S_OPD)


@dataclass(frozen=True)
class Recipe:
    name: str  # the method label, e.g. "copd" or "static_opd:image->text"
    branches: tuple[Branch, ...]
    stages: tuple[Stage, ...]
    outputs: tuple[tuple[str, str], ...]  # (result label, branch name | MERGED) to evaluate
    merge: MergeConfig | None = None  # merge all branches into MERGED at the end
    requires: tuple[str, ...] = ()  # recipes that must finish first (their branches are inits/teachers)

    def branch(self, name: str) -> Branch:
        return next(b for b in self.branches if b.name == name)

    def steps_per_branch(self) -> dict[str, int]:
        """Gradient steps each branch takes, counting step rates."""
        counts = {b.name: 0 for b in self.branches}
        for stage in self.stages:
            for name in stage.train:
                counts[name] += active_count(stage.steps, self.branch(name).step_rate)
        return counts


def active_count(steps: int, rate: float) -> int:
    """Ticks out of `steps` on which a branch with this step rate steps (see `is_active`)."""
    return sum(is_active(i, rate) for i in range(steps))


def is_active(tick: int, rate: float) -> bool:
    """A rate-r branch steps on tick i when floor((i+1)r) > floor(ir): evenly spread, r=1 every tick."""
    return int((tick + 1) * rate + 1e-9) > int(tick * rate + 1e-9)


# ------------------------------------------------------------------------------------------ builders


def _experts(cfg: ExperimentConfig, name: str = "experts") -> Recipe:
    branches = tuple(Branch(d, (d,)) for d in cfg.domains)
    stage = Stage("rlvr", cfg.expert_steps, tuple(cfg.domains))
    return Recipe(name, branches, (stage,), outputs=tuple((f"expert:{d}", d) for d in cfg.domains))


def _mixed(cfg: ExperimentConfig, name: str = "mixed") -> Recipe:
    steps = cfg.expert_steps * len(cfg.domains)  # budget = sum of the experts' steps
    branch = Branch("mixed", tuple(cfg.domains), shares=tuple(cfg.mixed.weights))
    return Recipe(name, (branch,), (Stage("rlvr", steps, ("mixed",)),), outputs=((name, "mixed"),))


def _static_opd(cfg: ExperimentConfig, name: str, arg: str) -> Recipe:
    """Experts first; then the student expert distils from the frozen teacher expert on its prompts."""
    if "->" not in arg:
        raise ConfigError(f"methods = {name!r} is not allowed: write static_opd:<teacher>-><student>, "
                          f"e.g. static_opd:image->text, with domains from {cfg.domains}")
    teacher, student = (s.strip() for s in arg.split("->", 1))
    for who in (teacher, student):
        if who not in cfg.domains:
            raise ConfigError(f"methods = {name!r} is not allowed: {who!r} is not a domain of {cfg.domains}")
    if teacher == student:
        raise ConfigError(f"methods = {name!r} is not allowed: teacher and student must differ")
    edge = OPDEdge(student, SlotKey("experts", teacher), teacher, beta=cfg.opd.beta, live=False)
    branch = Branch(student, (student,), init=SlotKey("experts", student))
    stage = Stage("distill", cfg.distill_steps, (student,), rlvr=True, edges=(edge,))
    return Recipe(name, (branch,), (stage,), outputs=((name, student),), requires=("experts",))


def _mopd(cfg: ExperimentConfig, name: str = "mopd") -> Recipe:
    """One student from the base; each prompt routed to its domain's frozen expert (MiMo-V2-Flash)."""
    edges = tuple(OPDEdge("student", SlotKey("experts", d), d, beta=cfg.opd.beta, live=False) for d in cfg.domains)
    branch = Branch("student", tuple(cfg.domains))
    stage = Stage("distill", cfg.distill_steps, ("student",), rlvr=cfg.mopd_rlvr, edges=edges)
    return Recipe(name, (branch,), (stage,), outputs=((name, "student"),), requires=("experts",))


def _copd(cfg: ExperimentConfig, name: str = "copd", drop: tuple[str, ...] = (), merge: bool = True,
          fixed_experts: bool = False) -> Recipe:
    """K branches from one base; N cycles of Phase I (S_RL GRPO steps) and Phase II (S_OPD steps of
    native GRPO joined with OPD batches on each neighbour's prompts, scored by that neighbour).
    fixed_experts: the neighbours' finished independent experts grade instead (frozen): co-evolution removed."""
    c = cfg.copd
    names = tuple(cfg.domains)
    edge_pairs = build_edges(names, c.topology, c.hub, c.edges, tuple(c.drop_edges) + drop)
    if not edge_pairs:  # CoPD without distillation would be the experts, merged, under CoPD's name
        why = ("it needs two or more domains" if len(names) < 2 else "copd.edges is empty" if c.topology == "edges"
               else "every edge is dropped")
        raise ConfigError(f"methods = {name!r} with copd.topology = {c.topology!r} is not allowed: its branches have "
                          f"no OPD edge ({why}); give edges as \"student<-teacher\", or run 'experts' for no "
                          f"distillation")
    live = cfg.opd.teacher == "live"
    edges = tuple(
        OPDEdge(s, SlotKey("experts", t) if fixed_experts else t, t,
                beta=c.beta_per_edge.get(format_edge((s, t)), cfg.opd.beta), live=live and not fixed_experts)
        for s, t in edge_pairs
    )
    for key in c.beta_per_edge:
        if parse_edge(key) not in edge_pairs:
            raise ConfigError(f"copd.beta_per_edge.{key} is not allowed: not an edge of this topology; "
                              f"edges are {[format_edge(e) for e in edge_pairs]}")
    branches = tuple(Branch(d, (d,), step_rate=c.step_rates.get(d, 1.0)) for d in names)
    if c.adaptive_threshold > 0:
        total = c.cycles * (c.rl_steps + c.opd_steps)
        stages = (Stage("adaptive", total, names, edges=edges, adaptive_threshold=c.adaptive_threshold,
                        adaptive_window=max(c.opd_steps, 1)),)
    else:
        cycle = (Stage("phase1", c.rl_steps, names), Stage("phase2", c.opd_steps, names, edges=edges))
        stages = tuple(s for _ in range(c.cycles) for s in cycle if s.steps > 0)
    # each branch just before the merge is reported beside the merged model: the same run, so "merged against
    # unmerged" compares one training (copd_no_merge is a run of its own, with its own random stream)
    branch_outputs = tuple((f"{name}[{d}]", d) for d in names)
    if merge:
        outputs: tuple[tuple[str, str], ...] = ((name, MERGED), *(branch_outputs if c.report_branches else ()))
        weights = cfg.merge
    else:
        outputs, weights = branch_outputs, None
    return Recipe(name, branches, stages, outputs=outputs, merge=weights,
                  requires=("experts",) if fixed_experts else ())


METHODS: dict[str, str] = {
    "base": "the shared base model, no training",
    "experts": "K domain experts, each GRPO on its own domain (rows expert:<domain>)",
    "mixed": "one branch, GRPO on the pooled domains, budget = sum of the experts' steps",
    "static_opd:<teacher>-><student>": "experts, then the student expert distils from the frozen teacher "
    "expert on the teacher's prompts (plus its own GRPO batch)",
    "mopd": "experts, then one student from the base distils from all frozen experts, each prompt routed "
    "to its domain's expert",
    "copd": "Co-Evolving Policy Distillation: cycles of GRPO and mutual OPD between live branches, merged",
    "copd_no_merge": "CoPD without the merge: each branch alone (rows copd_no_merge[<domain>])",
    "copd_drop:<student><-<teacher>[,...]": "CoPD without these OPD directions, e.g. copd_drop:text<-image "
    "(the paper's w/o I-OPD)",
    "copd_frozen": "CoPD with teachers frozen at the start of each Phase II (the commented-out line)",
    "copd_fixed_experts": "CoPD's schedule with the finished independent experts as teachers (frozen): what "
    "co-evolving teachers add",
}


def build_recipe(method: str, cfg: ExperimentConfig) -> Recipe | None:
    """The recipe of one method name; None for "base" (nothing to train)."""
    head, _, arg = method.partition(":")
    if head == "base" and not arg:
        return None
    if head == "experts" and not arg:
        return _experts(cfg)
    if head == "mixed" and not arg:
        return _mixed(cfg)
    if head == "static_opd":
        return _static_opd(cfg, method, arg)
    if head == "mopd" and not arg:
        return _mopd(cfg)
    if head == "copd" and not arg:
        return _copd(cfg)
    if head == "copd_no_merge" and not arg:
        return _copd(cfg, method, merge=False)
    if head == "copd_drop" and arg:
        return _copd(cfg, method, drop=tuple(e.strip() for e in arg.split(",")))
    if head == "copd_frozen" and not arg:
        return _copd(replace(cfg, opd=replace(cfg.opd, teacher="frozen")), method)
    if head == "copd_fixed_experts" and not arg:
        return _copd(cfg, method, fixed_experts=True)
    raise ConfigError(f"methods = {method!r} is not allowed: known methods are {', '.join(METHODS)}")


def build_recipes(cfg: ExperimentConfig) -> list[Recipe]:
    """All recipes for the configured methods, prerequisites first (experts added when needed)."""
    recipes = [r for r in (build_recipe(m, cfg) for m in cfg.methods) if r is not None]
    names = [r.name for r in recipes]
    if len(set(names)) != len(names):
        raise ConfigError(f"methods = {list(cfg.methods)} is not allowed: a method is listed twice")
    if any("experts" in r.requires for r in recipes) and "experts" not in names:
        recipes.insert(0, replace(_experts(cfg), outputs=()))  # a prerequisite, not reported
    return sorted(recipes, key=lambda r: len(r.requires))
