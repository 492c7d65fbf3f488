"""The map holds: the five algorithm files stay apart from the machinery in support/.

critique.py, rollout.py, loss.py and evaluate.py import nothing, directly or through what they
import, from accelerate, deepspeed or the processes module; train.py reaches the processes only
through the one handle start() returns; the project's modules import each other without circles.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALGORITHM = ("train", "critique", "rollout", "loss", "evaluate")
FORBIDDEN = ("accelerate", "deepspeed", "support.processes")


def _module_file(name: str) -> Path | None:
    for path in (ROOT / (name.replace(".", "/") + ".py"), ROOT / name.replace(".", "/") / "__init__.py"):
        if path.exists():
            return path
    return None


def imports(name: str) -> set[str]:
    """Every module `name` imports, at its top or inside a function: 'support.generation' for
    `from support import generation`."""
    tree = ast.parse(_module_file(name).read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names
                    if _module_file(f"{node.module}.{a.name}")}
    return out


def ours(names: set[str]) -> set[str]:
    return {n for n in names if _module_file(n) and not n.startswith(("tests", "exercises"))}


def closure(name: str) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo += ours(imports(m))
    return seen


def test_the_algorithm_files_import_no_process_machinery():
    for name in ("critique", "rollout", "loss", "evaluate"):
        reached = set().union(*(imports(m) for m in closure(name)))
        bad = sorted(n for n in reached if n.split(".")[0] in ("accelerate", "deepspeed")
                     or n.startswith("support.processes") or n == "support.run_setup")
        assert not bad, f"{name}.py reaches {bad}"


def test_train_reaches_the_processes_only_through_its_handle():
    direct = imports("train")
    assert not [n for n in direct if n.startswith(FORBIDDEN)], direct
    source = (ROOT / "train.py").read_text()
    assert "Processes(" not in source and "accelerator" not in source


def test_no_import_circles_among_the_project_modules():
    modules = {*ALGORITHM, "data", *(f"support.{p.stem}" for p in (ROOT / "support").glob("*.py")
                                     if p.stem != "__init__")}
    graph = {m: ours(imports(m)) - {"support"} for m in modules}

    def visit(m, path):
        assert m not in path, " -> ".join([*path, m])
        for n in graph.get(m, ()):
            visit(n, [*path, m])
    for m in modules:
        visit(m, [])


def test_the_support_folder_holds_the_machinery_and_nothing_imports_it_back():
    """support/ never imports train.py (the loop is the top), and every module in it is named in its
    package docstring, which is the folder's map."""
    doc = ast.get_docstring(ast.parse((ROOT / "support" / "__init__.py").read_text()))
    for p in (ROOT / "support").glob("*.py"):
        if p.stem != "__init__":
            assert "train" not in imports(f"support.{p.stem}"), p.name
            assert f"\n    {p.stem} " in f"\n{doc}", f"support/{p.name} is missing from the map"


def test_the_checker_workers_import_no_torch():
    """A checker worker is a fresh interpreter running `from support import checker`: it must stay
    small (~60 MB), so neither it nor evaluate.py imports torch at their top."""
    import subprocess
    import sys
    code = ("import sys; sys.path.insert(0, %r); from support import checker; "
            "print('torch' in sys.modules)" % str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
