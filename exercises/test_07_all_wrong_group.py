"""Grades exercises/ex07_all_wrong_group.py:  pytest exercises/test_07_all_wrong_group.py"""
from exercises import ex07_all_wrong_group as ex
from exercises.graders import check_07 as check


def test_ex07_all_wrong_group():
    check(ex.answers)
