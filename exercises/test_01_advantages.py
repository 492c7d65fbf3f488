"""Grades exercises/ex01_advantages.py:  pytest exercises/test_01_advantages.py"""
from exercises import ex01_advantages as ex
from exercises.graders import check_advantages as check


def test_ex01_advantages():
    check(ex.group_advantages)
