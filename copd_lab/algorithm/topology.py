"""Who distils from whom in Phase II: OPD edges between branches.

An edge ``student<-teacher`` means the student samples on the teacher's prompts and is graded token by
token by the teacher. The paper uses all pairs for K=2 and hub-and-spoke for K=3 (text as hub,
docs/paper.md §1.5); the other topologies answer the scaling question it leaves open (§9).
"""

from __future__ import annotations

from copd_lab.config import TOPOLOGIES, ConfigError

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


def _order(names: list[str]):
    return lambda edge: (names.index(edge[0]), names.index(edge[1]))
