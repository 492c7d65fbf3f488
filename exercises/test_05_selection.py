"""Grades exercises/ex05_selection.py:  pytest exercises/test_05_selection.py"""
from exercises import ex05_selection as ex
from exercises.graders import check_select as check


def test_ex05_selection():
    check(ex.select_refinements)
