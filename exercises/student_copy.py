"""Write a student copy of this repository, without the answers:

    python exercises/student_copy.py DIR

DIR (new, or empty, and outside this repository) receives the files of the working tree: those git
tracks (`git ls-files`) and untracked ones it does not ignore, copied as they are now (no clone,
no .git, nothing from the network). Then, in DIR:

- the reference bodies of the functions the exercises ask for (solutions.REFERENCE:
  loss.group_advantages, loss.shaping, loss.policy_loss, loss.aggregate,
  critique.refinement_prompt, critique.select_refinements, critique.mix_groups) become
  `raise NotImplementedError(...)`, naming the exercise; signature and docstring stay. They are
  found by name with `ast` in whichever file defines them. critique.REFINE_TEMPLATE, which
  exercise 3 asks the student to write, is replaced by a placeholder string;
- the answers stay behind: exercises/answer_key.md, exercises/solutions.py (the reference
  answers), exercises/make_fixtures.py, this script, and the instructor's tests of the graders
  (tests/test_exercises.py, tests/test_student_copy.py, tests/test_course.py);
- the graders grade against the recorded fixtures (exercises/fixtures/), which are copied;
- STUDENT_COPY.md says what was changed.

In the copy `pytest exercises/` fails every untouched exercise with "not implemented yet", and an
exercise that calls the stubbed reference fails the same way. train.py, the notebook and most of
tests/ need the stubbed functions: they run once the student has pasted their graded functions
into the stubs (docs/course.md, "The code"). tests/test_student_copy.py checks all of this.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LEAVE_OUT = {"exercises/answer_key.md", "exercises/solutions.py", "exercises/make_fixtures.py",
             "exercises/student_copy.py", "tests/test_exercises.py", "tests/test_student_copy.py",
             "tests/test_course.py"}
# module-level constants the exercises ask for: (module, name) -> exercise
CONSTANTS = {("critique", "REFINE_TEMPLATE"): "ex03_refinement_prompt"}
NOTE = """# Student copy

This is a copy of the Critique-GRPO repository made for a course
(`python exercises/student_copy.py`, run by your instructor). The functions the exercises ask you
to write raise `NotImplementedError` here, with their signatures and docstrings kept:

{stubs}

Work through `exercises/` in the order of `docs/course.md`; `pytest exercises/` grades them all,
`pytest exercises/test_01_advantages.py` one. The graders compare your functions with values
recorded from the reference code (`exercises/fixtures/`). `train.py`, the notebook and most of
`tests/` call the functions above: they run once you have pasted your graded bodies into the
stubs (docs/course.md, "The code").
"""


def stubbed_functions() -> dict[tuple[str, str], str]:
    """(module, function) -> the exercise that asks for it, from solutions.REFERENCE."""
    from exercises.solutions import REFERENCE
    return {(module, name): exercise for exercise, (module, names) in REFERENCE.items()
            for name in names}


def files_to_copy(root: Path = ROOT) -> list[str]:
    """The working tree's files: tracked, and untracked but not ignored, that exist now."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=root, check=True, capture_output=True).stdout.decode()
    paths = sorted({p for p in out.split("\0") if p})
    return [p for p in paths if (root / p).is_file() and not (root / p).is_symlink()
            and p not in LEAVE_OUT]


def defining_file(module: str, name: str, root: Path = ROOT) -> str:
    """The file (relative to root) whose top level defines `name` of `module`: the module's own
    file, or for a function re-exported from elsewhere the file inspect finds it in."""
    mod = importlib.import_module(module)
    obj = getattr(mod, name)
    path = Path(inspect.getsourcefile(obj) if callable(obj) else inspect.getsourcefile(mod))
    if not callable(obj) and not _top_level(path.read_text(), name):
        # a constant imported from another module: look in the files of that module's functions
        for other in {Path(inspect.getsourcefile(f)) for f in vars(mod).values()
                      if inspect.isfunction(f)}:
            if _top_level(other.read_text(), name):
                path = other
                break
    rel = path.resolve().relative_to(root.resolve())
    return rel.as_posix()


def _top_level(source: str, name: str) -> ast.AST | None:
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return node
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return node
    return None


def stub_function(source: str, name: str, message: str) -> str:
    """source with the body of top-level function `name` replaced by
    `raise NotImplementedError(message)`; decorators, signature and docstring kept."""
    node = _top_level(source, name)
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        raise ValueError(f"no top-level function {name}")
    body = node.body
    has_doc = (isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
               and isinstance(body[0].value.value, str))
    if body[0].lineno == node.lineno:
        raise ValueError(f"{name}: a one-line function cannot be stubbed by lines")
    lines = source.splitlines(keepends=True)
    first = body[1].lineno if has_doc and len(body) > 1 else None
    keep_to = body[0].end_lineno if has_doc else body[0].lineno - 1  # last line kept
    indent = " " * body[0].col_offset
    stub = f"{indent}raise NotImplementedError({message!r})\n"
    if has_doc and first is None:  # only a docstring: add the raise after it
        return "".join(lines[:keep_to] + [stub] + lines[keep_to:])
    return "".join(lines[:keep_to] + [stub] + lines[node.end_lineno:])


def stub_constant(source: str, name: str, value: str) -> str:
    """source with the top-level assignment of `name` replaced by `name = value` (a repr)."""
    node = _top_level(source, name)
    if not isinstance(node, (ast.Assign, ast.AnnAssign)):
        raise ValueError(f"no top-level assignment to {name}")
    lines = source.splitlines(keepends=True)
    return "".join(lines[:node.lineno - 1] + [f"{name} = {value}\n"] + lines[node.end_lineno:])


def make_copy(dest, root: Path = ROOT) -> list[tuple[str, str]]:
    """Write the student copy into dest; returns the (file, name) pairs stubbed."""
    dest, root = Path(dest).resolve(), Path(root).resolve()
    if dest == root or root in dest.parents:
        raise SystemExit(f"error: {dest} is inside the repository; pick a directory outside it")
    if dest.exists() and any(dest.iterdir()):
        raise SystemExit(f"error: {dest} exists and is not empty")
    stubs = [(defining_file(m, n, root), n, f"student copy: write it in exercises/{ex}.py")
             for (m, n), ex in stubbed_functions().items()]
    consts = [(defining_file(m, n, root), n, repr(f"(student copy: exercises/{ex}.py)"))
              for (m, n), ex in CONSTANTS.items()]
    for rel in files_to_copy(root):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)
    for rel, name, message in stubs:
        path = dest / rel
        path.write_text(stub_function(path.read_text(), name, message))
    for rel, name, value in consts:
        path = dest / rel
        path.write_text(stub_constant(path.read_text(), name, value))
    for rel in {rel for rel, _, _ in stubs + consts}:
        ast.parse((dest / rel).read_text())  # still valid Python
    listed = "\n".join(f"- `{rel}`: `{name}`" for rel, name, _ in stubs + consts)
    (dest / "STUDENT_COPY.md").write_text(NOTE.format(stubs=listed))
    return [(rel, name) for rel, name, _ in stubs + consts]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", help="where to write the copy (new or empty, outside this "
                                    "repository)")
    args = parser.parse_args(argv)
    stubbed = make_copy(args.dir)
    print(f"wrote a student copy to {args.dir}; stubbed:")
    for rel, name in stubbed:
        print(f"  {rel}: {name}")
    print(f"left out: {', '.join(sorted(LEAVE_OUT))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
