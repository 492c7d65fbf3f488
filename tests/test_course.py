"""docs/course.md and the instructor's answer key hold together: every quiz question and every
"question for yourself" of the exercises has an answer in exercises/answer_key.md, the numbers
the key quotes are the reference's, and docs/method.svg is what docs/method_figure.py draws.
Instructor only: exercises/student_copy.py leaves this file out of a student copy."""
import importlib.util
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import ROOT
from exercises import solutions as S

COURSE = ROOT / "docs" / "course.md"
KEY = ROOT / "exercises" / "answer_key.md"
EXERCISES = sorted((ROOT / "exercises").glob("ex[0-9][0-9]_*.py"))


def key_sections() -> dict[str, str]:
    """'Exercise 8' / 'Quiz answers' -> the text of that section of the answer key."""
    parts = re.split(r"^## ", KEY.read_text(), flags=re.M)[1:]
    return {p.split("\n", 1)[0].split(":")[0].strip(): p for p in parts}


def questions_for_yourself(path: Path) -> list[str]:
    doc = re.search(r'r?"""(.*?)"""', path.read_text(), flags=re.S)[1]
    section = doc.split("Questions for yourself", 1)
    assert len(section) == 2, f"{path.name} has no questions for yourself"
    return re.findall(r"^\s+(Q\d+)\.", section[1], flags=re.M)


@pytest.mark.parametrize("path", EXERCISES, ids=lambda p: p.stem)
def test_every_question_for_yourself_has_an_answer(path):
    asked = questions_for_yourself(path)
    assert asked and asked == [f"Q{i}" for i in range(1, len(asked) + 1)], asked
    number = int(path.stem[2:4])
    section = key_sections().get(f"Exercise {number}")
    assert section, f"answer_key.md has no section 'Exercise {number}'"
    answered = re.findall(r"^- \*\*(Q\d+)\.\*\*", section, flags=re.M)
    assert answered == asked, f"exercise {number}: asked {asked}, answered {answered}"


def test_every_quiz_question_has_an_answer():
    asked = re.findall(r"^- \*\*([ASG]\d+)\.\*\*", COURSE.read_text(), flags=re.M)
    answered = re.findall(r"^- \*\*([ASG]\d+)\.\*\*", key_sections()["Quiz answers"], flags=re.M)
    assert asked == answered
    for page in "ASG":
        assert sum(q[0] == page for q in asked) >= 5, page


def flat(value) -> list[float]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in flat(v)]
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in flat(v)]
    return [float(value)]


@pytest.mark.parametrize("number, answers", [(0, S.answers_00), (2, S.answers_02),
                                             (8, S.answers_08)])
def test_numbers_in_the_answer_key_are_the_references(number, answers):
    section = key_sections()[f"Exercise {number}"]
    paragraph = re.search(r"^Numbers.*?(?=\n\n)", section, flags=re.M | re.S)[0]
    quoted = [float(x.replace("−", "-")) for x in
              re.findall(r"−?\d+\.\d+(?:e-\d+)?", paragraph)]
    values = [abs(v) for v in flat(answers())] + [0.1, 0.5]  # γ, and exercise 0's std
    assert len(quoted) >= 5
    for x in quoted:
        assert any(math.isclose(abs(x), v, rel_tol=2e-3) for v in values), \
            f"exercise {number}: the key quotes {x}, which the reference does not compute"


def test_course_page_places_every_exercise_and_the_figure():
    text = COURSE.read_text()
    assert "](method.svg)" in text and "python exercises/student_copy.py DIR" in text
    table = re.findall(r"^\| (\d+) \| (implement|by hand|diagnose) \|", text, flags=re.M)
    assert [int(n) for n, _ in table] == list(range(len(EXERCISES)))
    assert table[0][1] == "by hand" and "GRPO only" in text
    for name in ("critique_grpo.ipynb", "one_step.md", "algorithm.md", "glossary.md"):
        assert f"]({name})" in text, name
    # its times are the results file's, through docs/make_pages.py (tests/test_pages.py)
    for key in ("seeds.bf16.walls", "run.bf16.wall", "run.float32.wall", "tests.default.minutes"):
        assert f"<!-- n:{key} -->" in text, key


@pytest.mark.parametrize("path", [COURSE, KEY, ROOT / "exercises" / "README.md"],
                         ids=lambda p: p.name)
def test_lines_fit_in_100_characters(path):
    long = [i for i, line in enumerate(path.read_text().splitlines(), 1) if len(line) > 100]
    assert long == [], f"{path.name}: lines {long} are over 100 characters"


def test_method_figure_is_what_the_script_draws(tmp_path):
    spec = importlib.util.spec_from_file_location("method_figure",
                                                  ROOT / "docs" / "method_figure.py")
    figure = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figure)
    import matplotlib
    drawn = figure.draw(tmp_path / "method.svg").read_text()
    committed = figure.OUT.read_text()
    ET.fromstring(drawn)  # valid SVG (XML)
    for label in ("5. Select and mix", "6. Advantage", "+0.875", "-0.125",
                  "exercise 8's control", "How hard one token"):
        assert label in drawn, label
    if f"matplotlib {matplotlib.__version__}" in committed:
        assert drawn == committed, "docs/method.svg is stale: run python docs/method_figure.py"
    else:  # drawn by another matplotlib: the same figure, but not byte for byte
        assert committed.count("<text") == drawn.count("<text")
