"""The packages import one way, and the allowed order is written here, once.

A module may import modules of its own layer or of the layers below it, never above; no import circle exists
between modules. Imports inside functions count too: a lazy upward import is still an upward dependency.
Every module of the project must be placed in a layer, so a new module is placed on purpose. The package's
`__init__` names its public API by module name in a table (`landscape._API`) and imports it on first use, so
importing `landscape` loads nothing; the test checks that table points at modules of the pipelines layer or below.
"""

from __future__ import annotations

import ast
import fnmatch
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("landscape", "trainers", "figures", "benchmarks")

LAYERS = [  # bottom to top: (what the layer is, fnmatch patterns of module names)
    ("foundation, no torch: errors, atomic files, grid, configs and CLI plumbing",
     ["landscape", "landscape.errors", "landscape.files", "landscape.grid", "landscape.config", "landscape.cli"]),
    ("runtime on torch: process groups and collectives, metrics as exact sums, data sources",
     ["landscape.distributed", "landscape.metrics", "landscape.sources", "landscape.evaluation"]),
    ("models, data and checkpoints", ["landscape.corpus", "landscape.lm", "landscape.models", "landscape.data",
                                         "landscape.weights", "landscape.checkpoint"]),
    ("the landscape core: directions, trajectory PCA, grid evaluation, HDF5 schema, Hessian, sharpness measures, "
     "plot functions",
     ["landscape.params", "landscape.directions", "landscape.pca", "landscape.engine", "landscape.io",
      "landscape.objective", "landscape.hessian", "landscape.density", "landscape.measures", "landscape.costs",
      "landscape.plot"]),
    ("pipelines: checkpoint to surface file, sharpness table, surface file to figure files",
     ["landscape.runner", "landscape.api", "landscape.sharpness_table", "landscape.exports", "landscape.render"]),
    ("landscape commands", ["landscape.cliargs", "landscape.plot1d", "landscape.plot2d", "landscape.trajectory",
                             "landscape.export", "landscape.hessian_map", "landscape.sharpness"]),
    ("the trainer", ["trainers", "trainers.*"]),
    ("figure scripts and benchmarks", ["figures", "figures.*", "benchmarks.*"]),
]


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports_of(source: str, modules: set[str]) -> set[str]:
    """The project modules a source imports, anywhere in it. `from pkg import name` counts as pkg.name when
    that is a module, else as pkg."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                     for a in node.names]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] in PACKAGES)
    return found


def layer_of(module: str) -> int:
    hits = [i for i, (_, patterns) in enumerate(LAYERS) if any(fnmatch.fnmatchcase(module, p) for p in patterns)]
    assert len(hits) == 1, f"{module} belongs to {len(hits)} layers; place it in exactly one of LAYERS"
    return hits[0]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
            for m in sorted(graph) for t in sorted(graph[m]) if layer_of(t) > layer_of(m)]


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle through each module that lies on one (depth-first search, white/grey/black)."""
    state: dict[str, int] = {}
    circles, path = [], []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                circles.append(path[path.index(t):] + [t])
            elif t not in state:
                visit(t)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return circles


def import_graph(overrides: dict[str, str] | None = None) -> dict[str, set[str]]:
    mods = project_modules()
    sources = {m: p.read_text() for m, p in mods.items()} | (overrides or {})
    return {m: imports_of(src, set(mods)) - {m} for m, src in sources.items()}


def test_every_module_has_a_layer_and_imports_only_downward():
    graph = import_graph()
    assert "landscape.engine" in graph and "trainers.ddp" in graph  # the walk found the project
    assert upward_imports(graph) == []


def test_no_import_circles():
    assert import_circles(import_graph()) == []


def test_landscape_never_imports_trainers_or_figures():
    graph = import_graph()
    wrong = {m: sorted(t for t in ts if not t.startswith("landscape"))
             for m, ts in graph.items() if m.startswith("landscape")}
    assert {m: ts for m, ts in wrong.items() if ts} == {}


def test_the_check_fails_on_an_upward_import_or_a_circle_added_by_hand():
    errors_src = (ROOT / "landscape" / "errors.py").read_text()
    lazy_upward = errors_src + "\n\ndef f():\n    from landscape.plot2d import main\n"
    assert upward_imports(import_graph({"landscape.errors": lazy_upward})) == [
        f"landscape.errors ({LAYERS[0][0]}) imports landscape.plot2d ({LAYERS[5][0]})"]
    into_trainers = errors_src + "\nimport trainers.ddp\n"
    assert any("imports trainers.ddp" in e for e in upward_imports(import_graph({"landscape.errors": into_trainers})))
    files_src = (ROOT / "landscape" / "files.py").read_text()
    circle = import_graph({"landscape.files": files_src + "\nfrom landscape import errors\n",
                           "landscape.errors": errors_src + "\nimport landscape.files\n"})
    assert ["landscape.errors", "landscape.files", "landscape.errors"] in import_circles(circle)
