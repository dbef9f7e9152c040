"""The package's shape: folders that name the parts, each importing only what sits at or below it, and no circle.

The import graph is read from the source with `ast` (every import, also those inside functions), so a new upward
import or a new circle fails here before a reader meets it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "copd_lab"

# Bottom to top. A module may import modules of its own layer or of a layer below. The root modules of the first
# layer are what every part reads (the configs, the World protocol, the random streams); the edge sits on top.
LAYERS = (
    ("copd_lab.config", "copd_lab.config_io", "copd_lab.streams", "copd_lab.world"),
    ("copd_lab.math",),
    ("copd_lab.tasks", "copd_lab.records"),
    ("copd_lab.algorithm",),
    ("copd_lab.sim", "copd_lab.vlm"),
    ("copd_lab.distributed",),
    ("copd_lab.preflight", "copd_lab.local_world", "copd_lab.results", "copd_lab.experiment"),
    ("copd_lab.studies",),
    ("copd_lab.playground",),
    ("copd_lab.cli", "copd_lab"),
)


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its __init__)."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph(package: Path = PACKAGE) -> set[tuple[str, str]]:
    """(importer, imported) pairs between the package's modules. `from a import b` names module a.b when b is one
    (a submodule), else module a."""
    known = modules(package)
    edges = set()
    for name, path in known.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from .x import y
                    anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in known:  # copd_lab.x.y where y is a name in module copd_lab.x
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add((name, target))
    return edges


def layer_of(module: str) -> int:
    """The index in LAYERS of the entry that names the module or the folder holding it ("copd_lab" names only the
    package's own __init__)."""
    for index, names in enumerate(LAYERS):
        if any(module == entry or (entry != "copd_lab" and module.startswith(entry + ".")) for entry in names):
            return index
    raise KeyError(f"{module} is in no layer: add it (or its folder) to LAYERS")


def circles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    graph: dict[str, list[str]] = {}
    for a, b in sorted(edges):
        graph.setdefault(a, []).append(b)
        graph.setdefault(b, [])
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(graph[child])))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return sorted(found)


def upward(edges: set[tuple[str, str]]) -> list[tuple[str, str]]:
    return sorted((a, b) for a, b in edges if layer_of(b) > layer_of(a))


def test_every_module_has_a_layer():
    for name in modules():
        layer_of(name)


def test_no_import_runs_back_up():
    assert upward(import_graph()) == []


def test_no_circle():
    assert circles(import_graph()) == []


def test_the_algorithm_imports_no_world():
    worlds = ("copd_lab.sim", "copd_lab.vlm", "copd_lab.distributed", "copd_lab.local_world")
    bad = [(a, b) for a, b in import_graph() if a.startswith("copd_lab.algorithm") and b.startswith(worlds)]
    assert bad == []


def test_the_checks_would_fail(tmp_path):
    """A package with a circle and an upward import is caught (the checks above can fail)."""
    root = tmp_path / "copd_lab"
    (root / "algorithm").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "algorithm" / "__init__.py").write_text("")
    (root / "config.py").write_text("from copd_lab.world import World\n")
    (root / "world.py").write_text("def f():\n    from copd_lab import config\n")
    (root / "algorithm" / "trainer.py").write_text("from copd_lab.experiment import run_comparison\n")
    (root / "experiment.py").write_text("from copd_lab.algorithm import trainer\n")
    edges = import_graph(root)
    assert circles(edges) == [["copd_lab.algorithm.trainer", "copd_lab.experiment"],
                              ["copd_lab.config", "copd_lab.world"]]
    assert upward(edges) == [("copd_lab.algorithm.trainer", "copd_lab.experiment")]
    with pytest.raises(KeyError, match="no layer"):
        layer_of("copd_lab.elsewhere")


def test_graph_reads_function_level_and_submodule_imports(tmp_path):
    root = tmp_path / "copd_lab"
    (root / "tasks").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "tasks" / "__init__.py").write_text("from copd_lab.tasks.registry import build\n")
    (root / "tasks" / "image.py").write_text("")
    (root / "tasks" / "registry.py").write_text("from copd_lab.tasks import image\ndef build():\n"
                                                "    from copd_lab.world import Request\n")
    (root / "world.py").write_text("")
    assert import_graph(root) == {("copd_lab.tasks", "copd_lab.tasks.registry"),
                                  ("copd_lab.tasks.registry", "copd_lab.tasks.image"),
                                  ("copd_lab.tasks.registry", "copd_lab.world")}


def test_the_front_door_exports_the_runner_and_the_configs():
    import copd_lab
    from copd_lab import ExperimentConfig, load_config, run_comparison
    from copd_lab.config import ExperimentConfig as config_class
    from copd_lab.experiment import run_comparison as runner

    assert ExperimentConfig is config_class and run_comparison is runner
    assert load_config(None, ["copd.cycles=2"]).copd.cycles == 2
    assert all(getattr(copd_lab, name) is not None for name in copd_lab.__all__)
    with pytest.raises(AttributeError, match="no attribute 'Trainer'"):
        copd_lab.Trainer  # noqa: B018


ROOT = PACKAGE.parent
FILE = r"(?:copd_lab|docs|tests|benchmarks|configs|notebooks|tiny_models|scripts)/[\w/.-]*\w\.(?:py|md|toml|ipynb)"
PART = r"(?:algorithm|math|records|sim|vlm|tasks|distributed|studies|playground)/\w+\.py"


def test_pages_and_comments_name_files_that_exist():
    texts = [ROOT / "README.md", *ROOT.glob("docs/*.md"), *PACKAGE.rglob("*.py"), *ROOT.glob("benchmarks/*.py")]
    missing = [(str(path.relative_to(ROOT)), name) for path in texts for name in re.findall(FILE, path.read_text())
               if not (ROOT / name).exists()]
    assert missing == []


def test_the_algorithm_page_names_code_that_exists():
    """docs/algorithm.md sets each line of Algorithm 1 beside `part/file.py` `function`: both must exist."""
    page = (ROOT / "docs" / "algorithm.md").read_text()
    for path, name in re.findall(rf"`({PART})` `([\w.]+)`", page):
        source = (PACKAGE / path).read_text()
        head = name.split(".")[0]
        assert re.search(rf"^(def|class) {head}\b|^{head} = |^    def {name.split('.')[-1]}\b", source, re.M), (path,
                                                                                                           name)
    assert all((PACKAGE / path).exists() for path in re.findall(rf"`({PART})", page))


def test_dotted_names_in_pages_and_comments_exist():
    """Every copd_lab.x.y a page, comment or benchmark names is a module of the package, or a name defined in one."""
    texts = [ROOT / "README.md", *ROOT.glob("docs/*.md"), *PACKAGE.rglob("*.py"), *ROOT.glob("benchmarks/*.py"),
             *ROOT.glob("notebooks/*.py")]
    wrong = []
    for path in texts:
        for dotted in set(re.findall(r"copd_lab(?:\.\w+)+", path.read_text())):
            parts, where = dotted.split(".")[1:], PACKAGE
            while parts and ((where / parts[0]).is_dir() or (where / f"{parts[0]}.py").exists()):
                where = where / parts.pop(0)
            if not parts:
                continue
            source = (where / "__init__.py" if where.is_dir() else where.with_suffix(".py")).read_text()
            if not re.search(rf"^\s*(def|class) {parts[0]}\b|^{parts[0]}\b.*=|\"{parts[0]}\"", source, re.M):
                wrong.append((str(path.relative_to(ROOT)), dotted))
    assert wrong == []
