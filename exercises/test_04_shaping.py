"""Grades exercises/ex04_shaping.py:  pytest exercises/test_04_shaping.py"""
from exercises import ex04_shaping as ex
from exercises.graders import check_shaping as check


def test_ex04_shaping():
    check(ex.shaping, ex.shaping_grad)
