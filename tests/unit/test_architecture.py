"""The package's structure, checked from its source: DeepSpeed stays inside megababel.engine, the subpackages import
only the layers below them, and no module imports itself through others (README.md, "Architecture")."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from helpers import ROOT
PACKAGE = ROOT / "megababel"
SCRIPTS = [ROOT / "launch", ROOT / "tools", ROOT / "bench"]

# what each subpackage may import (besides itself); README.md's Architecture section is this table in words
ALLOWED = {
    "config": set(),
    "model": {"config"},
    "data": {"config"},
    "checkpoint": {"config"},
    "growth": {"config", "model"},
    "parallel": {"config", "model"},
    "plan": {"config", "model", "growth", "data"},
    "hf": {"config", "model", "data", "checkpoint"},
    "engine": {"config", "model", "growth", "parallel", "checkpoint"},
    "train": {"config", "model", "data", "checkpoint", "growth", "parallel", "plan", "engine"},
    "cli": {"config", "model", "data", "checkpoint", "growth", "parallel", "plan", "hf", "engine", "train"},
}
ENGINE = "megababel/engine/"
ALLOWED_PRIVATE = {"os._exit"}        # the standard library's, in benchmark workers that skip interpreter teardown
OWN_DS_NAMES = {"ds_config"}          # RunConfig.ds_config: megababel's own field, the --ds-config flag


def python_files(*folders: Path) -> list[Path]:
    return sorted(p for folder in folders for p in folder.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST):
    """Every node except those under `if TYPE_CHECKING:` (imports for annotations only, never executed)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            continue
        yield node
        yield from _runtime_nodes(node)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in a file that runs, function-local ones included."""
    found = []
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:           # relative: resolve against the importing module
                base = module_name(path).split(".")
                base = base[:len(base) - node.level + (path.name == "__init__.py")]
                found.append((node.lineno, ".".join(base + ([node.module] if node.module else []))))
            else:
                found.append((node.lineno, node.module))
    return found


def deepspeed_reaches(source: str, where: str) -> list[str]:
    """Every place in `source` that imports DeepSpeed, reaches a private attribute of another object or a private
    name of another megababel package, or reaches a DeepSpeed parameter attribute (ds_*), by attribute or by name
    in getattr/hasattr/setattr."""
    problems = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "deepspeed" for a in node.names) or \
                isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "deepspeed":
            problems.append(f"{where}:{node.lineno}: imports deepspeed")
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("megababel"):
            problems += [f"{where}:{node.lineno}: imports {node.module}.{a.name}" for a in node.names
                         if a.name.startswith("_") and not a.name.startswith("__") and not
                         where.startswith(node.module.replace(".", "/").rpartition("/")[0] + "/")]
        name = None
        if isinstance(node, ast.Attribute) and not (isinstance(node.value, ast.Name) and
                                                     node.value.id in ("self", "cls")):
            name, text = node.attr, ast.unparse(node)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id in ("getattr", "hasattr", "setattr") and len(node.args) >= 2 and \
                isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
            name, text = node.args[1].value, ast.unparse(node)
        if name is None or text in ALLOWED_PRIVATE or name in OWN_DS_NAMES:
            continue
        if name.startswith("_") and not name.startswith("__") or name.startswith("ds_"):
            problems.append(f"{where}:{node.lineno}: reaches {text}")
    return sorted(problems, key=lambda problem: int(problem.split(":")[1]))


def test_the_scan_finds_what_it_forbids():
    source = ("import deepspeed\nfrom deepspeed.utils import x\nlr = trainer.engine._ds.optimizer\n"
              "n = p.ds_numel\nok = hasattr(p, 'ds_id')\nm = engine._masters\nself._private = 1\n"
              "from megababel.hf.export import _probe_texts\n")
    found = deepspeed_reaches(source, "x.py")
    assert [line.split(": ", 1)[1] for line in found] == [
        "imports deepspeed", "imports deepspeed", "reaches trainer.engine._ds", "reaches p.ds_numel",
        "reaches hasattr(p, 'ds_id')", "reaches engine._masters", "imports megababel.hf.export._probe_texts"]


def test_deepspeed_and_private_attributes_stay_inside_the_engine_package():
    problems = []
    for path in python_files(PACKAGE, *SCRIPTS):
        where = str(path.relative_to(ROOT))
        if not where.startswith(ENGINE):
            problems += deepspeed_reaches(path.read_text(), where)
    assert not problems, "\n".join(problems)


def test_subpackages_import_only_the_layers_below_them():
    problems = []
    for path in python_files(PACKAGE):
        parts = module_name(path).split(".")
        if len(parts) < 2:              # megababel/__init__.py: the public names, from the lowest layers
            continue
        own = parts[1]
        for line, target in imports(path):
            target_parts = target.split(".")
            if target_parts[0] != "megababel" or len(target_parts) < 2:
                continue
            if target_parts[1] != own and target_parts[1] not in ALLOWED[own]:
                problems.append(f"{path.relative_to(ROOT)}:{line}: megababel.{own} imports {target}")
    assert not problems, "\n".join(problems)


def test_every_subpackage_is_in_the_layer_table():
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert folders | modules == set(ALLOWED), "add the new subpackage to ALLOWED (and README's Architecture)"


def test_no_import_cycles():
    """Between modules, counting function-local imports too (a lazy import still ties the two modules)."""
    graph = {}
    for path in python_files(PACKAGE):
        name = module_name(path)
        targets = set()
        for _, target in imports(path):
            while target and target not in graph and not (ROOT / (target.replace(".", "/") + ".py")).is_file():
                target = target.rpartition(".")[0]       # `from megababel.x import y` where y is a name
            if target.startswith("megababel") and target != name:
                targets.add(target)
        # a package's __init__ re-exports its own modules: an edge into it is an edge to the module named
        graph[name] = {t for t in targets if not (path.name == "__init__.py" and t.startswith(name + "."))}
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if target.startswith(node + "."):
                continue
            if state.get(target) == "open":
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target, stack + [target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("folder", ["tools", "bench", "launch"])
def test_scripts_do_not_edit_sys_path_or_import_test_helpers(folder):
    problems = []
    for path in python_files(ROOT / folder):
        text = path.read_text()
        if "sys.path.insert" in text or "sys.path.append" in text:
            problems.append(f"{path.relative_to(ROOT)} edits sys.path")
        for line, target in imports(path):
            if target.split(".")[0] in ("conftest", "tests", "helpers"):
                problems.append(f"{path.relative_to(ROOT)}:{line} imports the test helper {target}")
    assert not problems, "\n".join(problems)


def test_tensor_parallel_internals_stay_behind_the_parallel_package_interface():
    """megababel/parallel/__init__.py is the interface; its modules (but the local-rank launcher, a tool for tests
    and benchmarks) are imported only inside it."""
    problems = []
    for path in python_files(PACKAGE, *SCRIPTS):
        if path.is_relative_to(PACKAGE / "parallel"):
            continue
        for line, target in imports(path):
            if target.startswith("megababel.parallel.") and target != "megababel.parallel.local_ranks":
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not problems, "\n".join(problems)
