"""Grades exercises/ex02_shaping.py:  pytest exercises/test_02_shaping.py"""
from exercises import ex02_shaping as ex
from exercises.graders import check_shaping as check


def test_ex02_shaping():
    check(ex.shaping, ex.shaping_grad)
