"""The package's structure: no import cycle inside ``conceptevo`` (function-local imports
count: they run too), found by reading the source, and the checker itself on a made-up cycle."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import numpy as np
import pytest
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

SRC = Path(__file__).resolve().parents[1] / "src" / "conceptevo"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> every module of the package it imports, anywhere in its source (top level,
    inside functions, under TYPE_CHECKING alike)."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - node.level + 1]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                # "from .x import y": y may be a module of package x, or a name in x (then
                # the edge is to x)
                subs = [f"{stem}.{a.name}" for a in node.names]
                targets = subs + ([stem] if any(t not in modules for t in subs) else [])
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def package_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles between modules (strongly connected components of more than one), leaving out
    a package importing its own sub-modules (its ``__init__`` re-exporting them) and
    sub-modules importing their package's ``__init__`` (the two are one unit here)."""
    names = sorted(graph)
    index = {n: i for i, n in enumerate(names)}
    edges = [(index[a], index[b]) for a, targets in graph.items() for b in targets
             if not (b.startswith(a + ".") or a.startswith(b + "."))]
    rows, cols = (np.array(x, dtype=np.int64) for x in zip(*edges)) if edges else ([], [])
    adjacency = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(names),) * 2)
    _, component = connected_components(adjacency, directed=True, connection="strong")
    groups = [[n for n, c in zip(names, component) if c == k] for k in np.unique(component)]
    return sorted(g for g in groups if len(g) > 1)


@functools.cache
def package_graph() -> dict[str, set[str]]:
    return import_graph(SRC)


def test_no_import_cycle_inside_the_package():
    cycles = package_cycles(package_graph())
    assert cycles == [], f"import cycles: {cycles}"


#: the algorithms: arrays and modules in, arrays out (docs/architecture.md)
ALGORITHMS = ["space.coactivation", "space.neuron_embedding", "space.image_embedding",
              "space.map2d", "space.unified", "evolution.importance", "evolution.rankers",
              "evaluate.alignment", "evaluate.matching", "evaluate.labels"]


@pytest.mark.parametrize("module", ALGORITHMS)
def test_an_algorithm_reads_no_config_and_no_workspace(module):
    graph = package_graph()
    banned = {m for m in graph if m == "conceptevo.config" or m.startswith("conceptevo.workspace")
              or m.endswith(".stage") or m == "conceptevo.pipeline"}
    assert not graph[f"conceptevo.{module}"] & banned


#: modules kept only so that old imports keep working (they warn); below the stage layer in
#: name, above it in what they import
DEPRECATED = {"conceptevo.evaluate.stage"}
#: the layers under the stages: nothing here imports a stage or the pipeline
BELOW_STAGES = ("conceptevo.common", "conceptevo.config", "conceptevo.schema",
                "conceptevo.errors", "conceptevo.runs", "conceptevo.stimuli",
                "conceptevo.train", "conceptevo.space", "conceptevo.evolution",
                "conceptevo.evaluate", "conceptevo.models", "conceptevo.data",
                "conceptevo.workspace", "conceptevo.patches", "conceptevo.viz")


def _stage_of(module: str) -> str | None:
    """The stage a module of conceptevo.stages belongs to (evaluation_checks: evaluation)."""
    from conceptevo.stages import ORDER

    name = module.removeprefix("conceptevo.stages.")
    return next((s for s in ORDER if name == s or name.startswith(s + "_")), None)


def test_a_stage_imports_no_later_stage():
    from conceptevo.stages import ORDER

    graph = package_graph()
    stages = [m for m in graph if m.startswith("conceptevo.stages.")]
    assert {_stage_of(m) for m in stages} >= set(ORDER)  # one module (at least) per stage
    for module in stages:
        stage = _stage_of(module)
        for target in graph[module]:
            if target.startswith("conceptevo.stages.") and _stage_of(target) is not None:
                later = ORDER.index(_stage_of(target)) > ORDER.index(stage)
                assert not (stage and later), f"{module} imports the later {target}"
            assert target != "conceptevo.pipeline", f"{module} imports the pipeline"


def test_nothing_below_the_stages_imports_one():
    graph = package_graph()
    for module, targets in graph.items():
        if module in DEPRECATED or not module.startswith(BELOW_STAGES):
            continue
        upward = {t for t in targets if t.startswith("conceptevo.stages")
                  or t in ("conceptevo.pipeline", "conceptevo.cli", "conceptevo.demo")}
        assert not upward, f"{module} imports {sorted(upward)}"


def test_the_floor_imports_nothing_above_it():
    """config.py reads a study file into the algorithms' parameter classes (params.py, at the
    floor with the errors and the schema helpers) and imports no algorithm."""
    graph = package_graph()
    floor = {"conceptevo.errors", "conceptevo.schema"}
    assert graph["conceptevo.params"] <= floor, graph["conceptevo.params"]
    assert graph["conceptevo.config"] <= floor | {"conceptevo.params"}, graph["conceptevo.config"]
    assert graph["conceptevo.common"] <= {"conceptevo.errors", "conceptevo.distributed"}


#: the raw workspace I/O that only ``workspace/`` may do: the artifacts' schema lives there
RAW_IO = {"save_arrays", "load_arrays", "write_json", "read_json", "write_npz", "load"}
#: where another module may still do it, and why
RAW_IO_ALLOWED = {
    "conceptevo.stages.context": "stored_key reads any artifact's key, whatever its schema",
    "conceptevo.stages.probe": "maps the probe images it has just written (np.load, mmap)",
    "conceptevo.evaluate.annotations": "reads the user's annotation file, not the workspace",
    "conceptevo.data.concept_world": "its own data set files, not the workspace",
}


def raw_io_calls(path: Path) -> list[str]:
    """Calls ``x.save_arrays(...)``, ``np.load(...)``, ``atomic.write_json(...)``, ... ."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
            if name in RAW_IO and (name != "load" or (isinstance(f, ast.Attribute)
                                                      and getattr(f.value, "id", "") == "np")):
                found.append(f"{name} (line {node.lineno})")
    return found


def test_only_the_workspace_reads_and_writes_artifacts_by_hand():
    offenders = {}
    for path in SRC.rglob("*.py"):
        name = module_name(path, SRC)
        if name.startswith("conceptevo.workspace") or name in RAW_IO_ALLOWED:
            continue
        if calls := raw_io_calls(path):
            offenders[name] = calls
    assert not offenders, offenders


def test_the_raw_io_checker_sees_method_and_numpy_calls(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import numpy as np\nws.save_arrays(p, {})\nnp.load(p)\njson.load(f)\n")
    assert [c.split()[0] for c in raw_io_calls(f)] == ["save_arrays", "load"]


def test_no_file_is_too_long_to_read():
    """No Python file over 600 lines but the concept-world generator (and, below, no
    dashboard file over 700): a file that long holds more than one idea."""
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 600}
    assert set(long) <= {"data/concept_world.py"}, long


def test_no_dashboard_file_is_too_long_to_read():
    static = {p.name: n for p in (SRC / "serve" / "static").iterdir()
              if (n := len(p.read_text(encoding="utf-8").splitlines())) > 700}
    assert not static, static


def test_the_checker_finds_a_cycle_through_a_function_local_import(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("from .sub.b import g\n\ndef f():\n    return g()\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def g():\n    from ..a import f\n    return f\n")
    graph = import_graph(pkg)
    assert "pkg.a" in graph["pkg.sub.b"] and "pkg.sub.b" in graph["pkg.a"]
    assert package_cycles(graph) == [["pkg.a", "pkg.sub.b"]]
    (pkg / "sub" / "b.py").write_text("def g():\n    return 1\n")
    assert package_cycles(import_graph(pkg)) == []


if __name__ == "__main__":
    pytest.main([__file__])
