"""Grades exercises/ex00_grpo_warmup.py:  pytest exercises/test_00_grpo_warmup.py"""
from pathlib import Path

from exercises import ex00_grpo_warmup as ex
from exercises.graders import check_00 as check


def test_ex00_grpo_warmup():
    check(ex.answers, source=Path(ex.__file__).read_text())
