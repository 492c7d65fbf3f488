"""Grades exercises/ex09_refine_ft_collapse.py:  pytest exercises/test_09_refine_ft_collapse.py"""
from exercises import ex09_refine_ft_collapse as ex
from exercises.graders import check_09 as check


def test_ex09_refine_ft_collapse():
    check(ex.answers)
