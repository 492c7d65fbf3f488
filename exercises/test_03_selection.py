"""Grades exercises/ex03_selection.py:  pytest exercises/test_03_selection.py"""
from exercises import ex03_selection as ex
from exercises.graders import check_select as check


def test_ex03_selection():
    check(ex.select_refinements)
