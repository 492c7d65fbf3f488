"""Grades exercises/ex02_all_wrong_group.py:  pytest exercises/test_02_all_wrong_group.py"""
from pathlib import Path

from exercises import ex02_all_wrong_group as ex
from exercises.graders import check_02 as check


def test_ex02_all_wrong_group():
    check(ex.answers, source=Path(ex.__file__).read_text())
