"""A student copy (exercises/student_copy.py) hides the answers and still grades.

In a fresh copy every grader fails with "not implemented yet", also for an exercise that calls the
stubbed reference; pasting the reference bodies (and the reference answers) into the exercise
files makes every grader pass, graded against the recorded fixtures alone. Each copy is graded by
`python -m pytest exercises/` in a subprocess inside the copy (~5 s each on 2 cores). Instructor
only: not in the student copy.
"""
import ast
import inspect
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import critique
import loss as L
from conftest import ROOT
from exercises import solutions as S
from exercises import student_copy as SC

EXERCISE_TESTS = sorted(p.name for p in (ROOT / "exercises").glob("test_[0-9][0-9]_*.py"))


def grade(copy: Path, tmp_path: Path) -> dict[str, str | None]:
    """pytest exercises/ inside the copy: test file -> None if it passed, else its message."""
    report = tmp_path / f"report-{len(list(tmp_path.glob('report-*')))}.xml"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GRADE_EXERCISES")}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "exercises/", f"--junitxml={report}"], cwd=copy, env=env,
                         capture_output=True, text=True, timeout=300)
    assert report.exists(), run.stdout + run.stderr
    out = {}
    for case in ET.parse(report).iter("testcase"):
        name = case.get("classname").split(".")[-1] + ".py"
        failure = case.find("failure")
        out[name] = None if failure is None else failure.get("message", "")
    return out


@pytest.fixture(scope="module")
def student_copy(tmp_path_factory):
    dest = tmp_path_factory.mktemp("student") / "copy"
    SC.make_copy(dest)
    return dest


def function_node(source: str, name: str) -> ast.FunctionDef:
    node = SC._top_level(source, name)
    assert isinstance(node, ast.FunctionDef), name
    return node


def test_the_copy_holds_the_working_tree_without_the_answers(student_copy):
    files = {p.relative_to(student_copy).as_posix() for p in student_copy.rglob("*")
             if p.is_file()}
    assert files == set(SC.files_to_copy()) | {"STUDENT_COPY.md"}
    for left_out in SC.LEAVE_OUT:
        assert not (student_copy / left_out).exists(), left_out
    assert not (student_copy / ".git").exists()
    graders = (student_copy / "exercises" / "graders.py").read_text()
    assert "solution_" not in graders and "import loss" not in graders
    assert sorted(p.name for p in (student_copy / "exercises" / "fixtures").glob("*.json")) == \
        sorted(p.name for p in (ROOT / "exercises" / "fixtures").glob("*.json"))
    assert (student_copy / "exercises" / "README.md").exists()
    assert (student_copy / "docs" / "course.md").exists()


def test_reference_bodies_are_stubs_with_signature_and_docstring(student_copy):
    stubbed = SC.stubbed_functions()
    assert {n for _, n in stubbed} >= {"group_advantages", "shaping", "policy_loss", "aggregate",
                                        "select_refinements", "mix_groups", "refinement_prompt"}
    for (module, name), exercise in stubbed.items():
        rel = SC.defining_file(module, name)
        original = function_node((ROOT / rel).read_text(), name)
        stub = function_node((student_copy / rel).read_text(), name)
        assert ast.dump(stub.args) == ast.dump(original.args), name
        assert ast.dump(stub.returns) == ast.dump(original.returns), name
        assert ast.get_docstring(stub) == ast.get_docstring(original), name
        body = stub.body[1:] if ast.get_docstring(stub) else stub.body
        assert len(body) == 1 and isinstance(body[0], ast.Raise), name
        assert body[0].exc.func.id == "NotImplementedError" and exercise in \
            body[0].exc.args[0].value, name
    # the prompt's text is gone from critique.py, its other functions are not
    text = (student_copy / SC.defining_file("critique", "REFINE_TEMPLATE")).read_text()
    assert "Please re-answer by" not in text and "def verdict_agrees" in text


def test_stub_function_keeps_everything_else():
    source = textwrap.dedent('''\
        import x


        @decorator
        def f(a: int,
              b=2) -> int:
            """Doc."""
            y = a + b
            return y


        def g():
            # no docstring
            return 1


        def h():
            """Only a docstring."""
        ''')
    out = SC.stub_function(SC.stub_function(SC.stub_function(source, "f", "m"), "g", "m"), "h",
                           "m")
    assert "@decorator\ndef f(a: int,\n      b=2) -> int:\n    \"\"\"Doc.\"\"\"\n    raise " \
           "NotImplementedError('m')\n" in out
    assert "def g():\n    # no docstring\n    raise NotImplementedError('m')\n" in out
    assert "def h():\n    \"\"\"Only a docstring.\"\"\"\n    raise NotImplementedError('m')" in out
    assert "y = a + b" not in out and "return 1" not in out and out.startswith("import x\n")
    with pytest.raises(ValueError):
        SC.stub_function(source, "missing", "m")


def test_every_grader_fails_a_fresh_copy_with_not_implemented(student_copy, tmp_path):
    results = grade(student_copy, tmp_path)
    assert sorted(results) == EXERCISE_TESTS
    for name, message in results.items():
        assert message is not None and "not implemented yet" in message, (name, message)


def test_the_copy_refuses_to_be_written_inside_the_repository_or_over_files(tmp_path):
    with pytest.raises(SystemExit, match="inside the repository"):
        SC.make_copy(ROOT / "student_copy_here")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a").write_text("x")
    with pytest.raises(SystemExit, match="not empty"):
        SC.make_copy(tmp_path / "full")


# ---------------------------------------------------------------------------------------------
# Pasting the reference back
# ---------------------------------------------------------------------------------------------
def replace_function(path: Path, name: str, new_source: str):
    """Replace top-level function `name` in path (decorators to end) by new_source."""
    text = path.read_text()
    node = function_node(text, name)
    lines = text.splitlines(keepends=True)
    path.write_text("".join(lines[:node.lineno - 1]) + textwrap.dedent(new_source).rstrip() +
                    "\n" + "".join(lines[node.end_lineno:]))


def reference_source(obj) -> str:
    return textwrap.dedent(inspect.getsource(obj))


def returning(value) -> str:
    return f"def answers() -> dict:\n    return {value!r}\n"


def paste_reference(copy: Path):
    """Every exercise answered as the reference answers it."""
    ex = copy / "exercises"
    for exercise, (module, names) in S.REFERENCE.items():
        for name in names:
            obj = getattr({"loss": L, "critique": critique}[module], name)
            replace_function(ex / f"{exercise}.py", name, reference_source(obj))
    template = ast.get_source_segment((ROOT / SC.defining_file("critique", "REFINE_TEMPLATE"))
                                      .read_text(), SC._top_level(
        (ROOT / SC.defining_file("critique", "REFINE_TEMPLATE")).read_text(), "REFINE_TEMPLATE"))
    prompt = ex / "ex03_refinement_prompt.py"
    prompt.write_text(prompt.read_text() + "\n\n" + template + "\n")
    replace_function(ex / "ex04_shaping.py", "shaping_grad",
                     "def shaping_grad(p, gamma):\n    return gamma * p / (p + gamma) ** 2\n")
    replace_function(ex / "ex00_grpo_warmup.py", "answers", returning(S.answers_00()))
    replace_function(ex / "ex02_all_wrong_group.py", "answers", returning(S.answers_02()))
    replace_function(ex / "ex08_shaping_entropy.py", "answers", returning(S.answers_08()))
    from test_exercises import solution_09
    replace_function(ex / "ex09_refine_ft_collapse.py", "answers", returning(solution_09()))


def test_calling_the_stubbed_reference_fails_and_pasting_the_reference_passes(tmp_path):
    copy = tmp_path / "copy"
    SC.make_copy(copy)
    ex = copy / "exercises"
    # the shortcut the reference used to allow: call it
    replace_function(ex / "ex01_advantages.py", "group_advantages", '''
        def group_advantages(rewards, group_ids, scale_by_std=False, eps=1e-6):
            import loss
            return loss.group_advantages(rewards, group_ids, scale_by_std, eps)
        ''')
    replace_function(ex / "ex02_all_wrong_group.py", "answers", '''
        def answers():
            from exercises import graders
            return graders.load("ex02_all_wrong_group")
        ''')
    results = grade(copy, tmp_path)
    assert "not implemented yet" in results["test_01_advantages.py"]
    assert "worked by hand: your file imports 'exercises'" in results["test_02_all_wrong_group.py"]

    paste_reference(copy)
    results = grade(copy, tmp_path)
    assert results == {name: None for name in EXERCISE_TESTS}
