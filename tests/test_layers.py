"""The packages import one way, and the order of their folders is written here, once.

A module's layer is the layer of the folder its file lives in, so a new module is placed by where it is saved, and
a new folder must be declared below before anything in it passes. A module may import modules of its own layer or
of the layers below it, never above; no import circle exists between modules. Imports inside functions count too:
a lazy upward import is still an upward dependency. A package's `__init__` names its public API in a table
(`_API`) and imports it on first use (landscape.base.lazy), so importing a package loads nothing; `landscape`'s own
`__init__` therefore sits at the bottom, and a test checks that its table points at real names.
"""

from __future__ import annotations

import ast
import functools
import importlib
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("landscape", "trainers", "figures", "benchmarks")

LAYERS = [  # bottom to top: (what the layer is, the folders whose modules it holds)
    ("foundation, no torch: errors, atomic files, grid, configs and flags", ["landscape/base"]),
    ("drawing, no torch: plot functions, arrays and an Axes in, an artist out", ["landscape/drawing"]),
    ("runtime on torch: process groups, metrics as exact sums, data sources, forward passes", ["landscape/runtime"]),
    ("models, data, checkpoint files and the parts of an optimizer step",
     ["landscape/models", "landscape/data", "landscape/optim"]),
    ("the surface core: named tensors, directions, PCA, grid evaluation, the HDF5 files", ["landscape/core"]),
    ("curvature: the flat loss, the Hessian, spectral density, sharpness measures and their costs",
     ["landscape/curvature"]),
    ("connectivity: permutation alignment, curves between minima and their training, barriers",
     ["landscape/connectivity"]),
    ("output: surface and curve files drawn as figure files and exported to viewers' formats", ["landscape/output"]),
    ("monitoring: curvature and gradient noise measured while training, in any loop", ["landscape/monitoring"]),
    ("pipelines: the grid-job builder, checkpoint to surface file, the sharpness table and its measures",
     ["landscape/pipelines"]),
    ("integrations: the Monitor as Lightning's and transformers' callbacks", ["landscape/integrations"]),
    ("the public face and the commands", ["landscape"]),
    ("the trainer", ["trainers"]),
    ("figure scripts and benchmarks", ["figures", "benchmarks"]),
]
BOTTOM = {"landscape"}  # the package's own __init__: a lazy table that imports nothing at import time


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
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


def folder_of(module: str) -> str:
    """The folder of a module's file: landscape/core for landscape.core.params and for landscape.core itself."""
    path = project_modules()[module]
    return str(path.parent.relative_to(ROOT))


def layer_of(module: str) -> int:
    if module in BOTTOM:
        return 0
    folder = folder_of(module)
    hits = [i for i, (_, folders) in enumerate(LAYERS) if folder in folders]
    assert len(hits) == 1, f"{module} lives in {folder}, which is in {len(hits)} layers; declare it in LAYERS"
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
    assert "landscape.core.grid_eval" in graph and "trainers.loop" in graph  # the walk found the project
    assert upward_imports(graph) == []


def test_no_import_circles():
    assert import_circles(import_graph()) == []


def test_landscape_never_imports_trainers_or_figures():
    graph = import_graph()
    wrong = {m: sorted(t for t in ts if not t.startswith("landscape"))
             for m, ts in graph.items() if m.startswith("landscape")}
    assert {m: ts for m, ts in wrong.items() if ts} == {}


def test_the_check_fails_on_an_upward_import_or_a_circle_added_by_hand():
    errors_src = (ROOT / "landscape" / "base" / "errors.py").read_text()
    lazy_upward = errors_src + "\n\ndef f():\n    from landscape.plot2d import main\n"
    assert upward_imports(import_graph({"landscape.base.errors": lazy_upward})) == [
        f"landscape.base.errors ({LAYERS[0][0]}) imports landscape.plot2d ({LAYERS[layer_of('landscape.plot2d')][0]})"]
    into_trainers = errors_src + "\nimport trainers.loop\n"
    assert any("imports trainers.loop" in e
               for e in upward_imports(import_graph({"landscape.base.errors": into_trainers})))
    files_src = (ROOT / "landscape" / "base" / "files.py").read_text()
    circle = import_graph({"landscape.base.files": files_src + "\nfrom landscape.base import errors\n",
                           "landscape.base.errors": errors_src + "\nimport landscape.base.files\n"})
    assert ["landscape.base.errors", "landscape.base.files", "landscape.base.errors"] in import_circles(circle)


def test_a_module_is_placed_by_its_folder_and_an_undeclared_folder_fails(monkeypatch):
    assert layer_of("landscape.core.directions") == layer_of("landscape.core") == 4
    assert layer_of("landscape.plot2d") == 11 and layer_of("landscape") == 0
    assert layer_of("landscape.connectivity.curves") == 6  # above curvature, below the pipelines that use it
    assert layer_of("landscape.output.render") == 7  # above the files it draws and the barriers it reads
    modules = dict(project_modules())
    modules["landscape.extras.thing"] = ROOT / "landscape" / "extras" / "thing.py"
    monkeypatch.setattr(sys.modules[__name__], "project_modules", lambda: modules)
    with pytest.raises(AssertionError, match="landscape/extras, which is in 0 layers"):
        layer_of("landscape.extras.thing")


def test_every_folder_of_the_packages_is_declared_and_none_is_empty():
    declared = {f for _, folders in LAYERS for f in folders}
    folders = {str(p.parent.relative_to(ROOT)) for p in project_modules().values()}
    assert folders == declared


@pytest.mark.parametrize("package", ["landscape", *sorted(m for m in project_modules()
                                                           if m.count(".") == 1 and m.startswith("landscape.")
                                                           and project_modules()[m].name == "__init__.py")])
def test_each_front_names_real_things_and_loads_nothing_on_import(package):
    """Every name in a package's `__all__` resolves; importing the package loads no module of it (its names are
    loaded on first use), so the lazy fronts never pull torch into a re-plot."""
    front = importlib.import_module(package)
    assert front.__all__ and sorted(front.__all__) == sorted(set(front.__all__))
    for name in front.__all__:
        assert getattr(front, name) is not None, f"{package}.{name}"
    source = project_modules()[package].read_text()
    eager = [n for n in imports_of(source, set(project_modules())) if n != "landscape.base.lazy"]
    assert eager == [], f"{package}/__init__ imports {eager} at import time"


def internal_imports(source: str) -> list[str]:
    """What a figure script takes from landscape other than its public faces: `landscape`'s names, a subpackage's
    `__all__` names or its modules (`from landscape.output import render`). An import of a module path
    (`from landscape.pipelines.connect_job import run_connect`) or a name the face does not list is internal."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "landscape":
            if node.module.count(".") > 1:
                found.append(node.module)
                continue
            face = importlib.import_module(node.module)
            found += [f"{node.module}.{a.name}" for a in node.names if a.name not in face.__all__
                      and f"{node.module}.{a.name}" not in project_modules()]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.count(".") > 1 and a.name.startswith("landscape.")]
    return found


def test_the_figure_scripts_use_only_the_public_faces():
    """The figure scripts are clients of the public calls, as a researcher's script is: nothing they import is
    a pipeline's internals (the check itself fails on an internal import added by hand)."""
    scripts = sorted((ROOT / "figures").glob("*.py"))
    assert {f.name: internal_imports(f.read_text()) for f in scripts} == {f.name: [] for f in scripts}
    assert internal_imports("from landscape.pipelines.connect_job import run_connect\n") == \
        ["landscape.pipelines.connect_job"]
    assert internal_imports("from landscape.pipelines import opened\n") == ["landscape.pipelines.opened"]
    assert internal_imports("from landscape.output import render\nimport landscape\n") == []
