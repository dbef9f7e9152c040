"""Who distils from whom in Phase II: OPD edges between branches.

An edge ``student<-teacher`` means the student samples on the teacher's prompts and is graded token by
token by the teacher. The paper uses all pairs for K=2 and hub-and-spoke for K=3 (text as hub,
docs/paper.md §1.5); the other topologies answer the scaling question it leaves open (§9).
"""

from __future__ import annotations

from copd_lab.config import ALL_PAIRS_UP_TO, TOPOLOGIES, ConfigError, ExperimentConfig

Edge = tuple[str, str]  # (student, teacher)


def parse_edge(text: str) -> Edge:
    """``"text<-image"`` -> ("text", "image")."""
    student, _, teacher = text.partition("<-")
    return student.strip(), teacher.strip()


def format_edge(edge: Edge) -> str:
    return f"{edge[0]}<-{edge[1]}"


def build_edges(
    branches: tuple[str, ...] | list[str],
    topology: str = "hub",
    hub: str | None = None,
    edges: tuple[str, ...] = (),
    drop: tuple[str, ...] = (),
) -> list[Edge]:
    """The directed (student, teacher) edges of a topology, minus the dropped ones.

    hub: hub <-> every spoke (both directions), spokes never distil from each other.
    all_pairs: every ordered pair (Algorithm 1's "for each j != k").
    ring: each branch <-> its two neighbours in the given order.
    one_way: a directed ring, branch i teaches branch i+1 only.
    edges: exactly the given "student<-teacher" list.
    """
    names = list(branches)
    if topology not in TOPOLOGIES:
        raise ConfigError(f"copd.topology = {topology!r} is not allowed: one of {TOPOLOGIES}")
    k = len(names)
    if topology == "hub":
        hub = names[0] if hub is None else hub
        if hub not in names:
            raise ConfigError(f"copd.hub = {hub!r} is not allowed: one of the branches {names}")
        result = [e for s in names if s != hub for e in ((hub, s), (s, hub))]
    elif topology == "all_pairs":
        result = [(s, t) for s in names for t in names if s != t]
    elif topology == "ring":
        pairs = {(names[i], names[(i + 1) % k]) for i in range(k)} if k > 1 else set()
        result = sorted({e for a, b in pairs if a != b for e in ((a, b), (b, a))}, key=_order(names))
    elif topology == "one_way":
        result = [(names[(i + 1) % k], names[i]) for i in range(k)] if k > 1 else []
        result = result[:-1] if k == 2 else result  # two branches: a single edge, not a 2-cycle
    else:
        result = [parse_edge(e) for e in edges]
        for student, teacher in result:
            for name in (student, teacher):
                if name not in names:
                    raise ConfigError(f"copd.edges = {format_edge((student, teacher))!r} is not allowed: "
                                      f"{name!r} is not a branch; branches are {names}")
            if student == teacher:
                raise ConfigError(f"copd.edges = {format_edge((student, teacher))!r} is not allowed: "
                                  "a branch cannot distil from itself")
    dropped = [parse_edge(e) for e in drop]
    for edge in dropped:
        if edge not in result:
            raise ConfigError(f"copd.drop_edges = {format_edge(edge)!r} is not allowed: not an edge of "
                              f"this topology; edges are {[format_edge(e) for e in result]}")
    return [e for e in result if e not in dropped]


def gap_pairs(branches: tuple[str, ...] | list[str], cfg: ExperimentConfig) -> tuple[Edge, ...] | None:
    """The (student, teacher) branch pairs whose behavioural gap a method's measurement takes (metrics.gap_pairs),
    None for every ordered pair.

    edges: the pairs CoPD's topology joins (copd.topology, copd.hub, copd.edges), each both ways, so experts and
    CoPD, whose branches are both named by domain, are measured on the same pairs; copd.drop_edges stays measured
    (an ablation then shows the gap of the edge it cut). auto: every pair up to ALL_PAIRS_UP_TO branches, edges
    beyond, where the K(K-1) pairs were most of a run (K = 30: 870 pairs, 85 % of it). Names the topology cannot
    join (a hub that is not among them) get every pair: a method of one branch has none anyway.
    """
    names = list(branches)
    mode = cfg.metrics.gap_pairs
    if mode == "all" or (mode == "auto" and len(names) <= ALL_PAIRS_UP_TO):
        return None
    c = cfg.copd
    try:
        joined = build_edges(names, c.topology, c.hub, c.edges)
    except ConfigError:
        return None
    return tuple(dict.fromkeys(pair for s, t in joined for pair in ((s, t), (t, s))))  # both ways, once, in order


def _order(names: list[str]):
    return lambda edge: (names.index(edge[0]), names.index(edge[1]))
